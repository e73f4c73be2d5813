"""The speed comparisons in one call: fused step, the reference's loop, brax's SAC.

    python benchmarks/run_all.py            # this device's defaults (minutes on a GPU)
    python benchmarks/run_all.py --tiny     # seconds-scale sizes: a smoke run on a CPU

Runs `fused_step.py` (pushing, HOLD-C and sparse rewards), `reference_loop.py` (the same task
and reward, one world at a time) and `brax_sac.py` in this process, on the same device, then
writes ``benchmarks/results/run_all-<device>.json`` with the ratios measured in this one run
(ratios hold across machines; absolute rates do not) and prints a table:

- ``ratio_fused_to_reference_one_update``: HOLD-C fused-step env steps/s at the reference's one
  update per env step (best N) over the reference loop's, HOLD-C reward;
- ``ratio_fused_to_reference_default``: the same at the config's default ratio;
- ``ratio_holdjax_to_brax_steps_per_s``: state-based SAC env steps/s, holdjax over brax.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import brax_sac  # noqa: E402
import fused_step  # noqa: E402
import reference_loop  # noqa: E402
from common import write_results  # noqa: E402

TINY_HOLDC = ["--holdc_layers=18", "--holdc_filters=2", "--holdc_crop_size=32"]


def best_rate(rows: list[dict], reward: str, ratio: str) -> float | None:
    rates = [r["env_steps_per_s"] for r in rows
             if r["reward"] == reward and r["ratio"] == ratio and "env_steps_per_s" in r]
    return max(rates) if rates else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    out = [f"--out={args.out}"] if args.out else []
    if args.tiny:
        fused_args = ["--rewards=sparse,holdc", "--nums=4", "--iterations=2", "--repeats=1",
                      "--batch_size=16", *TINY_HOLDC]
        loop_args = ["--steps=4", "--warmup=2", "--batch_size=16", *TINY_HOLDC]
        brax_args = ["--num_envs=4", "--total_steps=400", "--evals=2", "--eval_episodes=2",
                     "--learning_starts=16", "--batch_size=16"]
    else:
        fused_args, loop_args, brax_args = ["--rewards=sparse,holdc"], [], []

    fused = fused_step.main(fused_args + out)
    loop = reference_loop.main(loop_args + out)
    brax = brax_sac.main(brax_args + out)

    rows = fused["rows"]
    summary = {
        "fused_holdc_one_update_env_steps_per_s": best_rate(rows, "holdc", "1"),
        "fused_holdc_default_env_steps_per_s": best_rate(rows, "holdc", "default"),
        "reference_loop_env_steps_per_s": loop["env_steps_per_s"],
        "ratio_fused_to_reference_one_update": ratio(
            best_rate(rows, "holdc", "1"), loop["env_steps_per_s"]),
        "ratio_fused_to_reference_default": ratio(
            best_rate(rows, "holdc", "default"), loop["env_steps_per_s"]),
        "ratio_holdjax_to_brax_steps_per_s": brax["ratio_holdjax_to_brax_steps_per_s"],
        "tiny": args.tiny,
    }
    kwargs = {"out_dir": args.out} if args.out else {}
    path = write_results("run_all", {**summary, "fused_step": fused, "reference_loop": loop,
                                     "brax_sac": brax}, **kwargs)
    print(f"\n{jax.devices()[0].device_kind}: pushing, env steps/s")
    for name, value in summary.items():
        if isinstance(value, float):
            print(f"  {name:<42} {value:>12.1f}")
    print("wrote", path)
    return summary


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before the scripts pick device defaults
    main()
