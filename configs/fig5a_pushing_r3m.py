"""Figure 5a: pushing rewarded by the R3M ResNet-50 embedding distance (normaliser 3),
80 x 5000 steps (replay 400k; the reference's quirk kept 80k: --replay_size=80000). Needs the
public R3M weights (README)."""

import dataclasses

from configs.fig5a_pushing_l2 import CONFIG as L2

CONFIG = dataclasses.replace(L2, name="fig5a_pushing_r3m", reward="r3m", distance_normalizer=3.0,
                             num_epochs=80, epoch_length=5000)
