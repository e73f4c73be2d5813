"""Figure 5b: drawer_open with the R3M distance (normaliser 5), subtasks (threshold 0.5,
cost 2) and a goal-conditioned policy, 80 x 5000 steps; replay 400k (the reference: 80k)."""

import dataclasses

from configs.fig5b_drawer_l2 import CONFIG as L2

CONFIG = dataclasses.replace(L2, name="fig5b_drawer_r3m", reward="r3m", distance_normalizer=5.0,
                             subtask_threshold=0.5, subtask_cost=2.0)
