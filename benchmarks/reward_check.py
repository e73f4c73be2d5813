"""How well holdjax's demo-trained HOLD-C ranks frames, against the L2 pixel baseline.

    python benchmarks/reward_check.py --task=pushing                 # the default settings
    python benchmarks/reward_check.py --task=pushing --seeds=0,1 --steps=4000

For each training seed: trains a model with `holdjax.reward.train` (the default settings,
every ``--<field>`` of its RewardTrainConfig overriding), scores it with
`holdjax.reward.check` (``spearman_time`` on held-out expert episodes, ``spearman_state`` on
random-policy frames, ``goal_pose_below_success`` on start scenes with the hand at the goal
image's pose), and scores the reference's L2 pixel distance on the same episodes. Writes
``benchmarks/results/reward_check-<task>[-<tag>]-<device>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

import jax.numpy as jnp

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import write_results  # noqa: E402

from holdjax.reward import check  # noqa: E402
from holdjax.reward import train as reward_train  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="pushing")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    settings = [f for f in dataclasses.fields(reward_train.RewardTrainConfig)
                if f.name not in ("task", "seed")]  # both set above, per run
    for field in settings:
        parser.add_argument(f"--{field.name}", type=type(field.default), default=None,
                            help=f"training setting (default: {field.default})")
    parser.add_argument("--check_seed", type=int, default=1, help="the check episodes' seed")
    parser.add_argument("--tag", default="", help="variant name for the results file")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--keep", default="",
                        help="keep each trained model as <this>/seed<seed> (default: discarded), "
                             "e.g. for train's --reward_checkpoint")
    args = parser.parse_args(argv)

    overrides = {f.name: getattr(args, f.name) for f in settings
                 if getattr(args, f.name) is not None}
    env = reward_train.task_env(args.task)
    rows = []
    for seed in map(int, args.seeds.split(",")):
        config = reward_train.RewardTrainConfig(task=args.task, seed=seed, **overrides)
        with tempfile.TemporaryDirectory() as scratch:
            model_dir = os.path.join(args.keep or scratch, f"seed{seed}")
            info = reward_train.train(config, model_dir)
            start = time.perf_counter()
            scores = check.evaluate(check.reward_for(args.task, "holdc", model_dir), env,
                                    seed=args.check_seed)
        rows.append({"model": "holdc", "seed": seed, "layers": config.layers,
                     "filters": config.filters, "image_size": config.image_size,
                     "steps": config.steps, "render_s": info["render_s"],
                     "train_s": info["train_s"], "final_loss": info["final_loss"],
                     "check_s": round(time.perf_counter() - start, 1), **scores})
    rows.append({"model": "l2", **check.evaluate(check.reward_for(args.task, "l2"), env,
                                                 seed=args.check_seed)})

    print(f"{'model':>6} {'seed':>4} {'steps':>6} {'spearman_time':>14} {'spearman_state':>15}"
          f" {'goal_pose_below':>16}  per subgoal")
    for row in rows:
        subgoals = " ".join(f"{x:.3f}" for x in row.get("spearman_time_subgoals", []))
        print(f"{row['model']:>6} {row.get('seed', '-'):>4} {row.get('steps', '-'):>6} "
              f"{row['spearman_time']:>14.3f} {row['spearman_state']:>15.3f} "
              f"{row.get('goal_pose_below_success', float('nan')):>16.3f}  {subgoals}")
    holdc_rows = [r for r in rows if r["model"] == "holdc"]
    payload = {
        "task": args.task,
        "check_seed": args.check_seed,
        "overrides": overrides,
        "rows": rows,
        "holdc_mean_spearman_time": sum(r["spearman_time"] for r in holdc_rows) / len(holdc_rows),
        "holdc_mean_spearman_state": sum(r["spearman_state"] for r in holdc_rows)
        / len(holdc_rows),
    }
    print("wrote", write_results(f"reward_check-{args.task}", payload, out_dir=args.out,
                                 tag=args.tag))
    return payload


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before the defaults are chosen
    main()
