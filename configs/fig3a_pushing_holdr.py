"""Figure 3a: pushing with the HOLD-R ViViT reward (normaliser 45) plus the sparse env reward,
400 x 1000 steps. Needs the released HOLD-R checkpoint ($HOLD_TOP_DIR/hold/holdr/checkpoint
or --reward_checkpoint); holdjax has no demo-trained HOLD-R."""

from holdjax.config import TrainConfig

CONFIG = TrainConfig(
    name="fig3a_pushing_holdr",
    task="pushing",
    reward="holdr",
    distance_normalizer=45.0,
    env_reward_weight=1.0,
    num_epochs=400,
    epoch_length=1000,
    eval_episodes=20,
)
