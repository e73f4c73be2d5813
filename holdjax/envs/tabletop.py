"""The DVD tabletop tasks: a Sawyer in front of a mug, a drawer, a coffee machine, a faucet.

The reference's ``TabletopTask`` (``anniesch/dvd`` / ``minttusofia/dvd_sim_envs``,
``sim_env/tabletop.py``, xml ``env1_heavy_mug``) as used by HOLD for ``CloseDrawerEnv1-v1``,
``CupForwardEnv1-v1`` and ``FaucetRightEnv1-v1``. Constants come from
``../shared/SPEC.md`` and those sources unless a comment says otherwise. The scene is
``assets/tabletop.xml``.

Differences from the reference a user may notice: primitives instead of meshes (only the
wrist end of the arm is drawn); one 12.5 ms physics step per control step instead of
5 x 2.5 ms; the hand's mocap target never runs more than 5 cm ahead of the hand; the
scripted experts and the goal images are holdjax's own (close_drawer: fingers against the
closed drawer's handle; cup_forward: mug on the target, hand beside it; faucet_right:
handle turned 45 degrees right, fingers against it).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from mujoco import mjx

from holdjax.envs.base import Task, ramp, success_metrics

HAND_LOW = np.array([-0.4, 0.4, 0.0], np.float32)  # reference: mocap clipped to these bounds
HAND_HIGH = np.array([0.4, 0.8, 0.2], np.float32)
HAND_START = np.array([0.0, 0.5, 0.02], np.float32)  # reference reset: hand to (0, 0.5, 0.02)
ACTION_SCALE = 0.05  # reference: mocap += a[:3] / 20 (metres)
MUG_START = np.array([0.0, 0.6, 0.0], np.float32)  # reference: mug at (0, 0.6, 0), upright
DRAWER_START = -0.07  # reference: qpos[16] = -0.07 (drawer 7 cm open)
UPRIGHT = np.array([1.0, 0.0, 0.0, 0.0], np.float32)

# Low-dimensional state layout (holdjax's): hand (fingertip midpoint) xyz, finger gap,
# mug xyz, drawer slide, coffee button, faucet hinge, hand target (mocap) xyz.
HAND, GAP, MUG, DRAWER, BUTTON, FAUCET, TARGET = (
    slice(0, 3), 3, slice(4, 7), 7, 8, 9, slice(10, 13))


class TabletopTask(Task):
    """The shared scene, action mapping, reset and state of the DVD tabletop tasks."""

    xml_file = "tabletop.xml"
    episode_length = 60  # SPEC.md
    action_dim = 5  # reference: (dx, dy, dz, drot, grip); drot has no effect
    state_dim = 13
    num_subgoals = 1
    image_shape = (120, 180)  # reference: 120 (h) x 180 (w)
    control_period = 0.0125  # reference: 0.0025 s x 5 substeps
    # holdjax: 1 substep, by measurement on close_drawer's expert (hand damping 1, no
    # lead limit): first success at step 26 (vs 22 at 0.0025 x 5, 21 at 0.00625 x 2),
    # success rate 1.0 either way; the finger resting on the closed drawer's handle
    # overlaps it by ~5 mm (vs ~2-3 mm). 2 or 5 substeps cost 2-5x the physics.
    timestep = 0.0125
    max_contacts = 24
    # holdjax (as drawer_open): the mocap target stays within this distance (per axis) of
    # the hand. The reference lets it run on to its bounds while the hand is blocked, and
    # the weld then drives the fingers through the 9 mm handle or drags the drawer far
    # past where the hand is; in free motion the hand trails the target by less than this
    # except under full-speed random actions. Measured: random close_drawer success 0.10
    # without it, 0.07 with it (256 episodes); the expert still always succeeds (its
    # mean sparse return drops from 30 to 25 of 60 steps).
    max_lead = 0.05

    def __init__(self, timestep: float | None = None):
        super().__init__(timestep)
        m = self.mj_model

        def qpos_of(joint):
            return int(m.jnt_qposadr[m.joint(joint).id])

        def dof_of(joint):
            return int(m.jnt_dofadr[m.joint(joint).id])

        self.mug_qpos = qpos_of("mug")
        self.mug_dof = dof_of("mug")
        self.drawer_qpos = qpos_of("drawer_slide")
        self.button_qpos = qpos_of("coffee_button")
        self.faucet_qpos = qpos_of("faucet_hinge")
        self.finger_qpos = jnp.array([qpos_of("r_close"), qpos_of("l_close")])
        self.finger_actuators = jnp.array([m.actuator(a).id for a in ("r_close", "l_close")])

    def init_world(self, key):
        # Deterministic reset (reference): hand at (0, 0.5, 0.02) with the fingers open,
        # mug upright at (0, 0.6, 0), drawer 7 cm open, button out, faucet centred.
        del key
        return self.start_qpos(), HAND_START

    def start_qpos(self, hand=HAND_START, mug=MUG_START, drawer=DRAWER_START, faucet=0.0):
        """qpos of the scene with the hand at ``hand`` (its mocap target must match)."""
        qpos = jnp.asarray(self.mj_model.qpos0)
        qpos = self.place_hand(qpos, hand)
        qpos = qpos.at[self.mug_qpos : self.mug_qpos + 7].set(jnp.concatenate([mug, UPRIGHT]))
        qpos = qpos.at[self.drawer_qpos].set(drawer)
        return qpos.at[self.faucet_qpos].set(faucet)

    def apply_action(self, data: mjx.Data, action):
        target = self.moved_hand_target(data, ACTION_SCALE * action[:3], HAND_LOW, HAND_HIGH)
        ctrl = data.ctrl.at[self.finger_actuators].set(jnp.array([action[4], -action[4]]))
        # The reference sets the mug's orientation upright after every step; holdjax does
        # it before the next step's physics (the env runs the task's hooks only here), and
        # also zeroes the mug's angular velocity so the reset sticks.
        qpos = data.qpos.at[self.mug_qpos + 3 : self.mug_qpos + 7].set(UPRIGHT)
        qvel = data.qvel.at[self.mug_dof + 3 : self.mug_dof + 6].set(0.0)
        return data.replace(
            mocap_pos=data.mocap_pos.at[self.hand_target_mocap].set(target),
            ctrl=ctrl, qpos=qpos, qvel=qvel,
        )

    def observe(self, data: mjx.Data):
        hand = data.xpos[self.hand_body]
        fingers = data.qpos[self.finger_qpos]
        gap = (0.08 - fingers[0] + fingers[1])[None]
        mug = data.qpos[self.mug_qpos : self.mug_qpos + 3]
        joints = data.qpos[jnp.array([self.drawer_qpos, self.button_qpos, self.faucet_qpos])]
        target = data.mocap_pos[self.hand_target_mocap]
        return jnp.concatenate([hand, gap, mug, joints, target]).astype(jnp.float32)

    def goal_world(self, hand, **objects):
        """(qpos, hand mocap) of a solved scene with the hand at ``hand``."""
        hand = jnp.asarray(hand, jnp.float32)
        return self.start_qpos(hand=hand, **objects), hand


# --- close_drawer -------------------------------------------------------------------

DRAWER_SUCCESS = -0.05  # reference: success when the drawer joint > -0.05
# reference: dense reward's hand target
DRAWER_DENSE_HAND = np.array([0.25, 0.62, 0.06], np.float32)
# Handle bar (a 9 mm capsule along x) centre in the world with the drawer closed
# (drawer body (0.25, 0.75, 0) + case 0.084 + link (0, -0.01, 0.006) + bar (0, -0.15, 0)).
HANDLE_CLOSED = np.array([0.25, 0.59, 0.09], np.float32)

# Scripted expert (holdjax's own): stand in front of the handle bar with the fingertips
# below it (the finger capsules span the bar's height) and push along +y.
_PUSH_Z = 0.06
_STANDOFF = 0.06  # approach point this far in front of the bar
_CONTACT = 0.009 + 0.008  # bar radius + finger radius: hand y on the bar, minus bar y
_PUSH_LEAD = 0.01  # aim this far past the contact point while pushing
_ALIGN_TOL = 0.01
_ALIGN_RAMP = 0.02
_GAIN = 0.8
_MAX_STEP = 0.5  # of ACTION_SCALE: 2.5 cm per step at most, for a gentle impact


def _move_towards(aim, state, grip):
    """The expert's action: a damped step of the mocap target towards ``aim``."""
    move = jnp.clip(_GAIN * (aim - state[TARGET]) / ACTION_SCALE, -_MAX_STEP, _MAX_STEP)
    return jnp.concatenate([move, jnp.zeros(1), jnp.full(1, grip)])


