"""Figure 5b: drawer_open with the L2 distance, subtasks (threshold 1, cost 20) and a
goal-conditioned policy, 80 x 5000 steps; replay 400k transitions (the reference's quirk kept
80k: add --replay_size=80000 for it)."""

from holdjax.config import TrainConfig

CONFIG = TrainConfig(
    name="fig5b_drawer_l2",
    task="drawer_open",
    reward="l2",
    distance_normalizer=100.0,
    use_subtasks=True,
    subtask_threshold=1.0,
    subtask_cost=20.0,
    goal_based_policy=True,
    num_epochs=80,
    epoch_length=5000,
    eval_episodes=5,
)
