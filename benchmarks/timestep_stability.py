"""Choose the physics timestep: stability and speed at the reference's control period.

    python benchmarks/timestep_stability.py --task=pushing --timesteps=0.002,0.005,0.01
    python benchmarks/timestep_stability.py --timesteps=0.005,0.01 --num_envs=20 --tag=n20  # a GPU

The reference steps 0.002 s x 50 (pushing) and 0.0025 s x 5 (drawer_open) per environment
step. For each candidate timestep (control period fixed, so substeps = period / timestep)
this runs the noisy scripted expert and reports its success rate, the largest object
speed and tilt seen (blow-ups show as huge speeds, tunnelling as objects below the table),
and environment steps per second (physics and the camera frame, with ``--impl``'s physics:
``auto`` is MuJoCo Warp on a GPU, where at a few worlds, as in evaluation, a step's latency
and not its work sets the rate). Writes
``benchmarks/results/timestep-<task>[-<tag>]-<device>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import write_results  # noqa: E402

from holdjax import envs  # noqa: E402
from holdjax.envs.rollout import expert_policy  # noqa: E402


def measure(task: str, timestep: float, num_envs: int, noise: float, impl: str = "auto") -> dict:
    env = envs.make(task, impl=impl, timestep=timestep)
    policy = expert_policy(env, noise)
    free = [j for j in range(env.task.mj_model.njnt) if env.task.mj_model.jnt_type[j] == 0]

    @jax.jit
    def run(key):
        reset_key, key = jax.random.split(key)
        state = env.reset(reset_key, num_envs)

        def body(state, k):
            state = env.step(state, policy(state, k))
            qvel, qpos = state.data.qvel, state.data.qpos
            speed = jnp.max(jnp.abs(qvel), axis=-1)
            lowest = jnp.min(qpos[:, [env.task.mj_model.jnt_qposadr[j] + 2 for j in free]],
                             axis=-1) if free else jnp.zeros(num_envs)
            return state, (state.success, speed, lowest)

        _, out = jax.lax.scan(body, state, jax.random.split(key, env.episode_length))
        return out

    jax.block_until_ready(run(jax.random.PRNGKey(0)))
    start = time.perf_counter()
    success, speed, lowest = jax.block_until_ready(run(jax.random.PRNGKey(1)))
    wall = time.perf_counter() - start
    return {
        "task": task,
        "impl": env.impl,
        "timestep": timestep,
        "substeps": env.task.substeps,
        "expert_noise": noise,
        "episodes": num_envs,
        "expert_success_rate": float(np.asarray(success).any(axis=0).mean()),
        "max_abs_qvel": float(np.max(speed)),
        "lowest_free_body_z": float(np.min(lowest)),
        "env_steps_per_s": num_envs * env.episode_length / wall,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="pushing")
    parser.add_argument("--timesteps", default="0.002,0.005,0.01")
    parser.add_argument("--num_envs", type=int, default=32)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--impl", default="auto", help="physics: auto, jax or warp")
    parser.add_argument("--tag", default="", help="variant name for the results file")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    rows, payload = [], {}
    for dt in map(float, args.timesteps.split(",")):
        rows.append(measure(args.task, dt, args.num_envs, args.noise, args.impl))
        print(rows[-1], flush=True)
        payload = {"rows": rows}  # written after each timestep: a call cut short keeps them
        path = write_results(f"timestep-{args.task}", payload, out_dir=args.out, tag=args.tag)
    print("wrote", path)
    return payload


if __name__ == "__main__":
    main()
