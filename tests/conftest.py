"""Shared fixtures: environments are built once per test session (building and compiling
them is the slow part on the CPU)."""

import functools
import os

# benchmarks/reference_loop.py renders through OpenGL; mujoco reads this when first imported.
os.environ.setdefault("MUJOCO_GL", "egl")

import jax  # noqa: E402
import pytest  # noqa: E402

from holdjax import envs  # noqa: E402


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
