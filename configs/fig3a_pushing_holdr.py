"""Figure 3a: pushing with the HOLD-R ViViT reward (normaliser 45) plus the sparse env reward,
400 x 1000 steps, as the HOLD-C run otherwise. Needs the released HOLD-R checkpoint
($HOLD_TOP_DIR/hold/holdr/checkpoint or --reward_checkpoint); holdjax has no demo-trained
HOLD-R."""

import dataclasses

from configs.fig3a_pushing_holdc import CONFIG as HOLDC

CONFIG = dataclasses.replace(HOLDC, name="fig3a_pushing_holdr", reward="holdr",
                             distance_normalizer=45.0)
