"""Scores a reward model on freshly rendered episodes of its task.

    python -m holdjax.reward.check --task=pushing                  # HOLD-C, as training picks it
    python -m holdjax.reward.check --task=pushing --model=PATH --json
    python -m holdjax.reward.check --task=pushing --reward=l2      # the pixel baseline
    python -m holdjax.reward.check --config=fig5b_drawer_l2        # as that run's reward

``--reward`` (``holdc``, ``holdr``, ``r3m`` or ``l2``) and ``--model`` pick the model as
``python -m holdjax.train --reward=... --reward_checkpoint=...`` does: for HOLD-C a released
scenic checkpoint (a ``checkpoint_<step>`` file or its folder) or a model directory written by
``holdjax.reward.train``; without ``--model`` the released checkpoint under
``$HOLD_TOP_DIR``, else the task's default demo-trained model (trained first if missing).
The model's raw output is scored (its distance, or HOLD-R's predicted time to the goal,
which sees each frame with the two before it, the first repeated at an episode's start, as
in training). ``--config`` builds the reward with a run's settings (model size, distance,
normaliser, subtask threshold and hold steps; default: the settings ``--task`` plus
``--reward`` train with, those of the reference's run of them where it has one). Spearman
rank correlations, positive for a good model (1 = perfect ranking; the reward is the negated
distance, so it correlates negatively):

- ``spearman_time``: on held-out expert episodes (varied starts as in training, another
  seed, then the noise-free expert at full speed), between the model's distance to the
  task's final goal image and the true number of steps left until the first success, over
  the expert's frames up to it; per episode, averaged over the episodes that succeed (as
  hold-rewards' per-video metric).
- ``spearman_time_subgoals`` (tasks with several goal images, e.g. ``drawer_open``, whose
  reward scores each world against its current subgoal image): per subgoal k, the same
  correlation between the distance to image k and the steps left until the state first
  satisfies subgoal k (``EnvState.subgoal >= k``), over the expert's frames from when it
  first satisfied subgoal k - 1 (its start for the first); the fair test of such a task,
  since its frames before subgoal k - 1 are scored against another image.
- ``spearman_state``: on random-policy frames from varied states (each world follows the
  expert for U{0..T} steps, then acts uniformly at random; only the random phase's frames
  count), between the model's distance to the goal image and the true distance of the
  task's object (``OBJECT_JOINTS``) to its pose in the goal image, pooled over frames.
- ``subtask_switch_share`` and ``subtask_switch_lead_steps`` (tasks with several goal
  images): per intermediate goal image, the share of the held-out expert episodes that reach
  it in which the reward's subtask (the shaping's threshold and hold steps: the
  ``--config``'s, else training's for the task and reward, with ``use_subtasks`` on)
  moves past it, and the
  median number of steps by which that switch precedes the state first satisfying the
  subgoal (negative: after). A switch that never comes leaves the policy scored against a
  reached image.
- ``goal_pose_below_success`` (0 is best): the share of frames showing the held-out expert
  episodes' start scenes with only the hand moved to the final goal image's hand pose (and
  to 8 poses 4 cm around it) that the model scores closer to that goal image than the median
  of the experts' first-success frames. A model that reads the hand more than the task's
  object scores such frames as solved, and a policy can then hold its hand there instead
  of solving the task (benchmarks/NOTES.md, pushing).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from holdjax import envs
from holdjax.config import TrainConfig, config_from_args, load_config
from holdjax.envs.base import ManipulationEnv
from holdjax.reward import shaping
from holdjax.reward import train as reward_train
from holdjax.reward.base import DISTANCE_REWARDS, RewardFunction, make_reward
from holdjax.reward.train import in_chunks

# The object whose distance to its goal pose is each task's true progress: (joint, number
# of leading qpos coordinates compared), e.g. the mug's x, y on the table.
OBJECT_JOINTS = {
    "pushing": ("puck", 2),
    "drawer_open": ("drawer_slide", 1),
    "close_drawer": ("drawer_slide", 1),
    "cup_forward": ("mug", 2),
    "faucet_right": ("faucet_hinge", 1),
}
# Hand offsets (metres) around the goal image's hand pose for goal_pose_below_success.
GOAL_POSE_OFFSETS = np.array([[dx, dy, 0.0] for dx in (-0.04, 0.0, 0.04)
                              for dy in (-0.04, 0.0, 0.04)], np.float32)
CHECK_STREAM = 2  # random stream of the check's episodes, unused by training


def rank(x: np.ndarray) -> np.ndarray:
    """0-based ranks of a 1-D array, ties sharing their mean rank."""
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    return (starts + (counts - 1) / 2.0)[inverse.reshape(-1)]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson's of the ranks); NaN if either is constant."""
    rx, ry = rank(x), rank(y)
    if rx.shape != ry.shape:
        raise ValueError(f"spearman of different lengths {rx.shape} and {ry.shape}")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt(np.sum(rx * rx) * np.sum(ry * ry))
    return float(np.sum(rx * ry) / denominator) if denominator > 0 else float("nan")


