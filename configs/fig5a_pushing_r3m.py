"""Figure 5a: pushing rewarded by the R3M ResNet-50 embedding distance (normaliser 3),
80 x 5000 steps. Needs the public R3M weights (README)."""

from holdjax.config import TrainConfig

CONFIG = TrainConfig(
    name="fig5a_pushing_r3m",
    task="pushing",
    reward="r3m",
    distance_normalizer=3.0,
    num_epochs=80,
    epoch_length=5000,
    eval_episodes=20,
)
