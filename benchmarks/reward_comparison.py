"""Figure 3a's question: does a distance reward beat the sparse one at equal environment steps?

    python benchmarks/reward_comparison.py --seeds=3 --total_steps=60000 --observation=state \
        --updates_per_step=1 --epoch_length=5000        # a CPU: state policy, HOLD-C on frames
    python benchmarks/reward_comparison.py --seeds=5    # a GPU: the paper's pixel runs

Trains each of ``--configs`` (default: figure 3a's plain SAC and its HOLD-C run) with
`train_run.py` under the same flags (every flag not listed here is a `python -m holdjax.train`
flag) and compares eval success, the environment's success under the mean action, at equal
env steps: per eval the mean over seeds, and over the run its mean over all evals (area
under the curve) and over the last ``--last`` evals. The first config is the baseline; every
other gets ``beats_baseline`` when both of its figures exceed the baseline's. With
``--observation=state`` the policy and critics see the task's state while the distance reward
still scores the rendered frames, which makes the comparison affordable on a CPU; the paper's
policies see pixels. ``--pool=a.json,b.json`` compares the rows of earlier results trained on
different ``--seed`` as one run over all their seeds, training nothing. Runs stopped early
(``--time_limit``) are compared over the evals that all of them reached. Writes
``benchmarks/results/reward_comparison[-<tag>]-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import train_run  # noqa: E402
from common import write_results  # noqa: E402


def figures(per_eval: list[float], last: int) -> dict:
    """Mean eval success over seeds per eval, its mean over the run and over the last evals."""
    return {"mean_success_per_eval": list(per_eval),
            "mean_success_all_evals": float(np.mean(per_eval)),
            "mean_success_last_evals": float(np.mean(per_eval[-last:]))}


def success_figures(curve: list[dict], last: int) -> dict:
    """`figures` of a run's curve (eval success per seed at each eval)."""
    return figures([float(np.mean(point["eval_success_rate"])) for point in curve], last)


def compare(rows: list[dict], last: int) -> list[dict]:
    """Marks each row after the first with whether it beats the first (the baseline) on both
    figures. Their curves must share env steps, or the comparison is not at equal steps; a
    run stopped early (a time limit) shares the first of them, so every row is then cut to
    the evals they all reached (``evals_compared``) and its figures recomputed there."""
    base = rows[0]
    reached = min(len(row["env_steps"]) for row in rows)
    for row in rows[1:]:
        if row["env_steps"][:reached] != base["env_steps"][:reached]:
            raise ValueError(f"{row['config']} and {base['config']} were evaluated at different "
                             "env steps; give both the same schedule flags")
    for row in rows:
        if len(row["env_steps"]) > reached:
            row["env_steps"] = row["env_steps"][:reached]
            if "eval_success_per_seed" in row:
                row["eval_success_per_seed"] = [s[:reached] for s in row["eval_success_per_seed"]]
            row.update(figures(row["mean_success_per_eval"][:reached], last))
        row["evals_compared"] = reached
    for row in rows[1:]:
        row["beats_baseline"] = all(row[k] > base[k] for k in
                                    ("mean_success_all_evals", "mean_success_last_evals"))
    return rows


def seed_range(flags: list[str], seeds: int) -> range:
    """The seeds a run trained: ``--seed`` (default 0) onwards, ``seeds`` of them."""
    given = [int(f.split("=", 1)[1]) for f in flags if f.startswith("--seed=")]
    first = given[-1] if given else 0
    return range(first, first + seeds)


