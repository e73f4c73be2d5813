"""Roll out a task's scripted expert or a random policy and report the success rate.

    python -m holdjax.envs --task=pushing --policy=expert --episodes=64 --json
    python -m holdjax.envs --task=drawer_open --policy=random --video=drawer.mp4
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from holdjax import envs
from holdjax.envs.base import check_impl
from holdjax.envs.rollout import expert_policy, random_policy, rollout
from holdjax.video import check_video_path, write_video

VIDEO_WORLDS = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m holdjax.envs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="pushing", help=f"one of {', '.join(envs.TASKS)}")
    parser.add_argument("--policy", default="expert", choices=("expert", "random"))
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--num_envs", type=int, default=None,
                        help="worlds stepped at once (default: min(episodes, 64))")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="std of Gaussian noise added to the expert's actions")
    parser.add_argument("--impl", default="auto", help="MJX physics impl: auto, jax or warp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--video", default=None, help="write an .mp4/.gif of a few episodes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        envs.task_class(args.task)
        check_impl(args.impl)
    except ValueError as e:
        parser.error(str(e))
    if args.episodes < 1:
        parser.error("--episodes must be at least 1")
    if args.num_envs is not None and args.num_envs < 1:
        parser.error("--num_envs must be at least 1")
    if args.noise < 0:
        parser.error(f"--noise is the std of the expert's action noise: >= 0, got {args.noise}")
    if args.video:
        try:
            check_video_path(args.video)
        except ValueError as e:
            parser.error(str(e))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    env = envs.make(args.task, impl=args.impl)
    num_envs = args.num_envs or min(args.episodes, 64)
    policy = expert_policy(env, args.noise) if args.policy == "expert" else random_policy(env)
    frames = min(VIDEO_WORLDS, num_envs) if args.video else 0
    run = jax.jit(lambda key: rollout(env, policy, key, num_envs, frames))

    start = time.perf_counter()
    rounds = math.ceil(args.episodes / num_envs)
    successes, last, returns, video = [], [], [], None
    for key in tqdm(jax.random.split(jax.random.PRNGKey(args.seed), rounds),
                    desc=f"{args.task}/{args.policy}", unit="batch", disable=args.json,
                    file=sys.stderr):
        stats, images = run(key)
        successes.append(np.asarray(stats.success_any))
        last.append(np.asarray(stats.success_last))
        returns.append(np.asarray(stats.episode_return))
        if video is None and frames:
            video = np.asarray(images)
    wall = time.perf_counter() - start
    n = args.episodes
    result = {
        "task": args.task,
        "policy": args.policy,
        "episodes": n,
        "success_rate": float(np.concatenate(successes)[:n].mean()),
        "success_rate_last": float(np.concatenate(last)[:n].mean()),
        "mean_return": float(np.concatenate(returns)[:n].mean()),
        "noise": args.noise,
        "num_envs": num_envs,
        "impl": env.impl,
        "device": jax.devices()[0].device_kind,
        "wall_s": round(wall, 2),
    }
    if args.video:
        result["video"] = write_video(args.video, video)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.task} {args.policy}: success rate {result['success_rate']:.3f} over "
              f"{n} episodes ({result['wall_s']} s, impl={env.impl})")
        if args.video:
            print(f"video: {args.video}")
    return result


if __name__ == "__main__":
    main()
