"""Figure 4: cup_forward (CupForwardEnv1-v1: push the mug forward) with figure 4's HOLD-C settings
(`fig4_close_drawer_holdc`: normaliser 5 plus the sparse env reward, 35 x 1000 steps)."""

import dataclasses

from configs.fig4_close_drawer_holdc import CONFIG as FIG4

CONFIG = dataclasses.replace(FIG4, name="fig4_cup_forward_holdc", task="cup_forward")
