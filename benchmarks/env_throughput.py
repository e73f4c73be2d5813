"""Environment steps per second: physics (all substeps) + rendering at the task's image size.

    python benchmarks/env_throughput.py                          # defaults for this device
    python benchmarks/env_throughput.py --nums=1,256,2048,8192 --impls=warp,jax

For each task, physics impl and world count N: a jitted ``lax.scan`` of ``--steps``
environment steps under uniform random actions (the first call's time, which includes
compilation, is reported separately), and the renderer alone on the reset states.
With Warp physics each row also counts the worlds whose run hit one of MuJoCo Warp's
limits (dropped contacts, solver or line-search iterations) and names the kinds.
Writes ``benchmarks/results/env_throughput-<device>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import timed, write_results  # noqa: E402

from holdjax import envs  # noqa: E402
from holdjax.envs.base import ManipulationEnv, overflow_kinds, physics_overflow  # noqa: E402


def measure(task: str, impl: str, num_envs: int, steps: int, repeats: int, render: bool = True,
            ls_iterations: int = 0) -> dict:
    """One row; ``render=False`` times physics alone, ``ls_iterations`` > 0 overrides the
    scene's line-search limit."""
    task_model = envs.make_task(task)
    if ls_iterations:
        task_model.mj_model.opt.ls_iterations = ls_iterations
    env = ManipulationEnv(task_model, impl=impl, render_obs=render)
    state = jax.jit(env.reset, static_argnums=1)(jax.random.PRNGKey(0), num_envs)

    @jax.jit
    def run(state, key):
        def body(state, key):
            action = jax.random.uniform(key, (num_envs, env.action_dim), minval=-1, maxval=1)
            return env.step(state, action), ()
        final = jax.lax.scan(body, state, jax.random.split(key, steps))[0]
        # The state too: without rendering, obs alone would let XLA drop the physics.
        return final.obs, final.state, physics_overflow(final.data)

    outputs = []  # the last run's, for its overflow record
    first, best = timed(lambda: outputs.append(run(state, jax.random.PRNGKey(1))) or outputs[-1],
                        repeats)
    overflow = np.asarray(outputs[-1][-1])
    seen = int(np.bitwise_or.reduce(overflow))
    render_fn = jax.jit(env.render)
    render_first, render_best = (timed(lambda: render_fn(state.data), repeats)
                                 if render else (None, None))
    return {
        "task": task,
        "impl": impl,
        "num_envs": num_envs,
        "image_shape": list(env.image_shape),
        "substeps": env.task.substeps,
        "timestep": env.task.timestep,
        "steps": steps,
        "rendered": render,
        "ls_iterations": int(task_model.mj_model.opt.ls_iterations),
        "env_steps_per_s": num_envs * steps / best,
        "physics_substeps_per_s": num_envs * steps * env.task.substeps / best,
        "render_frames_per_s": num_envs / render_best if render else None,
        "compile_and_first_run_s": first,
        "render_compile_s": render_first,
        "overflow_worlds": int(np.count_nonzero(overflow)),
        "overflow_kinds": overflow_kinds(seen),
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
    parser.add_argument("--no_render", action="store_true", help="physics alone")
    parser.add_argument("--ls_iterations", type=int, default=0,
                        help="line-search iteration limit (default: the scene's)")
    parser.add_argument("--tag", default="", help="variant name for the results file")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)

    rows = []
    for task in args.tasks.split(","):
        for impl in args.impls.split(","):
            for n in map(int, args.nums.split(",")):
                try:
                    row = measure(task, impl, n, args.steps, args.repeats,
                                  render=not args.no_render, ls_iterations=args.ls_iterations)
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
    render = (f"{row['render_frames_per_s']:>10.0f} frames/s (render only)" if row["rendered"]
              else "(physics only)")
    overflow = (f"  {row['overflow_worlds']} worlds hit {','.join(row['overflow_kinds'])}"
                if row["overflow_worlds"] else "")
    return (f"{head}  {row['env_steps_per_s']:>10.0f} env steps/s  {render}"
            f"  compile+first {row['compile_and_first_run_s']:.1f} s{overflow}")


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before argparse picks device defaults
    main()
