"""How the number of worlds N changes sample efficiency and wall time, at two update ratios.

    python benchmarks/sample_efficiency.py --observation=state --total_steps=20000
    python benchmarks/sample_efficiency.py --nums=16,256,1024 --total_steps=400000   # a GPU

For each N in ``--nums`` and each ratio in ``--ratios`` (``1``: one gradient update per
environment step, the reference's; ``fused``: one update per fused step, i.e. 1/N per env
step) it trains with `train_run.py` (pushing, dense reward by default; every other flag is a
`python -m holdjax.train` flag) and records eval success against environment steps and wall
time. SPEC.md's runs are counted in environment steps, so the question is how many env steps
and how many seconds each setting needs for the same success. Writes
``benchmarks/results/sample_efficiency[-<tag>]-<device>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import train_run  # noqa: E402
from common import write_results  # noqa: E402


def first_reaching(curve: list[dict], level: float) -> tuple[int | None, float | None]:
    """(env steps, wall seconds) of the first eval whose mean success over seeds >= level."""
    for point in curve:
        if np.mean(point["eval_success_rate"]) >= level:
            return point["env_steps"], point["wall_s"]
    return None, None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nums", default="4,16,64", help="world counts per seed")
    parser.add_argument("--ratios", default="1,fused", help="1 and/or fused (see above)")
    parser.add_argument("--level", type=float, default=0.3, help="success level to time")
    parser.add_argument("--tag", default="", help="variant name for the results file")
    parser.add_argument("--results", default=None, help="results folder")
    args, train_flags = parser.parse_known_args(argv)
    if not any(f.startswith(("--reward=", "--config=")) for f in train_flags):
        train_flags.append("--reward=dense")

    rows = []
    for num_envs in map(int, args.nums.split(",")):
        for ratio in args.ratios.split(","):
            per_step = 1.0 if ratio == "1" else 1.0 / num_envs
            name = f"sample_efficiency_n{num_envs}_r{ratio}"
            summary = train_run.main([*train_flags, f"--num_envs={num_envs}",
                                      f"--updates_per_step={per_step}", f"--name={name}",
                                      "--path_save_frequency=0", "--results=/tmp"])
            steps, seconds = first_reaching(summary["curve"], args.level)
            rows.append({
                "num_envs": num_envs,
                "ratio": ratio,
                "updates_per_env_step": per_step,
                "env_steps_per_seed": summary["env_steps_per_seed"],
                "wall_s": summary["wall_s"],
                "steady_env_steps_per_s_per_seed": summary.get("steady_env_steps_per_s_per_seed"),
                "best_eval_success_mean": float(np.mean(summary["best_eval_success_per_seed"])),
                "final_eval_success_mean": float(np.mean(summary["final_eval_success_per_seed"])),
                f"env_steps_to_{args.level}": steps,
                f"wall_s_to_{args.level}": seconds,
                "curve": summary["curve"],
            })
            # written after each training: a sweep cut short keeps the ones it finished
            path = write_results("sample_efficiency",
                                 {"flags": train_flags, "level": args.level, "rows": rows},
                                 out_dir=args.results, tag=args.tag)

    print(f"{'N':>5} {'ratio':>6} {'env steps':>9} {'wall s':>7} {'best':>5} {'final':>5} "
          f"{'steps to ' + str(args.level):>14} {'s to ' + str(args.level):>10}")
    for r in rows:
        print(f"{r['num_envs']:>5} {r['ratio']:>6} {r['env_steps_per_seed']:>9} "
              f"{r['wall_s']:>7.0f} {r['best_eval_success_mean']:>5.2f} "
              f"{r['final_eval_success_mean']:>5.2f} {str(r[f'env_steps_to_{args.level}']):>14} "
              f"{str(r[f'wall_s_to_{args.level}']):>10}")
    print("wrote", path)
    return {"flags": train_flags, "level": args.level, "rows": rows}


if __name__ == "__main__":
    main()
