"""Figure 3a: pushing with the HOLD-R reward alone (env_reward_weight 0), normaliser 45."""

import dataclasses

from configs.fig3a_pushing_holdr import CONFIG as HOLDR

CONFIG = dataclasses.replace(HOLDR, name="fig3a_pushing_holdr_only", env_reward_weight=0.0)