class CloseDrawer(TabletopTask):
    """``CloseDrawerEnv1-v1``: push the half-open drawer shut."""

    name = "close_drawer"

    def evaluate(self, state):
        drawer = state[DRAWER]
        success = drawer > DRAWER_SUCCESS
        dense = success + drawer - jnp.linalg.norm(state[HAND] - DRAWER_DENSE_HAND)
        return success_metrics(success, dense)

    def goal_worlds(self):
        """The drawer closed with the fingertips against the front of its handle bar."""
        hand = jnp.asarray(HANDLE_CLOSED).at[1].add(-_CONTACT).at[2].set(_PUSH_Z)
        return {"close_drawer": self.goal_world(hand, drawer=0.0)}

    def expert_action(self, state):
        """Line up in front of the handle bar below its top, then push it along +y.

        Continuous in the state: the push blends in as the hand reaches the approach
        point, so action noise only delays it. A hand that ends up behind the bar (past
        its front) backs off along -y at push height first.
        """
        hand = state[HAND]
        bar_y = HANDLE_CLOSED[1] + state[DRAWER]
        approach = jnp.array([HANDLE_CLOSED[0], bar_y - _STANDOFF, _PUSH_Z])
        off_line = jnp.linalg.norm((hand - approach)[jnp.array([0, 2])])
        aligned = ramp(1.0 - (off_line - _ALIGN_TOL) / _ALIGN_RAMP)
        push_y = bar_y - _CONTACT + _PUSH_LEAD
        aim_y = approach[1] + aligned * (push_y - approach[1])
        # Behind the bar (in the gap between bar and drawer front or above the drawer):
        # rise over the bar before coming back (the approach point is below it).
        behind = ramp((hand[1] - bar_y - 0.005) / 0.01)
        aim = jnp.array([approach[0], aim_y, _PUSH_Z + behind * 0.1])
        return _move_towards(aim, state, grip=-1.0)


