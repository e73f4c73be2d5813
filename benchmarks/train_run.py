"""A training run as a benchmark: wall time, environment steps/s, updates/s, eval success.

    python benchmarks/train_run.py --reward=dense --total_steps=4000 --num_envs=16
    python benchmarks/train_run.py --time_limit=200 --config=pushing_dense --seeds=1 --num_envs=64
    python benchmarks/train_run.py --metrics=RUN/metrics.jsonl --device=nvidia-h200 <run's flags>

Every flag other than those below (``--help``) is a `python -m holdjax.train` flag. The run
goes to ``--out`` (default: a fresh temporary folder) in a subprocess; ``--time_limit`` stops
it after that many seconds with SIGINT, as Ctrl-C would (the run then finishes its epoch,
evaluates and logs the epochs it trained since its last evaluation, then saves a checkpoint;
killed only if it has not exited ``--stop_grace`` seconds later; killed while checkpointing,
its log is already written), so a run longer than a device session still gives its learning
curve and its speed. ``--reference_steps_per_s`` (the reference loop's rate) adds the speed
ratio and both times for the planned steps (holdjax's projected where the run was stopped).
``--metrics`` only summarises a ``metrics.jsonl`` written earlier (e.g. copied back from the
GPU machine) under the config the same flags give; ``--device`` then names the machine it
ran on.
Writes ``benchmarks/results/train-<run name>-<device>.json`` and prints the summary.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import write_results  # noqa: E402

from holdjax.config import TrainConfig, config_from_args  # noqa: E402
from holdjax.plot import read_metrics  # noqa: E402

# Seconds an interrupted run may take to log its last epochs and checkpoint before it is
# killed: enough for the epoch in progress, the evaluation of up to `eval_batch` epochs (the
# first one compiles the evaluation: tens of seconds on a GPU) and the checkpoint.
# gpu_session.sh leaves this and 15 s more between the time limit and its own.
STOP_GRACE_S = 45


def summarize(records: list[dict], config: TrainConfig, launched: float | None = None) -> dict:
    """Speed (overall and after the first, compiling epoch), and eval success per seed with
    the eval and train returns per epoch where the metrics have them. ``launched`` (Unix time
    the run's process started) adds ``launch_to_run_s``: imports and set-up before its clock."""
    if not records:
        raise ValueError("no epochs were completed: nothing to summarise")
    last = records[-1]
    # A resumed run's records span sessions: each session's first epoch (the one logged with
    # its set-up, `started_at`) compiles; the set-up reported is this session's.
    session = next((r for r in reversed(records) if "started_at" in r), records[0])
    summary = {
        "config": config.run_name,
        "task": config.task,
        "reward": config.reward,
        "seeds": config.seeds,
        "num_envs": config.num_envs,
        "updates_per_iteration": config.updates_per_iteration,
        "planned_env_steps": config.num_epochs * config.iterations_per_epoch * config.num_envs,
        "completed": len(records) == config.num_epochs,
        "epochs": len(records),
        "env_steps_per_seed": last["env_steps"],
        "wall_s": last["wall_s"],
        # Set-up before the first epoch's clock starts (logged since 2026-11-27).
        **{k: session[k] for k in ("setup_s", "init_s") if k in session},
        **({"launch_to_run_s": round(session["started_at"] - launched, 2)}
           if launched is not None and "started_at" in session else {}),
        # Summed over seeds, from the start (compilation included), as train logs it.
        "env_steps_per_s": last["env_steps_per_s"],
        "final_eval_success_per_seed": last["eval_success_rate"],
        "best_eval_success_per_seed": [max(r["eval_success_rate"][k] for r in records)
                                       for k in range(config.seeds)],
        "curve": [{"env_steps": r["env_steps"], "wall_s": r["wall_s"],
                   "eval_success_rate": r["eval_success_rate"],
                   **{k: r[k] for k in ("eval_return", "train_return") if k in r}}
                  for r in records],
    }
    # Steady state: every epoch but a session's first (compiling) one.
    steady_epochs = [(r, r["env_steps"] - before["env_steps"], r["wall_s"] - before["wall_s"])
                     for before, r in itertools.pairwise(records) if "started_at" not in r]
    if steady_epochs:
        per_seed = (sum(steps for _, steps, _ in steady_epochs)
                    / sum(seconds for _, _, seconds in steady_epochs))
        summary["steady_env_steps_per_s_per_seed"] = per_seed
        summary["steady_updates_per_s_per_seed"] = (
            per_seed * config.updates_per_iteration / config.num_envs)
        summary["first_epoch_s"] = records[0]["wall_s"]
        steady = [r for r, _, _ in steady_epochs if "eval_s" in r]  # logged since 2026-11-27
        if steady:
            train_s, eval_s = (sum(r[k] for r in steady) for k in ("train_s", "eval_s"))
            summary["steady_train_s_per_epoch"] = train_s / len(steady)
            summary["steady_eval_s_per_epoch"] = eval_s / len(steady)
            summary["steady_eval_share"] = eval_s / (train_s + eval_s)
    return summary


def against_reference(summary: dict, reference_steps_per_s: float) -> dict:
    """The run's steady speed against the reference loop's (which trains one seed at a time,
    one world at a time): the ratio of env steps/s over all seeds, and the planned run's time
    both ways: the reference's at its rate, holdjax's as the time logged so far plus the rest
    at the steady rate (a projection where the run was stopped; set-up not included)."""
    planned = summary["planned_env_steps"]
    per_seed = summary.get("steady_env_steps_per_s_per_seed")
    if per_seed is None:
        return {"reference_loop_steps_per_s": reference_steps_per_s}
    left = planned - summary["env_steps_per_seed"]
    return {
        "reference_loop_steps_per_s": reference_steps_per_s,
        "ratio_to_reference_loop_steps_per_s":
            per_seed * summary["seeds"] / reference_steps_per_s,
        "reference_loop_s_for_planned_steps": planned * summary["seeds"] / reference_steps_per_s,
        "projected_wall_s_for_planned_steps": summary["wall_s"] + max(left, 0) / per_seed,
    }


def random_released_checkpoint(config: TrainConfig) -> str:
    """A released-checkpoint folder holding random weights of the size ``config`` names."""
    from fused_step import random_checkpoint

    from holdjax.reward import holdc, holdr
    from holdjax.reward.base import released_holdc_config

    if config.reward == "holdc":
        variables = holdc.random_variables(released_holdc_config(config))
    elif config.reward == "holdr":
        variables = holdr.random_variables(holdr.HoldRConfig(dtype=config.reward_dtype))
    else:
        raise ValueError("--random_reward_weights needs reward holdc or holdr, "
                         f"not {config.reward}")
    return random_checkpoint(variables, tempfile.mkdtemp(prefix=f"{config.reward}_random_"))


def run_until(time_limit: float | None, command: list[str],
              grace: float | None = None) -> None:
    """Runs ``command``; after ``time_limit`` seconds interrupts it (SIGINT), and kills it if
    it has not exited ``grace`` (default STOP_GRACE_S) seconds later. Raises on a failure
    other than that stop."""
    process = subprocess.Popen(command)
    try:
        returncode = process.wait(timeout=time_limit)
    except subprocess.TimeoutExpired:
        print(f"stopping the run at the {time_limit:.0f} s time limit", file=sys.stderr)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_GRACE_S if grace is None else grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return
    if returncode:
        raise subprocess.CalledProcessError(returncode, command)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time_limit", type=float, default=None, help="seconds; stop the run")
    parser.add_argument("--stop_grace", type=float, default=STOP_GRACE_S,
                        help="seconds the stopped run may take to log and checkpoint")
    parser.add_argument("--reference_steps_per_s", type=float, default=None,
                        help="the reference loop's env steps/s (one world, one seed at a "
                             "time) to compare with: adds the ratio and the reference's time")
    parser.add_argument("--metrics", default=None, help="summarise this metrics.jsonl only")
    parser.add_argument("--device", default=None, help="device name for --metrics")
    parser.add_argument("--results", default=None, help="results folder")
    parser.add_argument("--random_reward_weights", action="store_true",
                        help="score with random weights of the released HOLD-C/HOLD-R size: "
                             "a speed figure without the released files (learning is moot)")
    args, train_flags = parser.parse_known_args(argv)
    config, rest = config_from_args(train_flags)
    rest.pop("resume", None)  # holdjax.train's own flag: passed on
    if rest:
        parser.error(f"unknown flags: {', '.join('--' + k for k in rest)}")
    config.validate()

    if args.random_reward_weights:
        train_flags.append(f"--reward_checkpoint={random_released_checkpoint(config)}")
    if args.metrics is None:
        if not config.out:
            train_flags.append(f"--out={tempfile.mkdtemp(prefix='train_run_')}/{config.run_name}")
            config, _ = config_from_args(train_flags)
        launched = time.time()
        run_until(args.time_limit, [sys.executable, "-m", "holdjax.train", *train_flags],
                  args.stop_grace)
        metrics_path = os.path.join(config.out_dir, "metrics.jsonl")
        if not os.path.exists(metrics_path):
            raise SystemExit(f"the run logged no epoch (the first compiles the fused step) "
                             f"within the {args.time_limit} s time limit: nothing to summarise; "
                             f"give it a longer --time_limit or a shorter --epoch_length")
    else:
        metrics_path, launched = args.metrics, None
    summary = summarize(read_metrics(metrics_path), config, launched)
    summary["flags"] = train_flags
    summary["random_reward_weights"] = args.random_reward_weights
    if args.metrics is None:  # a summarised run's limit is not known here
        summary["time_limit_s"] = args.time_limit
    if args.reference_steps_per_s:
        summary.update(against_reference(summary, args.reference_steps_per_s))
    # device names only a machine the figures were measured on elsewhere (--metrics)
    path = write_results(f"train-{config.run_name}", summary, out_dir=args.results,
                         device=args.device)
    print(json.dumps({k: v for k, v in summary.items() if k != "curve"}, indent=1))
    print("wrote", path)
    return summary


if __name__ == "__main__":
    main()
