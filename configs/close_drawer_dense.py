"""The reference's Dense variant of close_drawer (CloseDrawerEnv1Dense-v1): SAC on the
task's dense shaped reward, on figure 4's schedule (35 x 1000 steps, 20 eval episodes)."""

from holdjax.config import TrainConfig

CONFIG = TrainConfig(
    name="close_drawer_dense",
    task="close_drawer",
    reward="dense",
    num_epochs=35,
    epoch_length=1000,
    eval_episodes=20,
)