# --- cup_forward --------------------------------------------------------------------

MUG_TARGET = np.array([0.0, 0.7, 0.0], np.float32)  # reference: target (0, .7, 0) for env1 xmls
CUP_SUCCESS_DIST = 0.075  # reference: success when |mug - target| < 0.075

# Scripted expert (holdjax's own): close the gripper (the two fingers then form a 3.6 cm
# wide pusher), stand behind the mug on the line from the mug through the target, push
# the mug along it onto the target, then step aside to CUP_REST.
_CUP_PUSH_Z = 0.015  # fingers span z 0.015-0.079, covering the mug's 0.069 m body
_CUP_CONTACT = 0.028 + 0.008  # mug radius + finger radius: hand to mug axis in contact
_CUP_STANDOFF = 0.04  # approach point this far behind the contact point
_CUP_LEAD = 0.02  # aim this far past the contact point while pushing (at most)
_CUP_DONE = 0.02  # mug this close to the target: the hand leaves for CUP_REST
# Hand-to-mug distance (across the push line) at which the closed fingers pass the mug:
# mug radius 0.028 + finger radius 0.008 + finger offset 0.01, plus a margin.
_CUP_CLEAR = 0.06
_CUP_FORWARD_BIAS = 0.03  # m: added to the target's +y offset when picking the direction
# holdjax's choice: where the hand waits once the mug is on the target, and where the goal
# image shows it: beside the mug towards the drawer, so that cam0 sees the mug (a hand
# behind it, anywhere between it and the camera, hides it).
CUP_REST = np.array([0.1, 0.6, 0.05], np.float32)


