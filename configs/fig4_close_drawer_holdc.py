"""Figure 4: close_drawer (CloseDrawerEnv1-v1: push the drawer shut) with the HOLD-C ResNet-50
reward (normaliser 5) plus the sparse env reward, 35 x 1000 steps, 20 eval episodes.
The released HOLD-C checkpoint if present, else holdjax's demo-trained model (README)."""

from holdjax.config import TrainConfig

CONFIG = TrainConfig(
    name="fig4_close_drawer_holdc",
    task="close_drawer",
    reward="holdc",
    distance_normalizer=5.0,
    env_reward_weight=1.0,
    num_epochs=35,
    epoch_length=1000,
    eval_episodes=20,
)
