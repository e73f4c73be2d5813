"""Figure 3b: drawer_open with HOLD-R (normaliser 100), two subgoals (threshold 1, cost 20),
a goal-conditioned policy, 40 x 10000 steps, 5 eval episodes (as the HOLD-C run); replay
400k (the reference: 40k). Needs the released HOLD-R checkpoint."""

import dataclasses

from configs.fig3b_drawer_holdc import CONFIG as HOLDC

CONFIG = dataclasses.replace(HOLDC, name="fig3b_drawer_holdr", reward="holdr",
                             distance_normalizer=100.0, subtask_cost=20.0)
