"""The reference's Dense variant of faucet_right (FaucetRightEnv1Dense-v1): SAC on the task's dense
shaped reward, on figure 4's schedule (as `close_drawer_dense`)."""

import dataclasses

from configs.close_drawer_dense import CONFIG as DENSE

CONFIG = dataclasses.replace(DENSE, name="faucet_right_dense", task="faucet_right")
