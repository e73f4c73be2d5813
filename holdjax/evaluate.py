"""Evaluate a saved policy: restore it with orbax and report the environment's success.

    python -m holdjax.evaluate --run=runs/pushing_sparse --episodes=20 --json
    python -m holdjax.evaluate --run=runs/pushing_sparse --step=40 --video=eval.mp4

Deterministic episodes (the policy's mean action), scored by the environment's own success
and sparse reward, never the learned reward; one figure per trained seed and their mean.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np

from holdjax import checkpoint
from holdjax.config import TrainConfig
from holdjax.envs.goal_images import GoalImageError
from holdjax.reward.scenic_checkpoint import CheckpointMismatchError
from holdjax.train import get_trainer
from holdjax.video import check_video_path, write_video


def evaluate_run(run_dir: str, episodes: int, step: int | None = None, seed: int = 12345):
    """(result dict, video frames) for the checkpoint ``step`` (default: latest) of a run.
    Its policy alone is restored and, unless it sees the current subgoal's image, rolled out
    without the run's reward model, which evaluation never scores: a run evaluates where its
    model's weights are not (or would first have to be trained)."""
    config = checkpoint.read_config(run_dir, TrainConfig)
    config = dataclasses.replace(config, eval_episodes=episodes)
    if not config.goal_based_policy:
        config = dataclasses.replace(config, reward="sparse")
    trainer = get_trainer(config)
    state_like = trainer.init_shapes()[0]
    epoch, state, _ = checkpoint.restore(run_dir, state_like, epoch=step,
                                         only=(".sac.actor_params", ".env_steps"))
    keys = trainer.seed_keys(seed)
    stats, frames = trainer.evaluate_policies(state.sac.actor_params, keys)
    per_seed = {k: np.asarray(v).tolist() for k, v in stats.items()}
    result = {
        "run": run_dir,
        "task": config.task,
        "step": epoch,
        "env_steps": int(state.env_steps),
        "episodes": episodes,
        "seeds": config.seeds,
        "success_rate": float(np.mean(per_seed["eval_success_rate"])),
        "success_rate_last": float(np.mean(per_seed["eval_success_rate_last"])),
        "return": float(np.mean(per_seed["eval_return"])),
        "per_seed": per_seed,
    }
    return result, np.asarray(frames)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m holdjax.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory written by holdjax.train")
    parser.add_argument("--step", type=int, default=None, help="checkpoint epoch (default latest)")
    parser.add_argument("--episodes", type=int, default=20,
                        help="episodes per seed (default: %(default)s)")
    parser.add_argument("--video", default=None,
                        help="also write the first episodes (up to 4, of the first seed) side by "
                             "side to this .mp4 or .gif")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (success_rate, return, episodes, step, ...)")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be at least 1")
    if args.video:
        try:
            check_video_path(args.video)
        except ValueError as e:
            parser.error(f"--video: {e}")
    try:
        checkpoint.read_config(args.run, TrainConfig)  # a bad --run or --step is told at once
        checkpoint.existing_epoch(args.run, args.step)
        print(f"evaluating {args.run} ({args.episodes} episodes per seed; the first call "
              "compiles, a minute or more on a CPU)", file=sys.stderr)
        result, frames = evaluate_run(args.run, args.episodes, args.step)
    except (checkpoint.CheckpointError, CheckpointMismatchError, FileNotFoundError,
            GoalImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if args.video:
        result["video"] = write_video(args.video, frames)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['task']} checkpoint {result['step']} ({result['env_steps']} env steps): "
              f"success rate {result['success_rate']:.3f} over {args.episodes} episodes x "
              f"{result['seeds']} seed(s), return {result['return']:.2f}")
        if args.video:
            print(f"video: {result['video']}")
    return result


if __name__ == "__main__":
    main()
