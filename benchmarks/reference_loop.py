"""The reference's training loop, reproduced in this process: one world, one step at a time.

    python benchmarks/reference_loop.py                      # pushing, HOLD-C, 300 steps
    python benchmarks/reference_loop.py --reward=sparse --steps=100

The reference (TF1 + mujoco_py, SPEC.md) runs, per environment step: the policy on one frame,
MuJoCo's C engine for one control period, one 48x48 camera render through OpenGL, the reward
network on that frame, a host replay insert, and one SAC update on a batch of 256 sampled on
the host and fed to the device. This script does the same with the tools of this repository:

- physics: holdjax's pushing scene (its MJCF) stepped by `mujoco.mj_step` (C engine), the
  hand's mocap target moved and clipped as `holdjax.envs.pushing` does;
- rendering: `mujoco.Renderer` (OpenGL: EGL, else OSMesa, or ``MUJOCO_GL``), 48x48 from
  the task camera, mirrored as the reference's frames are. Where no OpenGL library loads (the
  GPU machines here have no libEGL) ``--renderer=auto`` renders the one world with holdjax's
  MJX renderer instead (pose copied to the device, one jitted render, image copied back);
  ``renderer`` in the results says which ran. That fallback does not favour the reference
  (22 ms a frame on an H100, a whole batched-render launch for one world), so `run_all.py`
  also reports the ratios against this loop with its render free;
- reward: HOLD-C (random weights at the configured size, default ResNet-50 at 256 px) jitted
  at batch 1 against the goal image embedded once, or the sparse success reward;
- policy and update: holdjax's SAC networks and `sac_update`, jitted, fed numpy batches.

Where this differs from the original, the difference favours the reference: holdjax's scene
draws the arm as mocap links instead of simulating the Sawyer's 7 joints, and this loop does
not even move them (less physics per step); it uses 20 substeps of 5 ms (holdjax's choice)
instead of the reference's 50 of 2 ms; JAX dispatches a jitted update with less overhead than
a TF1 ``session.run`` with feed dicts; and `mujoco.Renderer` reuses one GL context, as
mujoco_py's offscreen renderer does. Timing starts after ``--warmup`` steps (compilation).
Writes ``benchmarks/results/reference_loop-<device>.json`` with the parts' mean milliseconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from headless_gl import choose_mujoco_gl  # noqa: E402

choose_mujoco_gl()  # read when mujoco is imported

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from common import add_holdc_arguments, holdc_config, write_results  # noqa: E402

from holdjax import envs  # noqa: E402
from holdjax.envs import make_task, pushing  # noqa: E402
from holdjax.envs.goal_images import load_goal_image  # noqa: E402
from holdjax.reward import holdc  # noqa: E402
from holdjax.sac import networks as sac_networks  # noqa: E402
from holdjax.sac.replay import Transition  # noqa: E402
from holdjax.sac.update import SACConfig, init_sac, networks_for, sac_update  # noqa: E402

PARTS = ("policy", "physics", "render", "reward", "replay", "update")


class OneWorld:
    """holdjax's pushing task on MuJoCo's C engine, one world, as the reference steps it."""

    def __init__(self, rng: np.random.Generator, renderer: str = "auto"):
        self.task = make_task("pushing")
        self.model = self.task.mj_model
        self.data = mujoco.MjData(self.model)
        self.renderer_name, self.render = "opengl", self.render_opengl
        try:
            if renderer == "mjx":
                raise RuntimeError("--renderer=mjx")
            self.renderer = mujoco.Renderer(self.model, *self.task.image_shape)
        except Exception as e:  # no OpenGL here (e.g. MUJOCO_GL=disabled)
            if renderer == "opengl":
                raise RuntimeError(f"mujoco.Renderer is unavailable: {e!r}; try "
                                   "--renderer=mjx or set MUJOCO_GL") from e
            env = envs.make("pushing")
            render_one = jax.jit(lambda qpos, hand: env.render_worlds(qpos[None], hand[None])[0])
            self.renderer_name = "mjx"
            self.render = lambda: np.asarray(render_one(
                jnp.asarray(self.data.qpos), jnp.asarray(self.data.mocap_pos[self.mocap])))
        self.rng = rng
        self.mocap = self.task.hand_target_mocap
        self.puck = self.task.puck_qpos
        self.low, self.high = np.asarray(pushing.HAND_LOW), np.asarray(pushing.HAND_HIGH)

    def reset(self) -> np.ndarray:
        mujoco.mj_resetData(self.model, self.data)
        x = self.rng.uniform(-pushing.PUCK_START_X_RANGE, pushing.PUCK_START_X_RANGE)
        self.data.qpos[self.puck:self.puck + 7] = [x, pushing.PUCK_START_Y,
                                                   pushing.PUCK_HALF_HEIGHT, 1, 0, 0, 0]
        self.data.mocap_pos[self.mocap] = np.asarray(pushing.HAND_START)
        mujoco.mj_forward(self.model, self.data)
        return self.render()

    def step(self, action: np.ndarray) -> None:
        target = self.data.mocap_pos[self.mocap] + pushing.ACTION_SCALE * np.array(
            [action[0], action[1], 0.0])
        self.data.mocap_pos[self.mocap] = np.clip(target, self.low, self.high)
        for _ in range(self.task.substeps):
            mujoco.mj_step(self.model, self.data)

    def render_opengl(self) -> np.ndarray:
        self.renderer.update_scene(self.data, camera=self.task.camera)
        return np.ascontiguousarray(self.renderer.render()[:, ::-1])  # mirrored, as the reference

    def success(self) -> bool:
        puck = self.data.qpos[self.puck:self.puck + 2]
        return float(np.abs(puck - np.asarray(pushing.GOAL)).sum()) < pushing.SUCCESS_L1


class HostReplay:
    """The reference's replay pool: numpy arrays on the host, uniform sampling."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], action_dim: int):
        self.obs = np.zeros((capacity, *obs_shape), np.uint8)
        self.next_obs = np.zeros_like(self.obs)
        self.action = np.zeros((capacity, action_dim), np.float32)
        self.reward = np.zeros((capacity,), np.float32)
        self.done = np.zeros((capacity,), np.float32)
        self.size = self.index = 0

    def add(self, obs, action, reward, next_obs) -> None:
        i = self.index
        self.obs[i], self.action[i], self.reward[i], self.next_obs[i] = (
            obs, action, reward, next_obs)
        self.index = (i + 1) % len(self.obs)
        self.size = min(self.size + 1, len(self.obs))

    def sample(self, rng: np.random.Generator, batch_size: int) -> Transition:
        idx = rng.integers(0, self.size, batch_size)
        return Transition(obs=self.obs[idx], action=self.action[idx], reward=self.reward[idx],
                          next_obs=self.next_obs[idx], done=self.done[idx])


