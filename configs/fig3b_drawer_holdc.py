"""Figure 3b: drawer_open with HOLD-C (normaliser 10), two subgoals (threshold 1, cost 2),
a goal-conditioned policy, 40 x 10000 steps, 5 eval episodes; replay 400k transitions (the
reference's quirk kept 40k: add --replay_size=40000 for it)."""

from holdjax.config import TrainConfig

CONFIG = TrainConfig(
    name="fig3b_drawer_holdc",
    task="drawer_open",
    reward="holdc",
    distance_normalizer=10.0,
    use_subtasks=True,
    subtask_threshold=1.0,
    subtask_cost=2.0,
    goal_based_policy=True,
    num_epochs=40,
    epoch_length=10000,
    eval_episodes=5,
)
