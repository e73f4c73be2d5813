"""Figure 3a: pushing with the HOLD-C ResNet-50 reward (normaliser 5) plus the sparse env
reward, 400 x 1000 steps. The released HOLD-C checkpoint if present, else holdjax's
demo-trained model (README)."""

from holdjax.config import TrainConfig

CONFIG = TrainConfig(
    name="fig3a_pushing_holdc",
    task="pushing",
    reward="holdc",
    distance_normalizer=5.0,
    env_reward_weight=1.0,
    num_epochs=400,
    epoch_length=1000,
    eval_episodes=20,
)
