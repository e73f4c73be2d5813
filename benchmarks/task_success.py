"""Scripted-expert and random success rates of every task, with wall times, via the CLI.

    python benchmarks/task_success.py [--tasks=pushing,drawer_open] [--episodes=64]
    python benchmarks/task_success.py --impl=warp --tasks=cup_forward --episodes=8 --tag=warp

Runs ``python -m holdjax.envs`` (in-process) for the expert, the expert with Gaussian action
noise, and uniform random actions; writes ``benchmarks/results/task_success[-<tag>]-<device>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import write_results  # noqa: E402

from holdjax import envs  # noqa: E402
from holdjax.envs.__main__ import main as envs_cli  # noqa: E402

POLICIES = (("expert", 0.0), ("expert", 0.3), ("random", 0.0))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(envs.TASKS))
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--impl", default="auto", help="MJX physics impl: auto, jax or warp")
    parser.add_argument("--tag", default="", help="variant name for the results file")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    rows = []
    for task in args.tasks.split(","):
        for policy, noise in POLICIES:
            start = time.perf_counter()
            row = envs_cli([f"--task={task}", f"--policy={policy}", f"--noise={noise}",
                            f"--episodes={args.episodes}", f"--impl={args.impl}", "--json"])
            row["wall_s_with_compile"] = round(time.perf_counter() - start, 2)
            rows.append(row)
    payload = {"rows": rows}
    print("wrote", write_results("task_success", payload, out_dir=args.out, tag=args.tag))
    return payload


if __name__ == "__main__":
    main()
