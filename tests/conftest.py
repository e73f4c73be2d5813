"""Shared fixtures: environments are built once per test session (building and compiling
them is the slow part on the CPU)."""

import functools

import jax
import pytest

from holdjax import envs


@functools.cache
def cached_env(task: str, impl: str = "jax"):
    return envs.make(task, impl=impl)


@functools.cache
def jitted(task: str, impl: str = "jax"):
    """(env, jitted reset with static num_envs, jitted step) for a task."""
    env = cached_env(task, impl)
    return env, jax.jit(env.reset, static_argnums=1), jax.jit(env.step)


@pytest.fixture(scope="session")
def pushing():
    return jitted("pushing")
