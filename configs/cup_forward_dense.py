"""The reference's Dense variant of cup_forward (CupForwardEnv1Dense-v1): SAC on the task's dense
shaped reward, on figure 4's schedule (as `close_drawer_dense`)."""

import dataclasses

from configs.close_drawer_dense import CONFIG as DENSE

CONFIG = dataclasses.replace(DENSE, name="cup_forward_dense", task="cup_forward")
