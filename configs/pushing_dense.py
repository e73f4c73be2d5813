"""Sanity run (not in the paper): SAC on pushing with the task's dense shaped reward."""

from holdjax.config import TrainConfig

CONFIG = TrainConfig(
    name="pushing_dense",
    task="pushing",
    reward="dense",
    num_epochs=100,
    epoch_length=1000,
    eval_episodes=20,
)