def object_to_goal(env: ManipulationEnv, qpos: np.ndarray) -> np.ndarray:
    """Distance of the task's object to its pose in the final goal image, per frame."""
    name = env.task.name
    if name not in OBJECT_JOINTS:
        raise ValueError(f"no object defined for task {name!r} in OBJECT_JOINTS; "
                         f"known: {', '.join(OBJECT_JOINTS)}")
    joint, dims = OBJECT_JOINTS[name]
    model = env.task.mj_model
    adr = int(model.jnt_qposadr[model.joint(joint).id])
    goal_qpos, _ = list(env.task.goal_worlds().values())[-1]
    goal = np.asarray(goal_qpos)[adr:adr + dims]
    return np.linalg.norm(qpos[..., adr:adr + dims] - goal, axis=-1)


def distances_to_goals(reward_fn: RewardFunction, frames: np.ndarray) -> np.ndarray:
    """The reward model's distance (E, T, G) of every frame of the episodes ``frames``
    (E, T, H, W, 3) to each of its goal images. A history model (HOLD-R) sees at step t the
    features of steps t - L + 1 .. t, its reset frame standing in for steps before it, as
    ``RewardFunction`` keeps them in training."""
    episodes, length = frames.shape[:2]
    flat = frames.reshape(-1, *frames.shape[2:])
    if reward_fn.history is None:
        return in_chunks(reward_fn.distance, flat).reshape(episodes, length, -1)
    history_length = reward_fn.history.length
    features = in_chunks(reward_fn.history.features, flat).reshape(episodes, length, -1)
    steps = np.arange(length)[:, None] - history_length + 1 + np.arange(history_length)
    histories = features[:, np.maximum(steps, 0)]  # (E, T, L, F)
    return in_chunks(reward_fn.distance, histories.reshape(-1, *histories.shape[2:])
                     ).reshape(episodes, length, -1)


def time_to_reach(distance: np.ndarray, reached: np.ndarray,
                  begin: np.ndarray) -> tuple[float, int]:
    """(mean over episodes, episodes scored) of the Spearman correlation between
    ``distance`` (E, T) and the steps left until ``reached`` (E, T) first holds, over each
    episode's frames from ``begin`` (E,) up to that step; an episode counts if it gets
    there at least two steps after ``begin``."""
    per_episode = []
    for d, r, b in zip(distance, reached, begin, strict=True):
        first = int(np.argmax(r[b:])) + b
        if r[b:].any() and first - b >= 2:
            per_episode.append(spearman(d[b:first + 1], first - np.arange(b, first + 1)))
    return (float(np.mean(per_episode)) if per_episode else float("nan")), len(per_episode)


@functools.cache
def _world_renderer(env: ManipulationEnv):
    """One compiled ``render_worlds`` per env, as training's rollouts are (a compile costs
    tens of seconds on a CPU)."""
    return jax.jit(env.render_worlds)


def goal_pose_frames(env: ManipulationEnv, qpos: np.ndarray, num_envs: int) -> np.ndarray:
    """Renders of the scenes ``qpos`` (E, nq) with the hand moved to the final goal image's
    hand pose plus each of ``GOAL_POSE_OFFSETS`` (K): (E * K, H, W, 3), scene-major."""
    *_, (_, goal_hand) = env.task.goal_worlds().values()
    hands = jnp.asarray(goal_hand)[None] + GOAL_POSE_OFFSETS  # (K, 3)
    scenes = np.repeat(np.asarray(qpos), len(hands), axis=0)
    hands = jnp.tile(hands, (len(qpos), 1))
    posed = jax.vmap(env.task.place_hand)(jnp.asarray(scenes), hands)
    return in_chunks(_world_renderer(env), np.asarray(posed), np.asarray(hands), chunk=num_envs)