def reward_model(args, goal: np.ndarray):
    """frame (H, W, 3) uint8 -> reward: minus the HOLD-C distance, or the sparse success."""
    if args.reward == "sparse":
        return None
    config = holdc_config(args)
    model = holdc.HoldCDistance(config, holdc.random_variables(config))
    to_goal = jax.jit(model.to_goals(jnp.asarray(goal[None])))
    return lambda frame: -float(to_goal(jnp.asarray(frame[None]))[0, 0])


def run(args) -> dict:
    rng = np.random.default_rng(0)
    world = OneWorld(rng, args.renderer)
    reward_of = reward_model(args, load_goal_image("pushing"))
    sac_config = SACConfig(batch_size=args.batch_size)
    obs_shape = (*world.task.image_shape, 3)
    actor = networks_for(sac_config, world.task.action_dim, from_pixels=True).actor
    sac = init_sac(jax.random.key(0), obs_shape, world.task.action_dim, sac_config)
    update = jax.jit(sac_update, static_argnums=3)
    act = jax.jit(lambda params, frame, key: sac_networks.sample_action(
        actor, params, frame[None].astype(jnp.float32) / 255.0, key)[0][0])
    replay = HostReplay(args.warmup + args.steps + 1, obs_shape, world.task.action_dim)

    seconds = dict.fromkeys(PARTS, 0.0)
    obs, key = world.reset(), jax.random.key(1)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            seconds = dict.fromkeys(PARTS, 0.0)
            start = time.perf_counter()
        marks = [time.perf_counter()]
        key, act_key, update_key = jax.random.split(key, 3)
        action = np.asarray(act(sac.actor_params, jnp.asarray(obs), act_key))
        marks.append(time.perf_counter())
        world.step(action)
        marks.append(time.perf_counter())
        next_obs = world.render()
        marks.append(time.perf_counter())
        reward = float(world.success()) if reward_of is None else reward_of(next_obs)
        marks.append(time.perf_counter())
        replay.add(obs, action, reward, next_obs)
        batch = replay.sample(rng, args.batch_size)
        marks.append(time.perf_counter())
        sac, metrics = update(sac, batch, update_key, sac_config)
        float(metrics["critic_loss"])  # the reference's session.run returns its losses
        marks.append(time.perf_counter())
        for part, t0, t1 in zip(PARTS, marks[:-1], marks[1:], strict=True):
            seconds[part] += t1 - t0
        obs = next_obs
        if (step + 1) % world.task.episode_length == 0:
            obs = world.reset()
    wall = time.perf_counter() - start
    return {
        "task": "pushing",
        "reward": args.reward,
        "steps": args.steps,
        "env_steps_per_s": args.steps / wall,
        "parts_ms": {part: 1e3 * s / args.steps for part, s in seconds.items()},
        "mujoco_gl": os.environ["MUJOCO_GL"],
        "renderer": world.renderer_name,
        "batch_size": args.batch_size,
        "holdc": None if reward_of is None else {
            "layers": args.holdc_layers, "filters": args.holdc_filters,
            "crop_size": args.holdc_crop_size, "dtype": args.reward_dtype},
    }


def main(argv: list[str] | None = None) -> dict:
    gpu = jax.default_backend() == "gpu"
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward", choices=("holdc", "sparse"), default="holdc")
    parser.add_argument("--steps", type=int, default=300 if gpu else 20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=20 if gpu else 3)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--renderer", choices=("auto", "opengl", "mjx"), default="auto",
                        help="auto: mujoco.Renderer (OpenGL) when it loads, else holdjax's MJX")
    add_holdc_arguments(parser)
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    result = run(args)
    print(f"reference loop, pushing, reward {args.reward}, {result['renderer']} renderer: "
          f"{result['env_steps_per_s']:.1f} env steps/s; ms per step: "
          + ", ".join(f"{k} {v:.2f}" for k, v in result["parts_ms"].items()), flush=True)
    print("wrote", write_results("reference_loop", result, out_dir=args.out))
    return result


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before argparse picks device defaults
    main()