class CupForward(TabletopTask):
    """``CupForwardEnv1-v1``: push the mug 10 cm forward onto the target at (0, 0.7)."""

    name = "cup_forward"

    def evaluate(self, state):
        mug_to_target = jnp.linalg.norm(state[MUG] - MUG_TARGET)
        success = mug_to_target < CUP_SUCCESS_DIST
        # Reference quirk kept: the dense hand term is the distance to the target, not
        # to the mug.
        dense = success - mug_to_target - jnp.linalg.norm(state[HAND] - MUG_TARGET)
        return success_metrics(success, dense)

    def goal_worlds(self):
        """The mug on the target, the hand waiting beside it at CUP_REST."""
        return {"cup_forward": self.goal_world(CUP_REST, mug=MUG_TARGET)}

    def expert_action(self, state):
        """Line up behind the mug, facing the target, push it there, step aside.

        The push direction follows the mug (a mug knocked sideways is steered back),
        and the push blends in as the hand reaches the line, so action noise only
        delays it. A hand beside or in front of the mug steps aside before going back.
        """
        hand, mug = state[HAND], state[MUG]
        to_target = (MUG_TARGET - mug).at[2].set(0.0)
        # The +y bias keeps the direction forward once the mug is on the target.
        direction = to_target + jnp.array([0.0, _CUP_FORWARD_BIAS, 0.0])
        direction = direction / jnp.linalg.norm(direction)
        side = jnp.array([direction[1], -direction[0], 0.0])
        along, across = (hand - mug) @ direction, (hand - mug) @ side
        off_line = jnp.sqrt(across**2 + (hand[2] - _CUP_PUSH_Z) ** 2)
        aligned = ramp(1.0 - (off_line - _ALIGN_TOL) / _ALIGN_RAMP)
        distance = jnp.linalg.norm(to_target)
        push = jnp.minimum(distance, _CUP_LEAD)
        offset = -_CUP_CONTACT - _CUP_STANDOFF + aligned * (_CUP_STANDOFF + push)
        aim = mug + offset * direction
        # Beside or in front of the mug (past its back, not clear of it sideways): step
        # aside first; going straight back would drag the mug along.
        past = ramp((along + _CUP_CONTACT - 0.015) / 0.01)
        past = past * ramp((_CUP_CLEAR - jnp.abs(across)) / 0.01)
        away = jnp.where(across >= 0, 1.0, -1.0) * (_CUP_CLEAR + 0.02)
        aside = mug + along * direction + away * side
        aim = (aim + past * (aside - aim)).at[2].set(_CUP_PUSH_Z)
        done = ramp((_CUP_DONE - distance) / 0.01)
        return _move_towards(aim + done * (CUP_REST - aim), state, grip=1.0)


# --- faucet_right -------------------------------------------------------------------

FAUCET_SUCCESS = -0.01  # reference: success when the faucet joint < -0.01 rad
# reference: dense reward's hand target
FAUCET_DENSE_HAND = np.array([-0.27, 0.53, 0.11], np.float32)
FAUCET_HINGE = np.array([-0.25, 0.7], np.float32)  # reference: faucet base at (-0.25, 0.7, 0)
FAUCET_HANDLE_Z = 0.125  # reference: handleStart sites at z 0.125
FAUCET_HANDLE_LENGTH = 0.175  # reference: handleStart sites 0.175 m in front of the base
# holdjax's choice: how far the expert turns the handle and the goal image shows it
# turned (the reference's success needs only 0.01 rad; its dense reward's hand target
# matches a handle turned by about 0.1 rad).
FAUCET_GOAL = -jnp.pi / 4

