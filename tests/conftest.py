"""Shared fixtures: environments are built once per test session (building and compiling
them is the slow part on the CPU)."""

import functools
import gc
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


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Frees each test module's compiled programs and trainers after it: in one process the
    whole suite's XLA programs outgrew a CI machine (XLA aborted mid-compile late in the run)."""
    yield
    from holdjax import train

    train._trainer_for.cache_clear()
    jax.clear_caches()
    gc.collect()
