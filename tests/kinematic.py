"""A kinematic stand-in for MuJoCo's physics, for tests of what runs around it.

The action moves the hand target; the forward pass computes poses only (kinematics and the
camera: what rendering and the task's observations read), with no MJX step, collisions or
constraint solver. Compiling MJX's step is most of a trainer's compilation on a CPU (the
state-observation test run: 56 s with it, 12 s on this stand-in, on 2 cores), and tests of the
training loop, the benchmarks' plumbing and checkpoints do not need it. The physics has its
own tests (test_envs, test_tabletop), and `test_fused_step_smoke` runs the trainer's fused
step on it.
"""

import pytest
from mujoco import mjx

from holdjax.envs import base


def use_kinematic_physics(patch: pytest.MonkeyPatch, poses: bool = True) -> None:
    """Replaces every world's physics step, and its forward pass by poses only (or, without
    ``poses``, by nothing: for learners that render nothing and need no consistent poses,
    at less compilation), until ``patch`` is undone."""
    patch.setattr(base.ManipulationEnv, "_step_world",
                  lambda self, data, action: self._pose_arm_and_forward(
                      self.task.apply_action(data, action)))
    patch.setattr(base.mjx, "forward",
                  (lambda model, data: mjx.camlight(model, mjx.kinematics(model, data)))
                  if poses else (lambda model, data: data))
