"""Shared fixtures: environments are built once per test session (building and compiling
them is the slow part on the CPU)."""

import concurrent.futures
import functools
import gc
import os
import socket
import subprocess
import sys
import threading

# benchmarks/reference_loop.py renders through OpenGL; mujoco reads this when first imported.
os.environ.setdefault("MUJOCO_GL", "egl")
# The suite's time is mostly XLA compiling small programs; without LLVM's optimisation
# passes that takes about half as long, and programs this small run fast enough anyway.
# Set before jax is imported; subprocesses the tests start inherit it.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{TEST_XLA_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()

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


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Lane:
    """Runs Python processes one at a time beside the tests; a test module hands it work it
    needs later (a whole training run, say) and goes on meanwhile.

    Most of the suite's time is XLA compilation, which keeps one core busy: the lane's
    process compiles on the other core of a 2-core machine. One process at a time bounds
    the memory. ``close`` (at the end of the module) cancels what has not started and stops
    what still runs: its result is no longer wanted (tests that need one wait for it).
    """

    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._lock = threading.Lock()
        self._running: subprocess.Popen | None = None
        self._closed = False

    def submit(self, *args: str, env: dict | None = None) -> concurrent.futures.Future:
        """Runs ``python *args`` in the repository root with ``env`` added to the environment.
        A future of its stdout; the future raises, showing stderr, if the process fails."""
        command = [sys.executable, *args]
        return self._pool.submit(self._run, command, dict(os.environ, **(env or {})))

    def _run(self, command: list[str], env: dict) -> str:
        with self._lock:
            if self._closed:
                raise concurrent.futures.CancelledError
            self._running = subprocess.Popen(command, cwd=ROOT, env=env, text=True,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = self._running.communicate()
        if self._running.returncode:
            raise RuntimeError(f"{' '.join(command[:3])}... exited with "
                               f"{self._running.returncode}:\n{stderr[-5000:]}")
        return stdout

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._running is not None and self._running.poll() is None:
                self._running.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)


def run_two_processes(args: list[str], env: dict | None = None,
                      returncode: int = 0) -> list[subprocess.CompletedProcess]:
    """Runs ``python *args`` as processes 0 and 1 of one jax.distributed job on this machine
    (one CPU device each, Gloo between them), with ``env`` added to the environment; their
    results once both have ended, each checked to have exited with ``returncode``."""
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES="2", **(env or {}))
    processes = [subprocess.Popen([sys.executable, *args], cwd=ROOT, text=True,
                                  env=dict(env, JAX_PROCESS_ID=str(index)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for index in range(2)]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(process.args, process.returncode,
                                                   stdout, stderr))
    for index, result in enumerate(results):
        assert result.returncode == returncode, f"process {index}:\n{result.stderr[-3000:]}"
    return results


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Frees each test module's compiled programs and trainers after it: in one process the
    whole suite's XLA programs outgrew a CI machine (XLA aborted mid-compile late in the run)."""
    yield
    from holdjax import train

    train._trainer_for.cache_clear()
    jax.clear_caches()
    gc.collect()
