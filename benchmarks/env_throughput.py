"""Environment steps per second: physics (all substeps) + rendering at the task's image size.

    python benchmarks/env_throughput.py                          # defaults for this device
    python benchmarks/env_throughput.py --nums=1,256,2048,8192 --impls=warp,jax

For each task, physics impl and world count N: a jitted ``lax.scan`` of ``--steps``
environment steps under uniform random actions (the first call's time, which includes
compilation, is reported separately), and the renderer alone on the resulting states.
Writes ``benchmarks/results/env_throughput-<device>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import timed, write_results  # noqa: E402

from holdjax import envs  # noqa: E402


def measure(task: str, impl: str, num_envs: int, steps: int, repeats: int) -> dict:
    env = envs.make(task, impl=impl)
    state = jax.jit(env.reset, static_argnums=1)(jax.random.PRNGKey(0), num_envs)

    @jax.jit
    def run(state, key):
        def body(state, key):
            action = jax.random.uniform(key, (num_envs, env.action_dim), minval=-1, maxval=1)
            return env.step(state, action), ()
        return jax.lax.scan(body, state, jax.random.split(key, steps))[0]

    first, best = timed(lambda: run(state, jax.random.PRNGKey(1)).obs, repeats)
    render = jax.jit(env.render)
    render_first, render_best = timed(lambda: render(state.data), repeats)
    return {
        "task": task,
        "impl": impl,
        "num_envs": num_envs,
        "image_shape": list(env.image_shape),
        "substeps": env.task.substeps,
        "timestep": env.task.timestep,
        "steps": steps,
        "env_steps_per_s": num_envs * steps / best,
        "physics_substeps_per_s": num_envs * steps * env.task.substeps / best,
        "render_frames_per_s": num_envs / render_best,
        "compile_and_first_run_s": first,
        "render_compile_s": render_first,
    }


def main(argv: list[str] | None = None) -> dict:
    gpu = jax.default_backend() == "gpu"
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(envs.TASKS))
    parser.add_argument("--impls", default="warp,jax" if gpu else "jax,warp")
    parser.add_argument("--nums", default="1,256,2048,8192" if gpu else "1,16,64")
    parser.add_argument("--steps", type=int, default=100 if gpu else 20)
    parser.add_argument("--repeats", type=int, default=3 if gpu else 1)
    parser.add_argument("--tag", default="", help="variant name for the results file")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)

    rows = []
    for task in args.tasks.split(","):
        for impl in args.impls.split(","):
            for n in map(int, args.nums.split(",")):
                try:
                    row = measure(task, impl, n, args.steps, args.repeats)
                except Exception as e:  # e.g. out of memory at large N: record and go on
                    row = {"task": task, "impl": impl, "num_envs": n, "error": repr(e)[:300]}
                rows.append(row)
                print(format_row(row), flush=True)
                # Rewritten after every row, so a run stopped at a time limit keeps its rows.
                path = write_results("env_throughput", summarize(rows), out_dir=args.out,
                                     tag=args.tag)
    print("wrote", path)
    return summarize(rows)


def summarize(rows: list[dict]) -> dict:
    best = {}
    for row in rows:
        if "env_steps_per_s" in row:
            key = row["task"]
            if row["env_steps_per_s"] > best.get(key, {}).get("env_steps_per_s", 0):
                best[key] = row
    return {"rows": rows,
            "best_env_steps_per_s": {k: v["env_steps_per_s"] for k, v in best.items()}}


def format_row(row: dict) -> str:
    head = f"{row['task']:>12} {row['impl']:>4} N={row['num_envs']:>5}"
    if "error" in row:
        return f"{head}  failed: {row['error']}"
    return (f"{head}  {row['env_steps_per_s']:>10.0f} env steps/s"
            f"  {row['render_frames_per_s']:>10.0f} frames/s (render only)"
            f"  compile+first {row['compile_and_first_run_s']:.1f} s")


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before argparse picks device defaults
    main()
