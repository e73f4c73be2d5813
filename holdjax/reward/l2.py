"""The reference's L2 baseline (paper figure 5): pixel distance to the goal image."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from holdjax.envs.base import central_crop, image_to_float


def l2_distance(frames: jax.Array, goals: jax.Array) -> jax.Array:
    """Euclidean distance between the central squares of images in [0, 1], as the
    reference's ``ImageDiffSampler`` crops its observation (its goal images are cropped
    already): frames (N, H, W, 3) uint8 and goals (G, H, W, 3) uint8 -> (N, G)."""
    chex.assert_rank([frames, goals], 4)
    chex.assert_equal_shape_suffix([frames, goals], 3)
    frames, goals = central_crop(frames), central_crop(goals)
    diff = image_to_float(frames)[:, None] - image_to_float(goals)[None]
    return jnp.sqrt(jnp.sum(jnp.square(diff), axis=(-3, -2, -1)))
