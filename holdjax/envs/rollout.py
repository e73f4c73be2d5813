"""Whole-episode rollouts of a batch of worlds in one jitted ``lax.scan``."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from holdjax.envs.base import EnvState, ManipulationEnv

# policy(env_state, key) -> actions (N, action_dim)
Policy = Callable[[EnvState, jax.Array], jax.Array]


@struct.dataclass
class EpisodeStats:
    """Per-world outcome of one episode."""

    success_any: jax.Array  # (N,) bool: success at any step (the reference's info['success'])
    success_last: jax.Array  # (N,) bool: success at the final step
    episode_return: jax.Array  # (N,) sum of the sparse env reward


def expert_policy(env: ManipulationEnv, noise: float = 0.0) -> Policy:
    """The task's scripted expert, with optional Gaussian action noise."""

    def policy(state: EnvState, key: jax.Array) -> jax.Array:
        action = jax.vmap(env.task.expert_action)(state.state)
        return action + noise * jax.random.normal(key, action.shape)

    return policy


def random_policy(env: ManipulationEnv) -> Policy:
    """Uniform actions in [-1, 1], as the reference's initial exploration."""

    def policy(state: EnvState, key: jax.Array) -> jax.Array:
        shape = (state.obs.shape[0], env.action_dim)
        return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0)

    return policy


def rollout(
    env: ManipulationEnv, policy: Policy, key: jax.Array, num_envs: int, frames: int = 0
) -> tuple[EpisodeStats, jax.Array]:
    """One episode in ``num_envs`` worlds; returns stats and the first ``frames`` worlds'
    images, shape (T + 1, frames, H, W, 3) uint8 (the reset image first)."""
    reset_key, policy_key = jax.random.split(key)
    state = env.reset(reset_key, num_envs)

    def body(state, step_key):
        state = env.step(state, policy(state, step_key))
        return state, (state.success, state.reward, state.obs[:frames])

    keys = jax.random.split(policy_key, env.episode_length)
    _, (success, reward, images) = jax.lax.scan(body, state, keys)
    images = jnp.concatenate([state.obs[None, :frames], images], axis=0)
    stats = EpisodeStats(
        success_any=success.any(axis=0),
        success_last=success[-1],
        episode_return=reward.sum(axis=0),
    )
    return stats, images