def pool(paths: list[str], configs: list[str], last: int) -> list[dict]:
    """One row per config from earlier results of this script trained on other seeds: eval
    success averaged over every seed of every file holding that config (each file's
    per-eval means weighted by its seeds), so that runs made apart compare as one. A path
    ``file.json:config`` takes only that config's row from the file."""
    found = {config: [] for config in configs}
    for item in paths:
        path, _, only = item.partition(":")
        with open(path) as f:
            result = json.load(f)
        for row in result["rows"]:
            if row["config"] in found and only in ("", row["config"]):
                found[row["config"]].append((path, result["flags"], row))
    rows = []
    for config, parts in found.items():
        if not parts:
            raise ValueError(f"no row of {config} in {', '.join(paths)}")
        seeds = [seed_range(flags, row["seeds"]) for _, flags, row in parts]
        trained = [s for r in seeds for s in r]
        if len(set(trained)) < len(trained):
            raise ValueError(f"{config}: the files share seeds ({trained}); pool runs made "
                             "with different --seed")
        steps = {tuple(row["env_steps"]) for _, _, row in parts}
        if len(steps) > 1:
            raise ValueError(f"{config}: the files evaluated at different env steps")
        weights = np.array([row["seeds"] for _, _, row in parts], float)
        per_eval = np.array([row["mean_success_per_eval"] for _, _, row in parts])
        per_eval = (weights[:, None] * per_eval).sum(axis=0) / weights.sum()
        rows.append({"config": config, "reward": parts[0][2]["reward"],
                     "seeds": len(trained), "seed_list": sorted(trained),
                     "env_steps": parts[0][2]["env_steps"],
                     "final_eval_success_per_seed": [x for _, _, row in parts
                                                     for x in row["final_eval_success_per_seed"]],
                     "sources": [{"file": os.path.basename(path), "flags": flags}
                                 for path, flags, _ in parts],
                     **figures(per_eval.tolist(), last)})
    return rows


def trained_row(config: str, train_flags: list[str], last: int) -> dict:
    """Trains ``config`` with ``train_run.py`` under ``train_flags``; its row of the table."""
    summary = train_run.main([f"--config={config}", *train_flags,
                              "--path_save_frequency=0", "--results=/tmp"])
    return {"config": config, "reward": summary["reward"],
            "seeds": summary["seeds"], "completed": summary["completed"],
            "wall_s": summary["wall_s"],
            **{k: summary[k] for k in ("first_epoch_s", "steady_env_steps_per_s_per_seed")
               if k in summary},  # speed (GPUs: two configs time-slice one chip)
            "env_steps": [point["env_steps"] for point in summary["curve"]],
            "final_eval_success_per_seed": summary["final_eval_success_per_seed"],
            "eval_success_per_seed": np.array(
                [point["eval_success_rate"] for point in summary["curve"]]).T.tolist(),
            **success_figures(summary["curve"], last)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="fig3a_pushing_sac,fig3a_pushing_holdc",
                        help="configs to train, the baseline first")
    parser.add_argument("--last", type=int, default=3, help="evals at the end to average")
    parser.add_argument("--tag", default="", help="variant name for the results file")
    parser.add_argument("--results", default=None, help="results folder")
    parser.add_argument("--pool", default="",
                        help="comma-separated results files of this script, trained with the "
                             "same flags on different --seed (file.json:config: only that "
                             "config's row): compare their seeds together instead of training")
    args, train_flags = parser.parse_known_args(argv)

    if args.pool:
        if train_flags:
            parser.error(f"--pool trains nothing, so {' '.join(train_flags)} would be ignored")
        rows = pool(args.pool.split(","), args.configs.split(","), args.last)
        train_flags = sorted({f for r in rows for s in r["sources"] for f in s["flags"]
                              if not f.startswith(("--seed=", "--seeds="))})
    else:
        rows = [trained_row(config, train_flags, args.last)
                for config in args.configs.split(",")]
    compare(rows, args.last)

    print(f"{'config':>24} {'reward':>7} {'all evals':>9} {'last ' + str(args.last):>7} "
          f"{'beats':>6}  mean success per eval")
    for r in rows:
        curve = " ".join(f"{s:.2f}" for s in r["mean_success_per_eval"])
        print(f"{r['config']:>24} {r['reward']:>7} {r['mean_success_all_evals']:>9.3f} "
              f"{r['mean_success_last_evals']:>7.3f} {str(r.get('beats_baseline', '-')):>6}  "
              f"{curve}")
    payload = {"flags": train_flags, "last": args.last, "rows": rows}
    print("wrote", write_results("reward_comparison", payload, out_dir=args.results,
                                 tag=args.tag))
    return payload


if __name__ == "__main__":
    main()
