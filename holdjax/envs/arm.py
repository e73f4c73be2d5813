"""Poses of the drawn Sawyer arm links from the hand position (two-link inverse kinematics).

The reference's arm is a real 7-dof Sawyer that follows the mocap hand; only its look in
the camera matters for learning from pixels, so holdjax draws the upper arm, elbow and
forearm as mocap bodies placed here each step instead of simulating their joints.
"""

import jax.numpy as jnp
import numpy as np

SHOULDER = np.array([0.0, 0.0, 0.32], np.float32)  # top of the pedestal (sawyer_arm.xml)
UPPER_ARM_LENGTH = 0.45
FOREARM_LENGTH = 0.50
WRIST_ABOVE_HAND = 0.21  # top of the wrist capsule in the hand frame


def _quat_z_to(direction: jnp.ndarray) -> jnp.ndarray:
    """Unit quaternion (w, x, y, z) rotating +z onto ``direction`` (upper hemisphere)."""
    u = direction / jnp.linalg.norm(direction)
    u = jnp.where(u[2] < 0, -u, u)  # capsules are symmetric: avoid the antipodal case
    q = jnp.array([1.0 + u[2], -u[1], u[0], 0.0])
    return q / jnp.linalg.norm(q)


def arm_link_poses(hand_pos: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Returns (positions (3, 3), quaternions (3, 4)) of upper arm, elbow and forearm."""
    wrist = hand_pos + jnp.array([0.0, 0.0, WRIST_ABOVE_HAND])
    reach = wrist - SHOULDER
    lo = abs(UPPER_ARM_LENGTH - FOREARM_LENGTH) + 1e-3
    dist = jnp.clip(jnp.linalg.norm(reach), lo, UPPER_ARM_LENGTH + FOREARM_LENGTH - 1e-3)
    along = reach / jnp.maximum(jnp.linalg.norm(reach), 1e-6)
    # Elbow bends upward, in the vertical plane through shoulder and wrist.
    up = jnp.array([0.0, 0.0, 1.0]) - along[2] * along
    up = up / jnp.maximum(jnp.linalg.norm(up), 1e-6)
    a = (UPPER_ARM_LENGTH**2 - FOREARM_LENGTH**2 + dist**2) / (2.0 * dist)
    h = jnp.sqrt(jnp.maximum(UPPER_ARM_LENGTH**2 - a**2, 0.0))
    elbow = SHOULDER + a * along + h * up
    positions = jnp.stack([(SHOULDER + elbow) / 2, elbow, (elbow + wrist) / 2])
    identity = jnp.array([1.0, 0.0, 0.0, 0.0])
    quats = jnp.stack([_quat_z_to(elbow - SHOULDER), identity, _quat_z_to(wrist - elbow)])
    return positions, quats