def _check_scripts(key: jax.Array, experts: int, randoms: int,
                   episode_length: int) -> reward_train.Script:
    """``experts`` worlds that start as the training demonstrations do (up to
    ``max_random_start`` random actions), then run the noise-free expert at full speed;
    then ``randoms`` worlds that run that expert for U{0..T} steps and act at random after."""
    start_key, switch_key = jax.random.split(key)
    n = experts + randoms
    is_expert = jnp.arange(n) < experts
    starts = jax.random.randint(start_key, (n,), 0,
                                reward_train.RewardTrainConfig.max_random_start + 1)
    switches = jax.random.randint(switch_key, (n,), 0, episode_length + 1)
    return reward_train.Script(
        random_until=jnp.where(is_expert, starts, 0).astype(jnp.int32),
        expert_until=jnp.where(is_expert, episode_length, switches).astype(jnp.int32),
        speed=jnp.ones((n,)), noise=jnp.zeros((n,)), action_hold=jnp.ones((n,), jnp.int32),
        start_hand=jnp.zeros((n, 3)), from_start_hand=jnp.zeros((n,), bool))


def reward_for(task: str, reward: str, model: str = "",
               run: TrainConfig | None = None) -> RewardFunction:
    """The reward ``reward`` of ``task`` with its distance model loaded from ``model`` (as
    train's ``--reward_checkpoint``; "" = where training looks), built as training builds it:
    with ``run``'s reward settings (a `--config`'s: model size, distance, normaliser,
    subtask threshold and hold steps) where given, else those ``--task`` and ``--reward``
    train with (`config_from_args`)."""
    base = run or config_from_args([f"--task={task}", f"--reward={reward}"])[0]
    config = dataclasses.replace(base, task=task, reward=reward,
                                 reward_checkpoint=model or base.reward_checkpoint)
    return make_reward(config, reward_train.task_env(task))


def evaluate(reward_fn: RewardFunction, env: ManipulationEnv, episodes: int = 32,
             random_episodes: int = 32, num_envs: int = 64, seed: int = 1) -> dict:
    """spearman_time and spearman_state of ``reward_fn``'s model (see the module docstring)."""
    key = jax.random.fold_in(jax.random.key(seed), CHECK_STREAM)
    script_key, render_key = jax.random.split(key)
    script = _check_scripts(script_key, episodes, random_episodes, env.episode_length)
    footage = reward_train.render_footage(env, script, render_key, num_envs, crop=False,
                                          desc=f"{env.task.name}: rendering check episodes")
    posed = goal_pose_frames(env, footage.qpos[:episodes, 0], num_envs)
    return score(reward_fn, env, footage, jax.device_get(script), episodes, posed)


def score(reward_fn: RewardFunction, env: ManipulationEnv, footage: reward_train.Footage,
          script: reward_train.Script, episodes: int,
          goal_pose: np.ndarray | None = None) -> dict:
    """The metrics on ``footage`` (whole camera frames) of :func:`_check_scripts`'s worlds,
    and ``goal_pose_below_success`` on ``goal_pose`` (:func:`goal_pose_frames`) if given."""
    num_goals = reward_fn.num_goals
    dist = distances_to_goals(reward_fn, footage.frames)
    final = dist[..., -1]
    starts = np.asarray(script.random_until[:episodes])
    spearman_time, scored = time_to_reach(final[:episodes], footage.success[:episodes], starts)
    switch = script.expert_until[episodes:]
    random_phase = np.arange(dist.shape[1])[None, :] > switch[:, None]
    true_distance = object_to_goal(env, footage.qpos[episodes:])
    result = {
        "spearman_time": spearman_time,
        "spearman_state": spearman(final[episodes:][random_phase], true_distance[random_phase]),
        "expert_episodes": episodes,
        "expert_episodes_scored": scored,
        "state_frames": int(random_phase.sum()),
    }
    succeeded = footage.success[:episodes].any(axis=1)
    if goal_pose is not None and succeeded.any():
        first = footage.success[:episodes].argmax(axis=1)
        solved = np.median(final[:episodes][succeeded, first[succeeded]])
        posed = distances_to_goals(reward_fn, goal_pose[:, None])[:, 0, -1]
        result.update(goal_pose_below_success=float(np.mean(posed < solved)),
                      goal_pose_distance_median=float(np.median(posed)),
                      first_success_distance_median=float(solved))
    if num_goals > 1:
        subgoal = np.asarray(footage.subgoal[:episodes])
        per_subgoal = []
        for k in range(1, num_goals + 1):
            previous = subgoal >= k - 1
            begin = np.where(previous.any(axis=1), previous.argmax(axis=1), 0)
            per_subgoal.append(time_to_reach(dist[:episodes, :, k - 1], subgoal >= k,
                                             np.maximum(begin, starts)))
        result["spearman_time_subgoals"] = [value for value, _ in per_subgoal]
        result["expert_episodes_scored_subgoals"] = [count for _, count in per_subgoal]
        switched = subtask_switches(reward_fn, dist[:episodes])
        reached_at = reward_train.first_reach(subgoal, episodes, num_goals)
        shares, leads = [], []
        for k in range(num_goals - 1):
            reached = reached_at[:, k] >= 0
            both = reached & (switched[:, k] >= 0)
            lead = reached_at[:, k] - switched[:, k]
            shares.append(float(both.sum() / max(reached.sum(), 1)))
            leads.append(float(np.median(lead[both])) if both.any() else float("nan"))
        result.update(subtask_switch_share=shares, subtask_switch_lead_steps=leads)
    return result


