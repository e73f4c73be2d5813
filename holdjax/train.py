"""Image-based SAC with physics, rendering, reward, replay and updates fused on the device.

    python -m holdjax.train --task=pushing                     # the main job
    python -m holdjax.train --config=fig3a_pushing_sac --seeds=5
    python -m holdjax.train --out=runs/pushing_sparse --resume

One *iteration* steps every world once and then runs ``updates_per_step * num_envs``
gradient updates; an *epoch* is a jitted ``lax.scan`` of iterations covering
``epoch_length`` environment steps per seed, with no host round trip inside. K seeds train
in one program: the environment runs K x N worlds as one batch (one render call) and the
learner is vmapped over the seed axis. Between epochs the host evaluates, logs, writes
checkpoints and videos; with ``eval_batch`` > 1 it evaluates the policies of that many
epochs in one batched rollout after the last of them. Ctrl-C or SIGTERM stops a run after
its epoch with a checkpoint (a second Ctrl-C at once); ``--resume`` continues it.

Seeds are split over all visible devices (one seed's worlds instead, when there is one
seed: every device steps, renders and scores its worlds and keeps their transitions, and runs
the same updates on batches drawn from all of them), and over several processes (hosts)
when launched as one job: every process runs this same command with
``JAX_COORDINATOR_ADDRESS`` (process 0's host:port), ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID`` set (under Slurm or Open MPI, the address alone), and process 0 writes the
logs, videos and config that the others skip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import json
import math
import os
import shutil
import signal
import sys
import textwrap
import threading
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import multihost_utils
from tqdm import tqdm

from holdjax import checkpoint, envs
from holdjax.config import (
    TrainConfig,
    config_from_args,
    field_help,
    parse_value,
    reference_config_name,
)
from holdjax.envs.base import EnvState, ManipulationEnv, overflow_kinds, physics_overflow
from holdjax.envs.goal_images import GoalImageError
from holdjax.plot import drop_unfinished_line, plot_runs, read_metrics
from holdjax.reward import RewardFunction, make_reward
from holdjax.reward.base import DISTANCE_REWARDS, RewardSettingsError, RewardState
from holdjax.reward.scenic_checkpoint import CheckpointMismatchError
from holdjax.sac import networks as sac_networks
from holdjax.sac.replay import (
    ReplayBuffer,
    Transition,
    init_replay,
    insert,
    is_image_shape,
    replay_nbytes,
    stored_obs_to_float,
)
from holdjax.sac.update import SACState, init_sac, networks_for, sampled_updates

VIDEO_WORLDS = 4
# How the programs split their arrays over devices: seeds on the leading axis, or, for
# outputs per fused step (or per evaluated epoch), on the second. One seed's worlds split
# instead (`Trainer`) lie on the leading axis of the worlds' state, the third of the replay's.
SEED_AXIS = jax.sharding.PartitionSpec("seeds")
PER_STEP_SEED_AXIS = jax.sharding.PartitionSpec(None, "seeds")
WORLD_AXIS = jax.sharding.PartitionSpec("worlds")
PER_STEP_WORLD_AXIS = jax.sharding.PartitionSpec(None, "worlds")
SAME = jax.sharding.PartitionSpec()


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


class ReplayTooLarge(MemoryError):
    """The replay buffers would not fit in the device's free memory."""


@struct.dataclass
class TrainState:
    """Everything that evolves during training; seeds on the leading axis of learner parts."""

    sac: SACState  # (K, ...)
    env: EnvState  # (K * N, ...) worlds, seed-major
    reward: RewardState  # (K * N,) worlds
    episode_return: jax.Array  # (K * N,) training reward summed over the current episode
    key: jax.Array  # (K, 2) per-seed PRNG keys
    env_steps: jax.Array  # () environment steps taken per seed


# How `init` (and so every restore target) lays the training state and replay buffers out over
# several devices: each seed's on its device, the step count on all; or, with one seed's
# worlds split, each device's worlds and their replay columns on it, the learner on all.
INIT_SPECS = {
    "seeds": (TrainState(sac=SEED_AXIS, env=SEED_AXIS, reward=SEED_AXIS,
                         episode_return=SEED_AXIS, key=SEED_AXIS, env_steps=SAME), SEED_AXIS),
    "worlds": (TrainState(sac=SAME, env=WORLD_AXIS, reward=WORLD_AXIS,
                          episode_return=WORLD_AXIS, key=SAME, env_steps=SAME),
               ReplayBuffer(**dict.fromkeys(("frames", "last_frames", "action", "reward", "done"),
                                            jax.sharding.PartitionSpec(None, None, "worlds")),
                            **dict.fromkeys(("last_slot", "cursor", "size", "episodes"), SAME))),
}


@dataclasses.dataclass
class PendingEpoch:
    """A trained epoch waiting for its evaluation (`TrainConfig.eval_batch`)."""

    epoch: int
    summary: dict
    env_steps: int
    policy: chex.ArrayTree  # the actor's parameters after the epoch, (K, ...)
    eval_keys: jax.Array  # (K, 2)
    train_s: float
    trained: float  # perf_counter() at the end of its training


def over_seeds(fn, num_seeds: int):
    """``fn`` mapped over the leading seed axis of its arguments and results: vmapped, or
    with one seed the axis indexed away and put back, since XLA:CPU runs a state-based
    update 3-7% slower as a batch-1 vmap than as plain matmuls (benchmarks/NOTES.md)."""
    if num_seeds > 1:
        return jax.vmap(fn)

    def one_seed(*args):
        out = fn(*jax.tree.map(lambda x: x[0], args))
        return jax.tree.map(lambda x: x[None], out)

    return one_seed


