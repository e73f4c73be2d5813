"""`pushing`: push the red mug onto the dark goal square.

The reference's ``Image48HumanLikeSawyerPushForwardEnv-v1`` (multiworld
``SawyerPushAndReachTargetObjectXYEnv``, reward ``puck_success_positive``). Constants
come from ``../shared/SPEC.md`` (gathered from multiworld's sources) unless a comment
says otherwise. The scene is ``assets/pushing.xml``.

Differences from the reference a user may notice: primitives instead of meshes (the mug
collides as a cylinder, its handle is drawn only; only the wrist end of the arm is drawn);
20 physics steps of 5 ms per control step instead of 50 x 2 ms (the same 0.1 s, chosen by
measurement, benchmarks/NOTES.md); the mug meets the table and the fingertips at friction
1, as MuJoCo's maximum rule gives the reference's 0.1 mug (written as explicit contact
pairs for MJX); the scripted expert and the goal image are holdjax's own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from mujoco import mjx

from holdjax.envs.base import Task, success_metrics

HAND_LOW = np.array([-0.28, 0.3, 0.05], np.float32)  # SPEC.md: mocap x, y bounds; z held at 0.05
HAND_HIGH = np.array([0.28, 0.9, 0.05], np.float32)
HAND_START = np.array([0.0, 0.2, 0.07], np.float32)  # SPEC.md: the first step clips it into bounds
ACTION_SCALE = 0.02  # SPEC.md: mocap += 0.02 * action (metres)
PUCK_START_Y = 0.6  # SPEC.md: puck at (U(-0.1, 0.1), 0.6)
PUCK_START_X_RANGE = 0.1
PUCK_HALF_HEIGHT = 0.03  # pushing.xml: the mug is 6 cm tall
GOAL = np.array([0.0, 0.75], np.float32)  # SPEC.md: goal square centre
SUCCESS_L1 = 0.03  # SPEC.md: success when the L1 puck-goal distance is below this

# Scripted expert (holdjax's own): stand this far behind the puck along the push line.
_CONTACT_OFFSET = 0.048  # mug radius 0.025 + fingertip radius 0.018 + 5 mm
_APPROACH_OFFSET = 0.07
_SETTLE_RADIUS = 0.02
_PUSH_STEP = 0.02
_STOP_RADIUS = 0.008
_GAIN = 0.8


class Pushing(Task):
    name = "pushing"
    xml_file = "pushing.xml"
    episode_length = 100  # SPEC.md
    action_dim = 2  # SPEC.md: (dx, dy)
    state_dim = 9  # hand xyz, puck xyz, hand target (mocap) xyz
    num_subgoals = 1
    image_shape = (48, 48)
    control_period = 0.1  # SPEC.md: 0.002 s x 50 substeps
    timestep = 0.005  # holdjax: 20 substeps, chosen by measurement (benchmarks/NOTES.md)

    def __init__(self, timestep: float | None = None):
        super().__init__(timestep)
        self.puck_qpos = int(self.mj_model.jnt_qposadr[self.mj_model.joint("puck").id])

    def init_world(self, key):
        qpos = jnp.asarray(self.mj_model.qpos0)
        puck_x = jax.random.uniform(key, (), minval=-PUCK_START_X_RANGE, maxval=PUCK_START_X_RANGE)
        puck = jnp.array([puck_x, PUCK_START_Y, PUCK_HALF_HEIGHT, 1.0, 0.0, 0.0, 0.0])
        qpos = qpos.at[self.puck_qpos : self.puck_qpos + 7].set(puck)
        return qpos, HAND_START

    def apply_action(self, data: mjx.Data, action):
        delta = ACTION_SCALE * jnp.array([action[0], action[1], 0.0])
        target = self.moved_hand_target(data, delta, HAND_LOW, HAND_HIGH)
        return data.replace(mocap_pos=data.mocap_pos.at[self.hand_target_mocap].set(target))

    def observe(self, data: mjx.Data):
        hand = data.xpos[self.hand_body]
        puck = data.qpos[self.puck_qpos : self.puck_qpos + 3]
        target = data.mocap_pos[self.hand_target_mocap]
        return jnp.concatenate([hand, puck, target]).astype(jnp.float32)

    def evaluate(self, state):
        hand, puck = state[0:2], state[3:5]
        puck_to_goal_l1 = jnp.sum(jnp.abs(puck - GOAL))
        success = puck_to_goal_l1 < SUCCESS_L1
        # Dense (holdjax's): bring the hand to the puck and the puck to the goal, plus the
        # success indicator, as the reference's tabletop dense rewards have it. Without it
        # the deterministic policy stalled ~5 cm short of the goal, where the distance terms
        # differ by a few hundredths (benchmarks/NOTES.md).
        dense = success - jnp.linalg.norm(puck - GOAL) - 0.5 * jnp.linalg.norm(hand - puck)
        return success_metrics(success, dense)

    def goal_worlds(self):
        """The mug on the goal square with the fingertips just behind it (one goal image)."""
        qpos = jnp.asarray(self.mj_model.qpos0)
        puck = jnp.array([GOAL[0], GOAL[1], PUCK_HALF_HEIGHT, 1.0, 0.0, 0.0, 0.0])
        qpos = qpos.at[self.puck_qpos : self.puck_qpos + 7].set(puck)
        hand = jnp.array([GOAL[0], GOAL[1] - _CONTACT_OFFSET, HAND_LOW[2]])
        qpos = self.place_hand(qpos, hand)
        return {"pushing": (qpos, hand)}

    def expert_action(self, state):
        """Stand behind the mug on the mug-goal line and push along it, slowing at the goal.

        Continuous in the state (no mode switches to chatter between): the push blends in
        as the hand settles behind the mug, so action noise only delays it.
        """
        hand, puck, target = state[0:2], state[3:5], state[6:8]
        to_goal = GOAL - puck
        dist = jnp.linalg.norm(to_goal)
        direction = to_goal / jnp.maximum(dist, 1e-6)
        normal = jnp.array([-direction[1], direction[0]])
        behind_puck = puck - direction * _CONTACT_OFFSET
        rel = hand - puck
        along, across = rel @ direction, rel @ normal
        # Level with or ahead of the mug: go round it on the near side first.
        side = jnp.where(across >= 0, 1.0, -1.0)
        detour = puck + normal * side * _APPROACH_OFFSET - direction * _APPROACH_OFFSET
        blocked = (along > -0.6 * _CONTACT_OFFSET) & (jnp.abs(across) < _APPROACH_OFFSET)
        waypoint = jnp.where(blocked, detour, behind_puck)
        settled = jnp.clip(1.0 - jnp.linalg.norm(hand - behind_puck) / _SETTLE_RADIUS, 0.0, 1.0)
        push = direction * jnp.minimum(dist, _PUSH_STEP) * settled * (dist > _STOP_RADIUS)
        aim = jnp.where(blocked, waypoint, waypoint + push)
        # Steer the mocap target (which the hand follows through its weld).
        return jnp.clip(_GAIN * (aim - target) / ACTION_SCALE, -1.0, 1.0)
