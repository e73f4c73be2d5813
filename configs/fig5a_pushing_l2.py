"""Figure 5a: pushing rewarded by the L2 pixel distance to the goal image (normaliser 30)."""

from holdjax.config import TrainConfig

CONFIG = TrainConfig(
    name="fig5a_pushing_l2",
    task="pushing",
    reward="l2",
    distance_normalizer=30.0,
    num_epochs=400,
    epoch_length=1000,
    eval_episodes=20,
)