class Trainer:
    """The jitted pieces of one run, built from its config."""

    def __init__(self, config: TrainConfig, num_devices: int = 1):
        self.config = config.validate()
        self.num_devices = num_devices
        # Over several devices each trains its share of the seeds, or, for one seed (whose
        # learner cannot be split), its share of the worlds (`device_split`).
        self.split = device_split(config, num_devices)
        # State-based runs render only when the reward scores images (and for eval videos).
        self.env = ManipulationEnv(
            envs.make_task(config.task), impl=config.impl,
            device_axis=(self.split, num_devices) if num_devices > 1 else None,
            render_obs=config.observation == "pixels" or config.reward in DISTANCE_REWARDS)
        self.reward_fn: RewardFunction = make_reward(config, self.env)
        # Per device: its seeds and, of each, its worlds.
        self.num_seeds = config.seeds // num_devices if self.split == "seeds" else config.seeds
        self.num_envs = (config.num_envs // num_devices if self.split == "worlds"
                         else config.num_envs)
        self.init_specs = INIT_SPECS[self.split]
        # Keys made on the host: one per seed (init), or per epoch and seed (evaluation).
        self.seed_key_spec = SEED_AXIS if self.split == "seeds" else SAME
        self.eval_key_spec = PER_STEP_SEED_AXIS if self.split == "seeds" else SAME
        self.obs_shape = policy_obs_shape(config)
        self.action_dim = self.env.action_dim
        self.networks = networks_for(config.sac, self.action_dim, is_image_shape(self.obs_shape))
        self.min_replay = config.min_replay
        init, train_epoch, evaluate = self._init_seeds, self._train_epoch, self._evaluate
        self.mesh = None
        if num_devices > 1:
            self.mesh = jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), (self.split,))
            init, train_epoch, evaluate = self._across_devices(init, train_epoch, evaluate)
        self._init = jax.jit(init)
        self.train_epoch = jax.jit(train_epoch, donate_argnums=(0, 1))
        self.evaluate = jax.jit(evaluate)

    def _across_devices(self, init, train_epoch, evaluate):
        """Seeds are independent: each device runs the whole fused step on its own seeds
        (its own physics, renderer, replay and learner) with no communication at all.
        Worlds of one seed: each device steps, renders and scores its own worlds and keeps
        their transitions; the policy acts on all worlds' observations, each update's batch
        is drawn over all worlds and assembled on every device, and every device runs the
        same updates (and evaluations): the run of one device, with the worlds' work split."""
        mesh, specs = self.mesh, self.init_specs
        if self.split == "seeds":
            per_step = PER_STEP_SEED_AXIS
            outputs = {"updated": SAME, **{name: per_step for name in (
                "finished", "train_return", "train_success", "overflow_episodes",
                "overflow_bits", *self._metric_shapes)}}
            evaluated = (per_step, per_step)
        else:
            outputs = {name: SAME for name in (
                "updated", "overflow_episodes", "overflow_bits", *self._metric_shapes)}
            outputs.update(dict.fromkeys(("finished", "train_return", "train_success"),
                                         PER_STEP_WORLD_AXIS))
            evaluated = (SAME, SAME)
        train_epoch = jax.shard_map(train_epoch, mesh=mesh, in_specs=specs,
                                    out_specs=(*specs, outputs), check_vma=False)
        evaluate = jax.shard_map(evaluate, mesh=mesh, in_specs=evaluated, out_specs=evaluated,
                                 check_vma=False)
        init = jax.shard_map(init, mesh=mesh, in_specs=self.seed_key_spec, out_specs=specs,
                             check_vma=False)
        return init, train_epoch, evaluate

    # ---- one seed's worlds over several devices ---------------------------------------------
    def _own_worlds(self, x: jax.Array, axis: int = 0) -> jax.Array:
        """This device's share of ``x``'s worlds (axis ``axis``: all N) when one seed's
        worlds are split; ``x`` otherwise."""
        if self.split != "worlds":
            return x
        start = jax.lax.axis_index("worlds") * self.num_envs
        return jax.lax.dynamic_slice_in_dim(x, start, self.num_envs, axis)

    def _all_worlds(self, x: jax.Array, axis: int = 0) -> jax.Array:
        """Every device's worlds of ``x`` (axis ``axis``: this device's) in order, when one
        seed's worlds are split; ``x`` otherwise."""
        if self.split != "worlds":
            return x
        return jax.lax.all_gather(x, "worlds", axis=axis, tiled=True)

    # ---- state -------------------------------------------------------------------------
    def seed_keys(self, seed: int) -> jax.Array:
        """(K, 2) root keys of all seeds: seed k of a run is seed ``seed + k`` of a one-seed
        run, whatever the number of seeds or devices."""
        return jax.vmap(jax.random.PRNGKey)(seed + jnp.arange(self.config.seeds))

    def eval_keys(self, seed: int, epoch: int) -> jax.Array:
        """(K, 2) keys of the evaluation after epoch ``epoch`` (from 0): each seed's own
        stream, apart from its training's, so that evaluating never changes training."""
        streams = jax.vmap(lambda k: jax.random.fold_in(k, 1 << 20))(self.seed_keys(seed))
        return jax.vmap(jax.random.fold_in, in_axes=(0, None))(streams, epoch)

    def placed(self, x: jax.Array, spec: jax.sharding.PartitionSpec) -> jax.Array:
        """``x``, computed alike by every process, as one array split over the training
        devices by ``spec`` (unchanged on one device): how keys made on the host enter the
        programs, which in a multi-process job span devices that no one process holds."""
        if self.mesh is None:
            return x
        x = np.asarray(x)
        return jax.make_array_from_callback(
            x.shape, jax.sharding.NamedSharding(self.mesh, spec), lambda index: x[index])

    def init(self, seed: int) -> tuple[TrainState, ReplayBuffer]:
        """Initial state of all seeds, placed on the devices that train them."""
        state, replay = self._init(self.placed(self.seed_keys(seed), self.seed_key_spec))
        # Leaves may share buffers (target = critic params; empty obs = next_obs), which
        # the epoch's buffer donation forbids: give every leaf its own. Committed to its
        # devices, like a restored checkpoint's arrays, so that a fresh and a resumed run
        # call one compiled epoch (jit compiles again for committed arguments).
        return jax.tree.map(lambda x: jax.device_put(x, x.sharding, may_alias=False),
                            (state, replay))

    def init_shapes(self) -> tuple[TrainState, ReplayBuffer]:
        """Shapes, dtypes and (over several devices) shardings of `init`'s result without
        computing it: restore targets that put a checkpoint where this trainer runs."""
        shapes = jax.eval_shape(self._init, self.seed_keys(0))
        if self.mesh is None:
            return shapes

        def split_by(spec, subtree):
            sharding = jax.sharding.NamedSharding(self.mesh, spec)
            return jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), subtree)

        return jax.tree.map(split_by, self.init_specs, shapes,
                            is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))

    def _init_seeds(self, seed_keys: jax.Array) -> tuple[TrainState, ReplayBuffer]:
        split = jax.vmap(lambda k: jax.random.split(k, 3))(seed_keys)  # (K, 3, 2)
        init_keys, env_keys, run_keys = split[:, 0], split[:, 1], split[:, 2]
        sac, replay = self._new_learners(init_keys)
        env_state = self._reset_worlds(env_keys)
        state = TrainState(
            sac=sac,
            env=env_state,
            reward=self.reward_fn.init(env_state),
            episode_return=jnp.zeros((self.num_seeds * self.num_envs,)),
            key=run_keys,
            env_steps=jnp.zeros((), jnp.int32),
        )
        return state, replay

    def _new_learners(self, init_keys: jax.Array) -> tuple[SACState, ReplayBuffer]:
        """Fresh SAC states and empty replay buffers, one per seed key."""
        sac = jax.vmap(lambda k: init_sac(k, self.obs_shape, self.action_dim, self.config.sac))(
            init_keys)
        # As many rows as all N worlds' buffer has (a device's share holds its columns).
        capacity = (self.config.replay_capacity if self.split != "worlds" else
                    -(-self.config.replay_capacity // self.config.num_envs) * self.num_envs)
        replay = jax.vmap(lambda _: init_replay(
            capacity, self.obs_shape, self.action_dim, self.num_envs,
            self.env.episode_length))(init_keys)
        return sac, replay

    def _reset_worlds(self, seed_keys: jax.Array) -> EnvState:
        """Fresh episodes for all K x N worlds; seed k's worlds draw from seed k's key (a
        device with a share of the worlds, its share of the keys)."""
        keys = jax.vmap(lambda k: jax.random.split(k, self.config.num_envs))(seed_keys)
        keys = self._own_worlds(keys, axis=1)
        return self.env.reset_with_keys(keys.reshape(-1, keys.shape[-1]))

    # ---- policy input --------------------------------------------------------------------
    def policy_obs(self, env_state: EnvState, reward_state: RewardState) -> jax.Array:
        """Policy input as stored in replay: the float state vector, or the uint8 frame with
        the current subgoal image on the channels."""
        if self.config.observation == "state":
            obs = env_state.state
        elif self.config.goal_based_policy:
            obs = jnp.concatenate(
                [env_state.obs, self.reward_fn.goal_image(reward_state)], axis=-1)
        else:
            obs = env_state.obs
        chex.assert_shape(obs, (env_state.step_count.shape[0], *self.obs_shape))
        return obs

    def video_frames(self, env_state: EnvState, groups: int = 1) -> jax.Array:
        """Images (groups, worlds, H, W, 3) of the first ``VIDEO_WORLDS`` worlds of each of
        ``groups`` equal blocks of worlds: the observations when the env renders, else
        rendered for the video alone (state-based runs skip the camera elsewhere)."""
        per_group = env_state.step_count.shape[0] // groups
        first = per_group * np.arange(groups)[:, None] + np.arange(min(VIDEO_WORLDS, per_group))
        if self.env.render_obs:
            return env_state.obs[first]
        data = jax.tree.map(lambda x: x[first.ravel()], env_state.data)
        frames = self.env.render_worlds(data.qpos,
                                        data.mocap_pos[:, self.env.task.hand_target_mocap])
        return frames.reshape(*first.shape, *frames.shape[1:])

    def per_seed(self, x: jax.Array) -> jax.Array:
        return x.reshape(self.num_seeds, self.num_envs, *x.shape[1:])

    def flat(self, x: jax.Array) -> jax.Array:
        return x.reshape(self.num_seeds * self.num_envs, *x.shape[2:])

    # ---- the fused step ---------------------------------------------------------------------
    def _iteration(self, carry, _):
        state, replay = carry
        keys = jax.vmap(lambda k: jax.random.split(k, 4))(state.key)
        next_key, act_key, update_key, reset_key = (keys[:, i] for i in range(4))

        obs = self.policy_obs(state.env, state.reward)
        obs_k = self.per_seed(obs)

        def act(sac, obs, key):
            policy_key, random_key = jax.random.split(key)
            action, _ = sac_networks.sample_action(
                self.networks.actor, sac.actor_params, stored_obs_to_float(obs), policy_key)
            uniform = jax.random.uniform(random_key, action.shape, minval=-1.0, maxval=1.0)
            return jnp.where(state.env_steps < self.config.initial_random_steps, uniform, action)

        # Split worlds: every device picks all N worlds' actions (the draws of one device),
        # then steps its own.
        actions = over_seeds(act, self.num_seeds)(state.sac, self._all_worlds(obs_k, axis=1),
                                                  act_key)
        actions = self._own_worlds(actions, axis=1)
        env_state = self.env.step(state.env, self.flat(actions))
        reward, reward_state = self.reward_fn(env_state, state.reward)
        next_obs = self.policy_obs(env_state, reward_state)
        terminal = env_state.done if self.config.timeouts_as_terminal else jnp.zeros_like(
            env_state.done)
        transitions = Transition(
            obs=obs_k,
            action=actions,
            reward=self.per_seed(reward),
            next_obs=self.per_seed(next_obs),
            done=self.per_seed(terminal.astype(jnp.float32)),
        )
        episode_end = env_state.done[0]  # every world is on the same step
        replay = over_seeds(lambda r, t: insert(r, t, episode_end), self.num_seeds)(
            replay, transitions)
        env_steps = state.env_steps + self.config.num_envs

        # Until the buffer holds min_replay transitions (by default the initial random
        # steps') the updates run and are discarded: a select, unlike lax.cond, lets XLA
        # update the learner in place (an update under cond cost 14% more on the CPU;
        # benchmarks/NOTES.md).
        ready = replay.size[0] * self.config.num_envs >= self.min_replay  # size counts rows
        updated, metrics = over_seeds(self._updates, self.num_seeds)(state.sac, replay, update_key)
        sac = jax.tree.map(lambda new, old: jnp.where(ready, new, old), updated, state.sac)
        episode_return = state.episode_return + reward
        finished = env_state.done
        # MuJoCo Warp's solver and contact limits hit during each seed's finished episodes
        # (the bits stay set until a reset): how many worlds, and which limits.
        overflow = jnp.where(finished[0], self.per_seed(physics_overflow(env_state.data)), 0)
        overflow_episodes = jnp.count_nonzero(overflow, axis=1)
        overflow_bits = jnp.bitwise_or.reduce(overflow, axis=1)
        if self.split == "worlds":  # over all devices' worlds
            overflow_episodes = jax.lax.psum(overflow_episodes, "worlds")
            overflow_bits = jnp.bitwise_or.reduce(
                jax.lax.all_gather(overflow_bits, "worlds"), axis=0)
        out = {
            "updated": ready,
            "finished": finished,
            "train_return": episode_return,
            "train_success": env_state.success,
            "overflow_episodes": overflow_episodes,
            "overflow_bits": overflow_bits,
            **metrics,
        }
        # Fixed-length episodes: every world ends on the same step; reset them all at once.
        env_state, reward_state, episode_return = jax.lax.cond(
            finished[0],
            lambda: self._reset_all(reset_key),
            lambda: (env_state, reward_state, episode_return),
        )
        state = TrainState(sac=sac, env=env_state, reward=reward_state,
                           episode_return=episode_return, key=next_key, env_steps=env_steps)
        return (state, replay), out

    def _reset_all(self, seed_keys):
        env_state = self._reset_worlds(seed_keys)
        return env_state, self.reward_fn.init(env_state), jnp.zeros(env_state.reward.shape)

    def _updates(self, sac: SACState, replay: ReplayBuffer, key: jax.Array,
                 inside_devices: bool = True):
        """``updates_per_iteration`` sequential SAC updates of one seed; mean metrics. Split
        worlds (``inside_devices``: called under ``shard_map``) draw from every device's."""
        split = (("worlds", self.config.num_envs) if self.split == "worlds" and inside_devices
                 else None)
        sac, metrics = sampled_updates(sac, replay, key, self.config.sac,
                                       self.config.updates_per_iteration,
                                       self.config.resolved_update_unroll, split)
        return sac, jax.tree.map(jnp.mean, metrics)

    @functools.cached_property
    def _metric_shapes(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes of one iteration's update metrics (per seed), traced once."""
        keys = jax.ShapeDtypeStruct((self.num_seeds, 2), jnp.uint32)
        sac, replay = jax.eval_shape(self._new_learners, keys)
        updates = functools.partial(self._updates, inside_devices=False)
        return jax.eval_shape(jax.vmap(updates), sac, replay, keys)[1]

    def _train_epoch(self, state: TrainState, replay: ReplayBuffer):
        (state, replay), out = jax.lax.scan(
            self._iteration, (state, replay), None, length=self.config.iterations_per_epoch)
        return state, replay, out

    # ---- evaluation ------------------------------------------------------------------------
    def _evaluate(self, actor_params: chex.ArrayTree, seed_keys: jax.Array):
        """Deterministic episodes, ``eval_episodes`` per seed, of the policies of E epochs at
        once: ``actor_params`` and ``seed_keys`` (E, K, ...) -> ({stat: (E, K)}, video frames
        (T + 1, E, worlds, H, W, 3) of each epoch's first worlds; over D devices, (T + 1,
        D x E, ...), the first device's E epochs first). Each epoch's episodes are those it
        would have alone. Env success and return only, so the reward model runs only where
        the policy's input follows it (a goal-based policy sees the current subgoal's
        image); elsewhere it would cost a HOLD network call per eval frame for nothing.

        Why not brax's ``acting.Evaluator``: it rolls out one policy per call (here the
        policies of several epochs and seeds share one rollout), sums its env's metrics over
        an episode (success at any step, and at the last, need the per-step flags), returns
        no frames for the eval videos, and steps a brax env, whose step would run the reward
        model here."""
        epochs, seeds = seed_keys.shape[:2]
        episodes = self.config.eval_episodes
        policies = jax.tree.map(lambda x: x.reshape(epochs * seeds, *x.shape[2:]), actor_params)
        keys = jax.vmap(lambda k: jax.random.split(k, episodes))(
            seed_keys.reshape(epochs * seeds, 2)).reshape(-1, 2)
        env_state = self.env.reset_with_keys(keys)
        reward_state = self.reward_fn.init(env_state)

        def body(carry, _):
            env_state, reward_state = carry
            obs = self.policy_obs(env_state, reward_state)
            obs = obs.reshape(epochs * seeds, episodes, *obs.shape[1:])
            actions = jax.vmap(lambda p, o: sac_networks.deterministic_action(
                self.networks.actor, p, stored_obs_to_float(o)))(policies, obs)
            env_state = self.env.step(env_state, actions.reshape(-1, self.action_dim))
            if self.config.goal_based_policy:
                _, reward_state = self.reward_fn(env_state, reward_state)  # advances subgoals
            return (env_state, reward_state), (env_state.success, env_state.reward,
                                               self.video_frames(env_state, epochs))

        _, (success, reward, frames) = jax.lax.scan(
            body, (env_state, reward_state), None, length=self.env.episode_length)
        frames = jnp.concatenate([self.video_frames(env_state, epochs)[None], frames])
        per_seed = lambda x: x.reshape(x.shape[0], epochs, seeds, episodes)  # noqa: E731
        success, reward = per_seed(success), per_seed(reward)
        return {
            "eval_success_rate": success.any(axis=0).mean(axis=-1),  # (E, K)
            "eval_success_rate_last": success[-1].mean(axis=-1),
            "eval_return": reward.sum(axis=0).mean(axis=-1),
        }, frames

    def evaluate_policies(self, actor_params: chex.ArrayTree, seed_keys: jax.Array):
        """`evaluate` of one set of policies, ``actor_params`` (K, ...): ({stat: (K,)},
        video frames (T + 1, worlds, H, W, 3))."""
        stats, frames = self.evaluate(jax.tree.map(lambda x: x[None], actor_params),
                                      self.placed(seed_keys[None], self.eval_key_spec))
        return {name: value[0] for name, value in stats.items()}, frames[:, 0]


def policy_obs_shape(config: TrainConfig) -> tuple[int, ...]:
    """Policy input as stored in replay: the task's state vector, or its camera frame (with
    the goal image on three more channels for a goal-based policy)."""
    task = envs.task_class(config.task)
    if config.observation == "state":
        return (task.state_dim,)
    return (*task.image_shape, 6 if config.goal_based_policy else 3)


# Of a device's free memory, the share the replay buffers may take; the rest is for the
# networks, worlds, renderer and the update's activations.
REPLAY_MEMORY_SHARE = 0.9


def free_memory(device: jax.Device) -> int | None:
    """Bytes a new allocation on ``device`` may take: an accelerator's allocator limit less
    what it holds, or, for the CPU, the host's available memory; None where unknown."""
    stats = device.memory_stats()
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    if device.platform == "cpu":
        try:
            with open("/proc/meminfo") as f:
                kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
            return kib * 1024
        except (OSError, StopIteration, ValueError):
            return None
    return None


def check_replay_fits(config: TrainConfig, free_bytes: int | None, num_devices: int = 1,
                      host_memory: bool = True) -> int:
    """Bytes of one device's replay buffers (every seed's when the devices share the host's
    memory); raises `ReplayTooLarge`, saying which flags make it fit, when they exceed
    `REPLAY_MEMORY_SHARE` of ``free_bytes``. Checked before anything is allocated: a 48x48 pixel
    buffer of 400k transitions is ~2.8 GB per seed (each frame stored once, as uint8)."""
    capacity, obs_shape = config.replay_capacity, policy_obs_shape(config)
    task = envs.task_class(config.task)
    # The seeds whose buffers share this host's memory (or one device's): a fraction of one
    # when its worlds, and so its buffer's columns, are split over the devices.
    seeds = config.seeds / (jax.process_count() if host_memory else num_devices)

    def bytes_per_seed(capacity: int) -> int:
        return replay_nbytes(capacity, obs_shape, task.action_dim, config.num_envs,
                             task.episode_length)

    per_seed = bytes_per_seed(capacity)
    needed = int(seeds * per_seed)
    if free_bytes is None or needed <= REPLAY_MEMORY_SHARE * free_bytes:
        return needed
    # Bytes grow linearly with the capacity plus a little fixed: start from the proportion,
    # step down a row at a time to the largest that fits.
    fitting = int(REPLAY_MEMORY_SHARE * free_bytes * capacity // needed)
    while fitting > 0 and seeds * bytes_per_seed(fitting) > REPLAY_MEMORY_SHARE * free_bytes:
        fitting -= config.num_envs
    fewer = " or fewer --seeds" if config.seeds > 1 else ""
    advice = (f"pass --replay_size={fitting} (or less){fewer}" if fitting >= config.batch_size
              else "pass fewer --seeds" if fewer else "pass a smaller --replay_size")
    if not host_memory:  # JAX's allocator takes 75% of an accelerator's memory by default
        advice += ", or raise XLA_PYTHON_CLIENT_MEM_FRACTION"
    share = (f"{seeds:g} seed(s) x {per_seed / 1e9:.2f} GB" if seeds >= 1 else
             f"one seed's {per_seed / 1e9:.2f} GB over {num_devices} devices")
    raise ReplayTooLarge(
        f"the replay buffers need {needed / 1e9:.1f} GB ({share} for {capacity} transitions), "
        f"more than {REPLAY_MEMORY_SHARE:.0%} of "
        f"the {free_bytes / 1e9:.1f} GB free on {jax.local_devices()[0].device_kind}; {advice}")


@functools.cache
def _trainer_for(program_key: TrainConfig, num_devices: int) -> Trainer:
    return Trainer(program_key, num_devices)


def device_split(config: TrainConfig, num_devices: int) -> str:
    """What ``num_devices`` devices split: the seeds when they divide them evenly, else one
    seed's worlds (a seed's learner is one program), when they divide those."""
    if config.seeds % num_devices == 0:
        return "seeds"
    if config.seeds == 1 and config.num_envs % num_devices == 0:
        return "worlds"
    raise ValueError(f"{num_devices} devices split neither the {config.seeds} seeds nor, for "
                     f"one seed, its {config.num_envs} worlds evenly")


def training_devices(config: TrainConfig) -> int:
    """All visible devices when they split the seeds, or one seed's worlds, evenly, else one
    (in a one-process job; in a multi-process job every process trains its share, so they
    must split)."""
    devices = jax.device_count()
    try:
        device_split(config, devices)
        return devices
    except ValueError:
        if jax.process_count() > 1:
            raise ValueError(
                f"--seeds={config.seeds} cannot be split over the job's {devices} devices "
                f"({jax.process_count()} processes); pass a multiple of {devices}, or one "
                f"seed with --num_envs a multiple of {devices}") from None
        return 1


def get_trainer(config: TrainConfig, num_devices: int | None = None) -> Trainer:
    """A (cached) trainer over as many devices as split the seeds (or one seed's worlds)
    evenly, or over ``num_devices`` (1: one device, as the benchmarks time a step); runs that
    differ only in output or length reuse its compilation."""
    if num_devices is not None:
        return _trainer_for(config.validate().program_key(), num_devices)
    devices = jax.device_count()
    num_devices = training_devices(config)
    if num_devices < devices:
        print(f"note: {config.seeds} seed(s) cannot be split over {devices} devices; using "
              "one (choose --seeds as a multiple of the device count, or one seed with "
              "--num_envs a multiple of it)", file=sys.stderr)
    return _trainer_for(config.validate().program_key(), num_devices)


# ---- devices and processes ----------------------------------------------------------------
def maybe_init_distributed() -> None:
    """Joins a multi-process job when launched as one: ``JAX_COORDINATOR_ADDRESS`` (process
    0's host:port) set, with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, or with JAX
    finding them under Slurm or Open MPI. Called before anything touches a device."""
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not address or jax.distributed.is_initialized():
        return
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    # CPU processes exchange what the host loop gathers through Gloo (XLA's CPU default
    # has no collectives between processes).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(address, int(count) if count else None,
                                   int(index) if index else None)
    except (RuntimeError, ValueError) as e:
        raise ValueError(
            f"cannot join the multi-process job at JAX_COORDINATOR_ADDRESS={address} ({e}); "
            "set JAX_NUM_PROCESSES and JAX_PROCESS_ID (0 on the coordinator's host) in every "
            "process, or unset JAX_COORDINATOR_ADDRESS for a one-process run") from None


def _devices_description(config: TrainConfig, devices: int) -> str:
    """Where the run trains, for its header: the device kind and, over the ``devices`` it
    trains on (`training_devices`), what they split (and the job's processes)."""
    kind = jax.devices()[0].device_kind
    processes = (f" ({jax.device_count()} devices in {jax.process_count()} processes)"
                 if jax.process_count() > 1 else "")
    if devices == 1:
        return kind + processes
    what = "seeds" if device_split(config, devices) == "seeds" else "one seed's worlds"
    return f"{devices} x {kind}{processes}, {what} split over them"


def _is_lead_process() -> bool:
    """Whether this process writes the run's files and prints its progress: the only one,
    or process 0 of a multi-process job."""
    return jax.process_index() == 0


def _to_host(tree):
    """``tree``'s arrays as numpy arrays, whole: in a multi-process job every process
    gathers the parts that the others' devices hold (a collective: all must call it)."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


# ---- the host loop -----------------------------------------------------------------------
def summarize_epoch(out: dict, config: TrainConfig) -> dict[str, list[float] | float]:
    """Per-seed means of an epoch's scan outputs (losses over iterations that updated)."""
    out = _to_host(out)
    updated = np.asarray(out.pop("updated"))
    finished = np.asarray(out.pop("finished")).reshape(len(updated), config.seeds, -1)
    returns = np.asarray(out.pop("train_return")).reshape(finished.shape)
    success = np.asarray(out.pop("train_success")).reshape(finished.shape)
    overflow_bits = int(np.bitwise_or.reduce(np.asarray(out.pop("overflow_bits")), axis=None))
    summary = {"physics_overflow_episodes": np.asarray(out.pop("overflow_episodes"))
               .sum(axis=0).tolist()}
    if overflow_bits:
        summary["physics_overflow_kinds"] = overflow_kinds(overflow_bits)
    for name, values in out.items():
        values = np.asarray(values)[updated]  # losses exist once training has started
        summary[name] = values.mean(axis=0).tolist() if len(values) else None
    if finished.any():
        summary["train_return"] = [float(returns[:, k][finished[:, k]].mean())
                                   for k in range(config.seeds)]
        summary["train_success_rate"] = [float(success[:, k][finished[:, k]].mean())
                                         for k in range(config.seeds)]
    return summary


def _encoder_description(config: TrainConfig) -> str:
    """How the SAC encoders compute, for the run's header ("" for state observations): the
    computation "auto" picks differs by backend, so the header says which one runs."""
    if config.observation != "pixels":
        return ""
    conv = sac_networks.resolve_encoder_conv(config.encoder_conv)
    if conv in sac_networks.PALLAS_CONVS and jax.default_backend() == "cpu":
        conv += " (Pallas's interpreter on the CPU: for tests, far slower than canonical)"
    return f"{conv} {config.encoder_dtype} encoder convolutions, "


def overflow_warning(record: dict) -> str:
    """What to tell the user about an epoch whose episodes hit MuJoCo Warp's limits."""
    episodes, kinds = record["physics_overflow_episodes"], record["physics_overflow_kinds"]
    return (f"epoch {record['epoch']}: MuJoCo Warp hit {', '.join(kinds)}"
            f" in {sum(episodes)} episodes (per seed: {episodes}), whose physics may be inexact; "
            "raise that limit in the task's MJCF (README, Tasks)")


def write_curves(run_dir: str) -> None:
    """Redraws the run's ``curves.png`` (eval success against env steps, `holdjax.plot`)
    from its metrics so far; a figure that cannot be drawn is reported, never stops a run."""
    try:
        plot_runs([run_dir], os.path.join(run_dir, "curves.png"))
    except Exception as e:  # noqa: BLE001 (matplotlib's failures have no common type)
        print(f"warning: {run_dir}/curves.png not drawn ({type(e).__name__}: {e})",
              file=sys.stderr)


RUN_LOGS = ("metrics.jsonl", "curves.png", "videos", "tensorboard")  # what a run writes


def clear_earlier_attempt(run_dir: str) -> list[str]:
    """Removes the logs that an earlier start of a run left without a checkpoint (killed or
    failed before its first): a new start would otherwise add its epochs to theirs, and the
    plots and TensorBoard would mix the two. Only in a folder that a run has written (its
    config.json), never in one a user pointed --out at with files of their own. Returns the
    names removed."""
    removed = []
    if not os.path.exists(os.path.join(run_dir, "config.json")):
        return removed
    for name in RUN_LOGS:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    return removed


def finished_message(config: TrainConfig, record: dict) -> str:
    """What a finished run says last: its final evaluation (per seed when several), what it
    left in its folder and the commands that look further."""
    success = record["eval_success_rate"]
    per_seed = (f" (per seed: {', '.join(f'{s:.2f}' for s in success)})"
                if len(success) > 1 else "")
    out = config.out_dir
    left = [name for name in RUN_LOGS if os.path.exists(os.path.join(out, name))]
    return (f"done: {record['env_steps']} env steps x {config.seeds} seed(s) in "
            f"{record['wall_s'] / 60:.1f} min; final eval success {np.mean(success):.2f}"
            f"{per_seed}, return {np.mean(record['eval_return']):.2f}\n"
            f"results in {out}: {', '.join(left)}, checkpoint of epoch {record['epoch']}\n"
            f"  roll the policy out: python -m holdjax.evaluate --run={out} --episodes=20 "
            f"--video={os.path.join(out, 'rollout.mp4')}\n"
            f"  train it further: python -m holdjax.train --out={out} --resume "
            f"--total_steps=<a larger total>")


def tensorboard_scalars(record: dict) -> dict[str, float]:
    """The curves of an epoch's record: numbers, and lists of numbers (one per seed) as their
    mean; not the date, the unset losses before training or the overflow kinds' names."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    scalars = {}
    for name, value in record.items():
        if name == "started_at":  # a date, not a curve
            continue
        if number(value):
            scalars[name] = float(value)
        elif isinstance(value, list) and value and all(number(v) for v in value):
            scalars[name] = float(np.mean(value))
    return scalars


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def check_finite(summary: dict, epoch: int, run_dir: str, params=None) -> None:
    """Stops the run at the first NaN/inf loss or, when ``params`` (the learned parameters
    at the epoch's end) are given, parameter: the checkpoint that follows is then never a
    broken one. The message names the epoch, the last checkpoint and what to change."""
    bad = [name for name, values in summary.items()
           if name.endswith("loss") and values is not None and not np.all(np.isfinite(values))]
    if params is not None and not bool(_all_finite(params)):
        bad.append("parameters")
    if bad:
        last = checkpoint.latest_epoch(run_dir)
        advice = ("a lower --learning_rate or a smaller reward scale (a run is "
                  "deterministic: the same settings diverge again)")
        where = (f"the last good checkpoint is epoch {last} in {run_dir}; resume from it "
                 f"with --resume and {advice}" if last is not None
                 else f"no checkpoint was written yet; start it again with {advice}, or "
                      "another --seed")
        raise TrainingDiverged(f"non-finite {', '.join(bad)} in epoch {epoch + 1}; {where}.")


def train(config: TrainConfig, resume: bool = False, quiet: bool = False) -> dict:
    """Runs (or resumes) a training run; returns the last epoch's log record."""
    from holdjax.video import write_video

    entered = time.perf_counter()
    run_dir = config.out_dir
    latest = checkpoint.latest_epoch(run_dir)
    if resume:  # checked before anything is built or compiled
        saved = checkpoint.read_config(run_dir, TrainConfig)
        with_replay = latest is not None and checkpoint.holds_replay(run_dir, latest)
        config = _keeping_saved_replay_size(saved, config, with_replay, quiet)
        checkpoint.check_resumable(saved, config, with_replay)
        if latest is None:
            raise checkpoint.CheckpointError(
                f"{run_dir} has no checkpoint to resume from (it stopped before its first, "
                f"due after epoch {config.checkpoint_frequency}); start it again without "
                "--resume")
        if latest >= config.num_epochs:
            done = (f"has finished its {latest} epochs" if latest == config.num_epochs else
                    f"already has {latest} epochs, more than the {config.num_epochs} asked for "
                    "(nothing is trained or removed)")
            print(f"{run_dir} {done}; pass a larger --total_steps to train it further",
                  file=sys.stderr)
            return _logged_record(run_dir, latest)
    elif latest is not None:
        raise checkpoint.CheckpointError(
            f"{run_dir} already holds checkpoints; pass --resume to continue it or choose "
            "another --out")
    device, num_devices = jax.local_devices()[0], training_devices(config)
    host_memory = device.platform == "cpu"
    replay_bytes = check_replay_fits(config, free_memory(device), num_devices, host_memory)
    lead = _is_lead_process()
    quiet = quiet or not lead
    if not quiet:
        where = " per device" if num_devices > 1 and not host_memory else ""
        print(f"replay: {config.replay_held} transitions per seed, "
              f"{replay_bytes / 1e9:.2f} GB{where}", file=sys.stderr)
    trainer = get_trainer(config)
    init_start = time.perf_counter()
    state, replay = jax.block_until_ready(trainer.init(config.seed))
    init_s = time.perf_counter() - init_start
    start_epoch = 0
    if resume:
        if checkpoint.holds_replay(run_dir, latest):
            # The saved buffer replaces the fresh one, whose shapes and placement are all
            # that restoring needs: dropping it first keeps one buffer in memory, not two.
            replay = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), replay)
        start_epoch, state, saved_replay = checkpoint.restore(run_dir, state, replay)
        if saved_replay is None:
            print("resume: no replay buffer in the checkpoint (--save_replay was off); "
                  "refilling it from scratch", file=sys.stderr)
        else:
            replay = saved_replay
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if lead:
        removed = [] if resume else clear_earlier_attempt(run_dir)
        if removed and not quiet:
            print(f"starting anew: removed {', '.join(removed)} of an earlier start of "
                  f"{run_dir} that wrote no checkpoint", file=sys.stderr)
        checkpoint.write_config(run_dir, config)
        drop_unfinished_line(metrics_path)
    mngr = checkpoint.manager(run_dir, config.resolved_keep_checkpoints)
    start_steps = int(state.env_steps)
    # wall_s counts training time over all of a run's sessions (a resumed run goes on from
    # the time logged with its checkpoint); env_steps_per_s is this session's rate.
    wall_before = _logged_record(run_dir, start_epoch).get("wall_s", 0.0)
    record: dict = {}
    start, started_at = time.perf_counter(), time.time()
    def evaluate_and_log(pending: list[PendingEpoch], bar) -> tuple[dict, jax.Array]:
        """Rolls out the pending epochs' policies at once (padded to `eval_batch` epochs, so
        one compiled evaluation serves every batch) and logs their records; returns the last
        record and the video frames."""
        padding = [pending[-1]] * (eval_batch - len(pending))
        stack = lambda *xs: jnp.stack(xs)  # noqa: E731
        stats, frames = trainer.evaluate(
            jax.tree.map(stack, *[p.policy for p in pending + padding]),
            trainer.placed(stack(*[p.eval_keys for p in pending + padding]),
                           trainer.eval_key_spec))
        stats = _to_host(stats)  # (epochs, seeds)
        evaluated = time.perf_counter()
        eval_s = (evaluated - pending[-1].trained) / len(pending)  # each epoch's share
        for index, done_epoch in enumerate(pending):
            # an epoch's wall time: its training's end plus the evaluations up to its own
            wall = done_epoch.trained - start + (index + 1) * eval_s
            record = {
                "epoch": done_epoch.epoch + 1,
                "env_steps": done_epoch.env_steps,  # epochs round up to whole fused steps
                "wall_s": round(wall_before + wall, 2),
                "env_steps_per_s": (done_epoch.env_steps - start_steps) * config.seeds / wall,
                # Where the epoch's time went: its fused steps, then its evaluation episodes
                # (in the first epoch each includes its compilation).
                "train_s": round(done_epoch.train_s, 3),
                "eval_s": round(eval_s, 3),
                # This session's set-up before its first epoch (environments, renderer,
                # reward model, initial state), not in wall_s; init_s is the initial state's
                # share (its compilation, the first reset and render); started_at (Unix
                # time) dates the session's clock, which lets a launcher time the imports.
                **({"setup_s": round(start - entered, 2), "init_s": round(init_s, 2),
                    "started_at": round(started_at, 2)}
                   if done_epoch.epoch == start_epoch else {}),
                **done_epoch.summary,
                **{k: v[index].tolist() for k, v in stats.items()},
            }
            if lead:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            if writer is not None:
                for name, value in tensorboard_scalars(record).items():
                    writer.add_scalar(name, value, done_epoch.env_steps)
            if "physics_overflow_kinds" in record and lead:
                bar.write(overflow_warning(record), file=sys.stderr)
        # the bar's own rate counts one seed's env steps; the logged rate sums the seeds'
        rate_name = "steps_per_s" if config.seeds == 1 else "all_seeds_steps_per_s"
        bar.set_postfix({"eval_success": f"{np.mean(record['eval_success_rate']):.2f}",
                         rate_name: f"{record['env_steps_per_s']:.0f}"})
        return record, frames  # on the device until a video wants them

    # The bar moves once per epoch (one jitted call); it says what the first one waits for,
    # and its clock ticks meanwhile. Evaluation waits until `eval_batch` epochs (or a
    # checkpoint, a video or the run's end) are due, then rolls all their policies out at
    # once. A first Ctrl-C or SIGTERM stops the run after its epoch with a checkpoint; a run
    # interrupted at once (a second one) still evaluates and logs the epochs it trained.
    eval_batch, pending = config.resolved_eval_batch, []
    with (_tensorboard_writer(run_dir, lead) as writer,
          live_bar(total=config.scheduled_env_steps, initial=start_steps, disable=quiet,
                   desc=config.run_name, waiting="compiling and running the first epoch") as bar,
          stop_on_signal() as stop_requested):
        try:
            for epoch in range(start_epoch, config.num_epochs):
                epoch_start = time.perf_counter()
                state, replay, out = trainer.train_epoch(state, replay)
                summary = summarize_epoch(out, config)  # waits for the epoch's fused steps
                check_finite(summary, epoch, run_dir, params=(
                    state.sac.actor_params, state.sac.critic_params, state.sac.log_alpha))
                pending.append(PendingEpoch(
                    epoch=epoch, summary=summary, env_steps=int(state.env_steps),
                    # a copy: the next epoch donates (and so invalidates) the state's buffers
                    policy=jax.tree.map(jnp.copy, state.sac.actor_params),
                    eval_keys=trainer.eval_keys(config.seed, epoch),
                    train_s=time.perf_counter() - epoch_start, trained=time.perf_counter()))
                bar.update(pending[-1].env_steps - bar.n)
                done = epoch + 1
                stopping = _any_process(stop_requested.is_set()) and done < config.num_epochs
                checkpoint_due = (done % config.checkpoint_frequency == 0
                                  or done == config.num_epochs or stopping)
                video_due = config.path_save_frequency and (
                    done % config.path_save_frequency == 0 or done == config.num_epochs)
                if len(pending) < eval_batch and not (checkpoint_due or video_due):
                    continue
                record, frames = evaluate_and_log(pending, bar)
                if checkpoint_due:
                    checkpoint.save(mngr, done, state, replay if config.save_replay else None)
                    if lead:
                        write_curves(run_dir)
                if video_due:
                    video = _to_host(frames[:, len(pending) - 1])  # the last epoch's
                    if lead:
                        write_video(os.path.join(run_dir, "videos", f"eval_epoch{done:04d}.mp4"),
                                    video)
                pending = []
                if stopping or (done < config.num_epochs
                                and _any_process(stop_requested.is_set())):
                    if not checkpoint_due:  # asked while this epoch was evaluated
                        checkpoint.save(mngr, done, state,
                                        replay if config.save_replay else None)
                    raise KeyboardInterrupt  # main() names the checkpoint just written
        except (KeyboardInterrupt, TrainingDiverged):  # the epochs trained before it count
            if pending:
                evaluate_and_log(pending, bar)
            raise
    return record


@contextlib.contextmanager
def live_bar(waiting: str, refresh_s: float = 1.0, **tqdm_kwargs):
    """A tqdm bar (on stderr, in env steps) whose elapsed time is redrawn every
    ``refresh_s`` while the bar itself waits for long calls, showing ``waiting`` until the
    first `set_postfix`; closed, and its redrawing stopped, on exit."""
    bar = tqdm(**{"unit": "step", "file": sys.stderr, "dynamic_ncols": True, **tqdm_kwargs})
    bar.set_postfix_str(waiting)
    stop = threading.Event()

    def redraw():
        while not stop.wait(refresh_s):
            bar.refresh()

    ticker = threading.Thread(target=redraw, daemon=True)
    if not bar.disable:
        ticker.start()
    try:
        yield bar
    finally:
        stop.set()
        if ticker.is_alive():
            ticker.join()
        bar.close()


@contextlib.contextmanager
def stop_on_signal():
    """While it is open, a first SIGINT (Ctrl-C) or SIGTERM (a scheduler's, `kill`) asks the
    run to stop after the epoch in progress, with a checkpoint, so that nothing trained is
    lost; a second stops it at once (KeyboardInterrupt). Yields the request, an Event. Off
    the main thread, where Python allows no handlers, signals keep their usual effect."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def ask_to_stop(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        print(f"\n{signal.Signals(signum).name}: stopping after this epoch with a checkpoint; "
              "Ctrl-C again stops at once", file=sys.stderr)

    previous = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _any_process(flag: bool) -> bool:
    """Whether ``flag`` holds in any process of the job (a collective: all must call it), so
    that a signal to one process stops them all at the same epoch."""
    return bool(np.any(_to_host(np.array([flag]))))


def _keeping_saved_replay_size(saved: TrainConfig, requested: TrainConfig, with_replay: bool,
                               quiet: bool) -> TrainConfig:
    """``requested``, with the saved replay buffer's size kept where only a new run length
    changed it (``replay_size`` 0 follows the length): a run extended with a larger
    ``--total_steps`` resumes with its buffer, not into a shape mismatch."""
    if (not with_replay or requested.replay_size != saved.replay_size
            or requested.replay_capacity == saved.replay_capacity):
        return requested
    if not quiet and _is_lead_process():
        print(f"resume: keeping the saved replay buffer's size, {saved.replay_capacity} "
              f"transitions per seed (--replay_size={saved.replay_capacity})", file=sys.stderr)
    return dataclasses.replace(requested, replay_size=saved.replay_capacity)


def _logged_record(run_dir: str, epoch: int) -> dict:
    """The metrics record that a run logged for ``epoch`` (with its checkpoint), or {} if
    its metrics.jsonl has none (a lost log must not stop a resume)."""
    if not os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        return {}
    return next((r for r in read_metrics(run_dir) if r["epoch"] == epoch), {})


@contextlib.contextmanager
def _tensorboard_writer(run_dir: str, lead: bool):
    """The run's TensorBoard writer (None without tensorboardX, or off process 0), closed,
    and so flushed, however the run ends."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # TensorBoard events are optional; metrics.jsonl always exists
        SummaryWriter = None
    if SummaryWriter is None or not lead:
        yield None
        return
    writer = SummaryWriter(os.path.join(run_dir, "tensorboard"))
    try:
        yield writer
    finally:
        writer.close()


def _saved_config(run_dir: str) -> TrainConfig:
    try:
        return checkpoint.read_config(run_dir, TrainConfig)
    except checkpoint.CheckpointError as e:
        raise ValueError(f"cannot resume: {e}") from None


def usage() -> str:
    """``--help``: this module's docstring, the flags that are not config fields, and every
    config field with its default and its comment in config.py."""
    lines = [__doc__, "Flags:",
             "  --config=NAME      a reference run from configs/ (e.g. fig3a_pushing_sac); "
             "other flags override its fields; without it, --task with --reward starts "
             "from the reference's run of them where there is one",
             "  --total_steps=N    env steps per seed; sets num_epochs (whole epochs of "
             "epoch_length)",
             "  --resume           continue the run in --out (or the default run folder) from "
             "its last checkpoint",
             "", "Config fields (override as --field=value):"]
    docs = field_help()
    for field in dataclasses.fields(TrainConfig):
        lines.append(f"  --{field.name}={field.default!r}")
        if docs.get(field.name):
            lines += textwrap.wrap(docs[field.name], width=92, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6)
    return "\n".join(lines)


def _unknown_flags_message(flags: dict) -> str:
    """Names each flag that is neither a config field nor one of main's, with the closest
    known name where one is close (a typo)."""
    known = [f.name for f in dataclasses.fields(TrainConfig)] + ["config", "total_steps",
                                                                 "resume"]
    named = []
    for flag in flags:
        close = difflib.get_close_matches(flag, known, n=1)
        named.append(f"--{flag}" + (f" (did you mean --{close[0]}?)" if close else ""))
    return f"unknown flags: {', '.join(named)}; see python -m holdjax.train --help"


def main(argv: list[str] | None = None) -> dict:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(usage())
        return {}
    try:
        maybe_init_distributed()
        config, rest = config_from_args(args)
        resume = parse_value("resume", bool, rest.pop("resume", "false"))
        if resume:
            # The run's own settings (unless --config names others), with the flags given now
            # on top (--total_steps to extend it, say): `--out=DIR --resume` continues the
            # run as it was started.
            config, rest = config_from_args(args, base=_saved_config(config.out_dir))
            rest.pop("resume", None)
        if rest:
            raise ValueError(_unknown_flags_message(rest))
        config.validate()
        if os.path.exists(config.out_dir) and not os.path.isdir(config.out_dir):
            raise ValueError(f"--out {config.out_dir} is a file, not a run directory: name a "
                             "folder (made if missing)")
        devices = training_devices(config)  # a multi-process job must split the seeds
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if _is_lead_process():
        if not math.isclose(config.effective_updates_per_step,
                            config.resolved_updates_per_step):
            print(f"note: --updates_per_step={config.updates_per_step:g} gives "
                  f"{config.updates_per_iteration} update(s) per step of {config.num_envs} "
                  f"worlds, {config.effective_updates_per_step:g} per env step (updates are "
                  "whole per fused step)", file=sys.stderr)
        reference = (reference_config_name(config.task, config.reward)
                     if not resume and not any(a.startswith("--config") for a in args) else None)
        if reference:
            print(f"settings of configs/{reference}.py (the reference's run of --task="
                  f"{config.task} with --reward={config.reward}), with the flags given on top",
                  file=sys.stderr)
        print(f"run {config.run_name}: {config.scheduled_env_steps} env steps x {config.seeds} "
              f"seed(s), {config.num_envs} worlds per seed, {config.updates_per_iteration} "
              f"update(s) per {config.num_envs} env steps, {_encoder_description(config)}on "
              f"{_devices_description(config, devices)}; writing to "
              f"{config.out_dir}", file=sys.stderr)
    try:
        record = train(config, resume=resume)
        if record and _is_lead_process():
            print(finished_message(config, record), file=sys.stderr)
        return record
    except (FileNotFoundError, checkpoint.CheckpointError, CheckpointMismatchError,
            GoalImageError, RewardSettingsError, TrainingDiverged, ReplayTooLarge) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        last = checkpoint.latest_epoch(config.out_dir)  # every process: orbax syncs them
        if not _is_lead_process():
            sys.exit(130)
        if last:
            print(f"\ninterrupted; its last checkpoint is epoch {last} in {config.out_dir}. "
                  f"Continue it with: python -m holdjax.train --out={config.out_dir} --resume",
                  file=sys.stderr)
        else:
            print(f"\ninterrupted before the first checkpoint of {config.out_dir}: nothing to "
                  "resume; run the same command again to start it anew", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