def subtask_switches(reward_fn: RewardFunction, dist: np.ndarray) -> np.ndarray:
    """(E, G - 1) the step at which the reward's subtask first moves past each intermediate
    goal image (-1: never) over episodes of distances ``dist`` (E, T + 1, G) from their reset
    frames on: the shaping's own state machine (`shaping.shape_reward`, subtasks on) run
    along the frames after the reset, as training scores them (never the reset frame)."""
    config = dataclasses.replace(reward_fn.config, use_subtasks=True)
    dist = np.asarray(dist)[:, 1:]
    episodes, _, num_goals = dist.shape

    def step(state, distances):
        _, state, _ = shaping.shape_reward(config, distances, reward_fn.baselines,
                                           jnp.zeros(episodes), state)
        return state, state.subtask

    _, subtask = jax.lax.scan(step, shaping.init_shaping(config, episodes, num_goals),
                              jnp.swapaxes(jnp.asarray(dist), 0, 1))
    # Moving past goal image k is reaching subtask k + 1: first_reach's question (counted
    # from the frame after the reset, so one step on in the episode's frames).
    switched = reward_train.first_reach(np.asarray(subtask).T, episodes, num_goals - 1)
    return np.where(switched >= 0, switched + 1, -1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m holdjax.reward.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="score the reward as this run trains with it (configs/NAME.py): "
                             "its task, reward and settings, e.g. the subtask threshold and "
                             "hold steps that the switch metrics use (default: the defaults)")
    parser.add_argument("--task", default=None,
                        help=f"one of {', '.join(envs.TASKS)} (default: the config's, or pushing)")
    parser.add_argument("--reward", default=None, choices=DISTANCE_REWARDS,
                        help="the model to score (default: the config's, or holdc)")
    parser.add_argument("--model", "--reward_checkpoint", dest="model", default="",
                        help="its weights, as train's --reward_checkpoint (default: where "
                             "training looks; for holdc the task's default demo-trained model "
                             "when no released checkpoint is there)")
    parser.add_argument("--episodes", type=int, default=32, help="held-out expert episodes")
    parser.add_argument("--random_episodes", type=int, default=32,
                        help="episodes whose random phase gives the state frames")
    parser.add_argument("--num_envs", type=int, default=64, help="worlds rendered at once")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    args.run = None
    if args.config:
        try:
            args.run = load_config(args.config)
        except ValueError as e:
            parser.error(str(e))
        if args.run.reward not in DISTANCE_REWARDS and args.reward is None:
            parser.error(f"config {args.config}'s reward {args.run.reward!r} has no distance "
                         f"model to score; pass --reward (one of {', '.join(DISTANCE_REWARDS)})")
    args.task = args.task or (args.run.task if args.run else "pushing")
    args.reward = args.reward or (args.run.reward if args.run else "holdc")
    try:
        envs.task_class(args.task)
    except ValueError as e:
        parser.error(str(e))
    if args.task not in OBJECT_JOINTS:
        parser.error(f"no object defined for task {args.task!r} (holdjax.reward.check."
                     "OBJECT_JOINTS)")
    for name in ("episodes", "random_episodes", "num_envs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.model and args.reward == "l2":
        parser.error("--model does not apply to --reward=l2, which has no weights")
    if args.model and not os.path.exists(args.model):
        parser.error(f"no model at {args.model}; for holdc train one with "
                     f"`python -m holdjax.reward.train --task={args.task} --out={args.model}`")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        reward_fn = reward_for(args.task, args.reward, args.model, args.run)
    except (FileNotFoundError, ValueError) as e:  # missing weights, mismatched checkpoint
        sys.exit(f"python -m holdjax.reward.check: error: {e}")
    source = os.path.abspath(reward_fn.source) if reward_fn.source else None
    result = {"task": args.task, "reward": args.reward, "model": source,
              **({"config": args.config} if args.config else {})}
    result.update(evaluate(reward_fn, reward_train.task_env(args.task), args.episodes,
                           args.random_episodes, args.num_envs, args.seed))
    result.update(seed=args.seed, wall_s=round(time.perf_counter() - start, 1))
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name}: {value}")
    return result


if __name__ == "__main__":
    main()
