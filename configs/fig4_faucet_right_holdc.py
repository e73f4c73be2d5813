"""Figure 4: faucet_right (FaucetRightEnv1-v1: turn the faucet right) with figure 4's HOLD-C
settings (`fig4_close_drawer_holdc`: normaliser 5 plus the sparse env reward, 35 x 1000 steps)."""

import dataclasses

from configs.fig4_close_drawer_holdc import CONFIG as FIG4

CONFIG = dataclasses.replace(FIG4, name="fig4_faucet_right_holdc", task="faucet_right")
