"""The speed comparisons in one call: fused step, the reference's loop, brax's SAC.

    python benchmarks/run_all.py            # sizes for one device call (~5 min on an H100)
    python benchmarks/run_all.py --tiny     # seconds-scale sizes: a smoke run on a CPU

Runs `fused_step.py` (pushing, HOLD-C and sparse rewards), `reference_loop.py` (the same task
and reward, one world at a time) and `brax_sac.py` in this process, on the same device, then
writes ``benchmarks/results/run_all-<device>.json`` with the ratios measured in this one run
(ratios hold across machines; absolute rates do not) and prints a table:

- ``ratio_fused_to_reference_one_update``: HOLD-C fused-step env steps/s at the reference's one
  update per env step (best N) over the reference loop's, HOLD-C reward;
- ``ratio_fused_to_reference_<r>``: the same at ``--fused_ratio`` r updates per env step
  (default 1/16: more worlds per update, the setting a researcher picks for wall time);
- ``ratio_holdjax_to_brax_steps_per_s``: state-based SAC env steps/s, holdjax over brax.

A part that fails (e.g. no OpenGL for the reference loop's renderer) is recorded with its
error and the others still run.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from headless_gl import choose_mujoco_gl  # noqa: E402

choose_mujoco_gl()  # before any import loads mujoco: the reference loop renders with OpenGL

import brax_sac  # noqa: E402
import fused_step  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import reference_loop  # noqa: E402
from common import write_results  # noqa: E402

PART_NAMES = ("reference_loop", "fused_step", "brax_sac")  # in the order they run
DEFAULT_FUSED_RATIO = "0.0625"
TINY_HOLDC = ["--holdc_layers=18", "--holdc_filters=2", "--holdc_crop_size=32"]


def best_rate(rows: list[dict], reward: str, ratio: str) -> float | None:
    rates = [r["env_steps_per_s"] for r in rows
             if r["reward"] == reward and r["ratio"] == ratio and "env_steps_per_s" in r]
    return max(rates) if rates else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def render_free_rate(loop: dict) -> float | None:
    """The reference loop's env steps/s were its render free: the bound that favours the
    reference most, whichever renderer it had (the MJX fallback costs far more per frame
    than OpenGL)."""
    rate, render_ms = loop.get("env_steps_per_s"), loop.get("parts_ms", {}).get("render")
    return None if rate is None or render_ms is None else 1e3 / (1e3 / rate - render_ms)


def summarize(parts: dict, fused_ratio: str, tiny: bool) -> dict:
    """The rates and ratios that the parts measured so far give (None where one is missing)."""
    rows = parts.get("fused_step", {}).get("rows", [])
    loop = parts.get("reference_loop", {})
    loop_rate, free_rate = loop.get("env_steps_per_s"), render_free_rate(loop)
    one, more = best_rate(rows, "holdc", "1"), best_rate(rows, "holdc", fused_ratio)
    return {
        "fused_holdc_one_update_env_steps_per_s": one,
        f"fused_holdc_{fused_ratio}_updates_env_steps_per_s": more,
        "reference_loop_env_steps_per_s": loop_rate,
        "reference_loop_renderer": loop.get("renderer"),
        "reference_loop_render_free_env_steps_per_s": free_rate,
        "ratio_fused_to_reference_one_update": ratio(one, loop_rate),
        f"ratio_fused_to_reference_{fused_ratio}": ratio(more, loop_rate),
        "ratio_fused_to_render_free_reference_one_update": ratio(one, free_rate),
        f"ratio_fused_to_render_free_reference_{fused_ratio}": ratio(more, free_rate),
        "ratio_holdjax_to_brax_steps_per_s":
            parts.get("brax_sac", {}).get("ratio_holdjax_to_brax_steps_per_s"),
        "tiny": tiny,
    }


def attempt(name: str, main, args: list[str]) -> dict:
    """``main(args)``, or ``{"error": ...}`` when it raises, so the other parts still run."""
    try:
        return main(args)
    except Exception as e:
        traceback.print_exc()
        print(f"{name} failed: {e!r}", flush=True)
        return {"error": repr(e)[:300]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    parser.add_argument("--fused_ratio", default=DEFAULT_FUSED_RATIO,
                        help="updates per env step of the fused step's second setting")
    parser.add_argument("--fused_nums", default="1024", help="world counts of the fused step")
    parser.add_argument("--fused_rewards", default="sparse,holdc", help="the fused step's rewards")
    parser.add_argument("--brax_steps", type=int, default=40_000,
                        help="env steps per trainer in the brax comparison; 0 skips it "
                             "(gpu_session.sh's `brax` part gives it a call of its own)")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--resummarize", default=None, metavar="RUN_ALL_JSON",
                        help="only recompute the summary of this results file from its parts")
    args = parser.parse_args(argv)
    if args.resummarize:
        return resummarize(args.resummarize)
    out = [f"--out={args.out}"] if args.out else []
    ratios = f"--ratios=1,{args.fused_ratio}"
    if args.tiny:
        fused_args = ["--rewards=sparse,holdc", "--nums=4", ratios, "--iterations=2",
                      "--repeats=1", "--batch_size=16", *TINY_HOLDC]
        loop_args = ["--steps=4", "--warmup=2", "--batch_size=16", *TINY_HOLDC]
        brax_args = ["--num_envs=4", "--total_steps=400", "--evals=2", "--eval_episodes=2",
                     "--learning_starts=16", "--batch_size=16"]
    else:  # one update per env step costs ~1.3 ms per world, so few fused steps
        fused_args = [f"--rewards={args.fused_rewards}", f"--nums={args.fused_nums}", ratios,
                      "--iterations=4", "--repeats=2"]
        loop_args = ["--steps=200", "--warmup=10"]
        brax_args = ["--num_envs=64", f"--total_steps={args.brax_steps}", "--evals=4"]

    parts = {}
    part_runs = {"reference_loop": (reference_loop.main, loop_args),
                 "fused_step": (fused_step.main, fused_args),
                 "brax_sac": (brax_sac.main, brax_args)}
    if not args.tiny and args.brax_steps == 0:
        del part_runs["brax_sac"]
    for name in filter(part_runs.__contains__, PART_NAMES):
        part_main, part_args = part_runs[name]
        parts[name] = attempt(name, part_main, part_args + out)
        # Written after every part, so that a call cut short keeps what it measured.
        summary = summarize(parts, args.fused_ratio, args.tiny)
        path = write_results("run_all", {**summary, **parts}, out_dir=args.out)
    print_table(jax.devices()[0].device_kind, summary)
    print("wrote", path)
    return summary


def resummarize(path: str) -> dict:
    """Rewrite the summary of a run_all results file (e.g. copied back from the GPU machine)
    from the parts it holds, after this script's summary gained a figure."""
    with open(path) as f:
        stored = json.load(f)
    parts = {name: stored[name] for name in PART_NAMES if name in stored}
    ratios = [r["ratio"] for r in parts.get("fused_step", {}).get("rows", []) if r["ratio"] != "1"]
    summary = summarize(parts, ratios[0] if ratios else DEFAULT_FUSED_RATIO,
                        stored.get("tiny", False))
    stored.update(summary)
    with open(path, "w") as f:
        json.dump(stored, f, indent=1)
    print_table(stored.get("device", "?"), summary)
    print("rewrote", path)
    return summary


def print_table(device: str, summary: dict) -> None:
    print(f"\n{device}: pushing, env steps/s")
    for name, value in summary.items():
        if isinstance(value, float):
            print(f"  {name:<50} {value:>12.1f}")


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before the scripts pick device defaults
    main()
