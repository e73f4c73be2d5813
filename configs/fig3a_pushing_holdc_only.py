"""Figure 3a: pushing with the HOLD-C reward alone (env_reward_weight 0), normaliser 5."""

import dataclasses

from configs.fig3a_pushing_holdc import CONFIG as HOLDC

CONFIG = dataclasses.replace(HOLDC, name="fig3a_pushing_holdc_only", env_reward_weight=0.0)
