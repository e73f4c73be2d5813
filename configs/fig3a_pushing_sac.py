"""Figure 3a: plain SAC on pushing with the sparse environment reward (400 x 1000 steps)."""

from holdjax.config import TrainConfig

CONFIG = TrainConfig(
    name="fig3a_pushing_sac",
    task="pushing",
    reward="sparse",
    num_epochs=400,
    epoch_length=1000,
    eval_episodes=20,
)