# Scripted expert (holdjax's own): close the gripper, stand on the handle's +x side at
# _FAUCET_RADIUS from the hinge with the fingers at the bar's height, and sweep round
# the hinge (a joint angle q points the handle along (sin q, -cos q); right is q < 0).
_FAUCET_RADIUS = 0.14  # push point along the handle (its knob is at 0.175)
_FAUCET_PUSH_Z = FAUCET_HANDLE_Z - 0.032  # finger capsules centred on the bar
# Bar radius + finger radius: the hand's distance from the bar's axis that the expert
# aims for. The closed fingers sit 1 cm either side of the hand, so the real contact is
# 0.7-1 cm further out and the aim keeps pressing the bar.
_FAUCET_CONTACT = 0.012 + 0.008
# along the normal at FAUCET_GOAL
_FAUCET_FINGER_OFFSET = 0.01 * float(np.cos(np.float32(FAUCET_GOAL)))
_FAUCET_STANDOFF = 0.04  # approach point this far further out from the bar
_FAUCET_AHEAD = 0.3  # rad: aim this far round the hinge while sweeping
_FAUCET_CLEAR_Z = 0.1  # rise this much to pass over the bar


def _handle_frame(q):
    """(along the handle, its +x-side normal) in the table plane for joint angle q."""
    return jnp.array([jnp.sin(q), -jnp.cos(q)]), jnp.array([jnp.cos(q), jnp.sin(q)])


class FaucetRight(TabletopTask):
    """``FaucetRightEnv1-v1``: turn the faucet handle to the right (clockwise from above)."""

    name = "faucet_right"

    def evaluate(self, state):
        faucet = state[FAUCET]
        success = faucet < FAUCET_SUCCESS
        dense = success - faucet - jnp.linalg.norm(state[HAND] - FAUCET_DENSE_HAND)
        return success_metrics(success, dense)

    def goal_worlds(self):
        """The handle turned to FAUCET_GOAL with the closed fingers against its side."""
        along, normal = _handle_frame(FAUCET_GOAL)
        distance = _FAUCET_CONTACT + _FAUCET_FINGER_OFFSET
        xy = FAUCET_HINGE + _FAUCET_RADIUS * along + distance * normal
        hand = jnp.array([xy[0], xy[1], _FAUCET_PUSH_Z])
        return {"faucet_right": self.goal_world(hand, faucet=FAUCET_GOAL)}

    def expert_action(self, state):
        """Line up beside the handle on its +x side, then sweep it round to FAUCET_GOAL.

        The sweep blends in as the hand reaches the handle's side, so action noise only
        delays it; a hand on the wrong side of the bar rises over it first.
        """
        hand, q = state[HAND], state[FAUCET]
        along, normal = _handle_frame(q)
        rel = hand[:2] - FAUCET_HINGE
        radial, tangential = rel @ along, rel @ normal
        off_line = jnp.sqrt((radial - _FAUCET_RADIUS) ** 2 + (hand[2] - _FAUCET_PUSH_Z) ** 2)
        on_side = ramp((tangential - 0.01) / 0.01)
        aligned = ramp(1.0 - (off_line - _ALIGN_TOL) / _ALIGN_RAMP) * on_side
        # Past FAUCET_GOAL the aim falls back behind the bar, so the sweep stops there.
        q_aim = q - aligned * jnp.clip(q - FAUCET_GOAL, -_FAUCET_AHEAD, _FAUCET_AHEAD)
        aim_along, aim_normal = _handle_frame(q_aim)
        distance = _FAUCET_CONTACT + (1.0 - aligned) * _FAUCET_STANDOFF
        xy = FAUCET_HINGE + _FAUCET_RADIUS * aim_along + distance * aim_normal
        # On the bar's -x side within its reach: go over it.
        wrong_side = (1.0 - on_side) * ramp((FAUCET_HANDLE_LENGTH + 0.03 - radial) / 0.01)
        aim = jnp.array([xy[0], xy[1], _FAUCET_PUSH_Z + wrong_side * _FAUCET_CLEAR_Z])
        return _move_towards(aim, state, grip=1.0)
