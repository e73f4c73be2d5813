"""The reference's reward shaping for distance models (its ``DistanceModelSampler``).

Per step, for each world, with ``s`` its current subtask and ``d`` the distance of the new
frame to the subtask's goal image:

1. ``pred = max(0, d - baseline[s])`` (baseline: the model's distance of the goal to itself)
2. with subtasks: ``pred < threshold`` for ``hold_steps`` steps in a row advances ``s``;
   then ``pred += (num_subtasks - 1 - s) * cost`` (``s`` before the switch)
3. ``r = -pred / T``, ``T = normalizer`` (minus the new subtask's baseline if asked)
4. optionally ``r_t - r_{t-1}`` (``subtract_prev_distance``)
5. ``reward = distance_weight * r + env_weight * env_reward``, where the env reward may be
   replaced by ``1[pred < env_reward_replace_threshold]``.

Everything is vectorised over worlds and jittable.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
from flax import struct


@dataclasses.dataclass(frozen=True)
class ShapingConfig:
    normalizer: float = 1.0
    distance_weight: float = 1.0
    env_weight: float = 1.0
    subtract_baseline_from_normalizer: bool = False
    subtract_prev_distance: bool = False
    env_reward_replace_threshold: float = 0.0  # 0 = keep the env reward
    use_subtasks: bool = False
    subtask_threshold: float = 1.0
    subtask_cost: float = 0.0
    subtask_hold_steps: int = 3


@struct.dataclass
class ShapingState:
    subtask: jax.Array  # (N,) int32 index of the goal image each world is rewarded against
    hold: jax.Array  # (N,) int32 consecutive steps below the subtask threshold
    prev: jax.Array  # (N,) float32 previous step's distance term, for subtract_prev_distance


def init_shaping(config: ShapingConfig, num_worlds: int, num_goals: int) -> ShapingState:
    """Episode start: the first subtask with subtasks on, else the final goal throughout."""
    first = 0 if config.use_subtasks else num_goals - 1
    return ShapingState(
        subtask=jnp.full((num_worlds,), first, jnp.int32),
        hold=jnp.zeros((num_worlds,), jnp.int32),
        prev=jnp.zeros((num_worlds,), jnp.float32),
    )


def shape_reward(
    config: ShapingConfig,
    distances: jax.Array,
    baselines: jax.Array,
    env_reward: jax.Array,
    state: ShapingState,
) -> tuple[jax.Array, ShapingState, dict[str, jax.Array]]:
    """distances (N, G) to every goal, baselines (G,), env_reward (N,) -> reward (N,)."""
    num_worlds, num_goals = distances.shape
    chex.assert_shape(baselines, (num_goals,))
    chex.assert_shape(env_reward, (num_worlds,))
    subtask = state.subtask
    dist = jnp.take_along_axis(distances, subtask[:, None], axis=1)[:, 0]
    pred = jnp.maximum(0.0, dist - baselines[subtask])
    hold = state.hold
    if config.use_subtasks:
        hold = jnp.where(pred < config.subtask_threshold, hold + 1, 0)
        advance = hold >= config.subtask_hold_steps
        pred = pred + (num_goals - 1 - subtask) * config.subtask_cost
        subtask = jnp.where(advance, jnp.minimum(subtask + 1, num_goals - 1), subtask)
        hold = jnp.where(advance, 0, hold)
    normalizer = config.normalizer
    if config.subtract_baseline_from_normalizer:
        normalizer = normalizer - baselines[subtask]
    term = -pred / normalizer
    distance_reward = term - state.prev if config.subtract_prev_distance else term
    if config.env_reward_replace_threshold > 0:
        env_reward = (pred < config.env_reward_replace_threshold).astype(jnp.float32)
    reward = config.distance_weight * distance_reward + config.env_weight * env_reward
    new_state = ShapingState(subtask=subtask, hold=hold, prev=term)
    return reward, new_state, {"distance": dist, "distance_reward": distance_reward}
