"""holdjax's own HOLD-C reward model, trained on robot demonstrations it renders itself.

    python -m holdjax.reward.train --task=pushing
    python -m holdjax.reward.train --task=drawer_open --layers=50 --image_size=256 --steps=4000

HOLD's released HOLD-C was trained on human videos (Something-Something v2). This model is
not: it sees only robot footage that holdjax renders from the task camera, so it stands in
for the released checkpoint when that is absent, nothing more. The footage:

- expert episodes: the task's scripted expert, each world with its own start (uniform
  random actions for its first steps), speed (actions scaled down) and Gaussian action
  noise; kept up to a few frames past the first success, since the frames of a solved,
  motionless scene cannot be told apart in time;
- random episodes: uniform random actions throughout (non-expert footage);
- goal-pose episodes: experts whose hand starts where a goal image has it, with the task
  unsolved (``--goal_pose_episodes``).

The loss is the released model's time-contrastive triplet loss (hold-rewards'
``holdc_utils.tc_loss`` with ``holdc/resnet50.py``'s positive radius 2, negative radius 4,
margin 0.2): a batch holds clips of consecutive frames from several episodes; every frame
is an anchor, frames of its episode within the positive radius are its positives, frames
of its episode beyond the negative radius and all frames of other episodes are its
negatives; each (anchor, positive) pair takes its semi-hard negative (the closest
negative farther than the positive, else the farthest negative) and pays
``max(0, margin + d(a, p) - d(a, n))`` on squared Euclidean embedding distances. Beside it,
by default, a time-to-goal regression (``--time_weight``, ``--time_unit``) pulls each
demonstration frame's distance to its goal image towards its steps to go.

Output (default :func:`default_model_dir`): ``model.json`` (architecture and training
settings) and ``checkpoint/``, an orbax checkpoint of the same variables that the released
checkpoint's import produces, so :func:`load_model` restores it with the same code.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import operator
import os
import shutil
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from tqdm import tqdm

from holdjax import envs
from holdjax.envs.base import EnvState, ManipulationEnv, Task, central_crop
from holdjax.envs.goal_images import load_goal_images
from holdjax.reward import holdc, scenic_checkpoint

MODEL_FILE = "model.json"
CHECKPOINT_DIR = "checkpoint"
# HoldCConfig fields that describe the network (saved); distance and dtype are the user's.
ARCHITECTURE_FIELDS = ("num_layers", "num_filters", "embedding_size", "crop_size",
                       "zero_centering")


@dataclasses.dataclass(frozen=True)
class RewardTrainConfig:
    """A demo-trained HOLD-C: its network, its footage and its optimisation."""

    task: str = "pushing"
    # Network (scenic's ResNet with a linear embedding head, as holdc.py). One default on
    # every device: this small network ranked pushing frames better (spearman_time 0.93-0.94
    # over three seeds, CPU) than ResNet-18 at 128 px did on an H100 (0.88, 3000 steps of
    # 8 x 32 frames) and trains in minutes on 2 CPU cores (benchmarks/NOTES.md).
    layers: int = 11
    filters: int = 8
    embedding_size: int = 32
    image_size: int = 48  # frames are centre-cropped and resized to this (crop_size)
    # Footage.
    expert_episodes: int = 256
    # Non-expert footage: 192 rather than 64 random episodes lifted the worst of three
    # training seeds' spearman_time from 0.89 to 0.93 (benchmarks/NOTES.md).
    random_episodes: int = 192
    # Wandering episodes: uniform random actions each held for ``wander_hold`` steps, so the
    # arm crosses the workspace in strides (random episodes' arm stays near its start). Tried
    # against a HOLD-C policy that parks the arm where the goal image has it: 192 of them
    # raised the check's scores but did not stop the parking (benchmarks/NOTES.md), so off.
    wander_episodes: int = 0
    wander_hold: int = 10
    # Goal-pose episodes: experts whose hand starts where a goal image has it (plus uniform
    # noise of up to goal_pose_noise metres per axis) with the scene at its random start, so
    # that the footage shows that pose with the task unsolved, many steps before success.
    # Together with strided clips they widened the gap between such frames and a first
    # success in pushing's model (reward.check's goal_pose_below_success; benchmarks/NOTES.md).
    goal_pose_episodes: int = 128
    goal_pose_noise: float = 0.05
    num_envs: int = 64  # worlds rendered at once
    max_random_start: int = 10  # random actions for U{0..this} steps before the expert
    min_speed: float = 0.5  # expert actions scaled by U(min_speed, 1)
    max_noise: float = 0.3  # Gaussian action noise with std U(0, max_noise)
    success_tail: int = 10  # expert frames kept after the first success
    # Optimisation.
    steps: int = 2000
    clips: int = 4  # episodes per batch ...
    clip_length: int = 16  # ... each giving this many frames,
    # ... this many steps apart (the radii count clip frames, not steps). Stride 3: a clip
    # spans 46 steps, most of a pushing demonstration, as the released config's 32-frame
    # clips span most of a short human video; it raised pushing's spearman_time
    # (benchmarks/NOTES.md).
    clip_stride: int = 3
    learning_rate: float = 1e-3  # peak; linear warm-up then cosine decay
    warmup_steps: int = 100
    pos_radius: int = 2  # hold-rewards' holdc/resnet50.py
    neg_radius: int = 4
    margin: float = 0.2
    # Time-to-goal regression beside the triplet loss (0: off): each demonstration frame's
    # distance to the goal image it heads for is pulled (Huber) towards 1 + its steps to
    # reaching that image / time_unit. The triplet loss only orders distances, so a frame it
    # never paired with a solved one (the hand on the goal image's pose, the object unmoved)
    # can sit just beyond the solved frames; the regression puts it as far as its steps to go.
    # On pushing it raised the check's scores (0.972 / 0.800 to 0.994 / 0.936, seed 0) and
    # moved goal-pose frames from 1.7x to 3.4x a first success's distance (NOTES.md).
    time_weight: float = 1.0
    time_unit: float = 10.0
    # Scale: the triplet loss fixes distances only up to a factor, while the reference's
    # reward settings (normaliser 5 for pushing, subtask threshold 1 for drawer_open) assume
    # the released model's, where reaching a goal image scores about 1. After training the
    # embedding is scaled so that the demonstrations' first frames reaching each goal image
    # lie at this median distance from it (0: unscaled).
    solved_distance: float = 1.0
    seed: int = 0

    def __post_init__(self):
        envs.task_class(self.task)  # an unknown task is an error naming the valid ones
        if self.neg_radius <= self.pos_radius:
            raise ValueError("neg_radius must exceed pos_radius")
        if self.clip_length <= self.neg_radius:
            raise ValueError("clip_length must exceed neg_radius, or clips hold no negatives")
        for name in ("expert_episodes", "num_envs", "steps", "clips", "image_size",
                     "clip_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        frames = envs.task_class(self.task).episode_length + 1
        if self.clip_span > frames:
            raise ValueError(f"a clip spans {self.clip_span} steps ((clip_length - 1) x "
                             f"clip_stride + 1) but {self.task} episodes have {frames} frames; "
                             "shorten the clips or their stride")
        for name in ("random_episodes", "wander_episodes", "goal_pose_episodes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.wander_hold < 1:
            raise ValueError(f"wander_hold must be at least 1, got {self.wander_hold}")
        if self.solved_distance < 0:
            raise ValueError(f"solved_distance must be >= 0 (0: unscaled), got "
                             f"{self.solved_distance}")
        if self.time_weight < 0 or self.time_unit <= 0:
            raise ValueError(f"time_weight must be >= 0 and time_unit > 0, got "
                             f"{self.time_weight} and {self.time_unit}")
        if self.goal_pose_noise < 0:
            raise ValueError(f"goal_pose_noise must be >= 0, got {self.goal_pose_noise}")
        if self.clips > self.episodes:
            raise ValueError("clips (distinct episodes per batch) exceeds the episodes")
        if self.layers not in holdc.BLOCK_SIZES:
            raise ValueError(f"layers {self.layers} not in {sorted(holdc.BLOCK_SIZES)}")
        if _last_stage_size(self.layers, self.image_size) < 2:
            smallest = next(s for s in range(8, 1024, 8) if _last_stage_size(self.layers, s) > 1)
            raise ValueError(
                f"image_size {self.image_size} leaves ResNet-{self.layers}'s last stage 1x1, "
                "where its stride-2 shortcut sees only the image's (constant) corner and "
                f"training stalls at the margin; use image_size >= {smallest}")

    @property
    def episodes(self) -> int:
        return (self.expert_episodes + self.goal_pose_episodes + self.random_episodes
                + self.wander_episodes)

    @property
    def clip_span(self) -> int:
        """Steps of footage one clip covers."""
        return (self.clip_length - 1) * self.clip_stride + 1

    @property
    def step_radii(self) -> tuple[int, int]:
        """(positive, negative) radius in steps of footage: the radii count clip frames."""
        return self.pos_radius * self.clip_stride, self.neg_radius * self.clip_stride

    @property
    def demonstrations(self) -> int:
        """Episodes of the expert (plain and goal-pose), cut short after success."""
        return self.expert_episodes + self.goal_pose_episodes

    @property
    def model(self) -> holdc.HoldCConfig:
        return holdc.HoldCConfig(num_layers=self.layers, num_filters=self.filters,
                                 embedding_size=self.embedding_size, crop_size=self.image_size)


def _last_stage_size(layers: int, image_size: int) -> int:
    """Side of the ResNet's last feature map: the stem and its pool halve the image, and so
    does every later stage."""
    side = -(-image_size // 4)
    for _ in holdc.BLOCK_SIZES[layers][0][1:]:
        side = -(-side // 2)
    return side


def default_model_dir(task: str) -> str:
    """Where the default model of ``task`` lives: ``$HOLD_TOP_DIR/holdjax_models/<task>/holdc``,
    or ``runs/reward_models/<task>/holdc`` without HOLD_TOP_DIR (as runs go to ``runs/``)."""
    top = os.environ.get("HOLD_TOP_DIR")
    base = os.path.join(top, "holdjax_models") if top else os.path.join("runs", "reward_models")
    return os.path.join(base, task, "holdc")


# --- footage ------------------------------------------------------------------------


@struct.dataclass
class Script:
    """Per-world behaviour of a scripted rollout: uniform random actions before
    ``random_until``, then the expert (scaled by ``speed``, plus noise of std ``noise``)
    until ``expert_until``, then random actions again; each random action is drawn at a
    step that is a multiple of ``action_hold`` and held until the next."""

    random_until: jax.Array  # (N,) int32
    expert_until: jax.Array  # (N,) int32
    speed: jax.Array  # (N,) float32
    noise: jax.Array  # (N,) float32
    action_hold: jax.Array  # (N,) int32, 1: a fresh random action every step
    start_hand: jax.Array  # (N, 3) float32 where the hand starts ...
    from_start_hand: jax.Array  # (N,) bool ... in these worlds (else the task's reset)


@struct.dataclass
class Footage:
    """Recorded episodes, world-major."""

    frames: jax.Array  # (N, T + 1, S, S, 3) uint8 central square crops of the camera image
    # (training's input), or (N, T + 1, H, W, 3) whole camera images (the check's)
    success: jax.Array  # (N, T + 1) bool
    subgoal: jax.Array  # (N, T + 1) int32 subgoals the state satisfies (EnvState.subgoal)
    qpos: jax.Array  # (N, T + 1, nq) float32 physics positions (for object-to-goal checks)


def sample_scripts(config: RewardTrainConfig, key: jax.Array, task: Task) -> Script:
    """``config.expert_episodes`` demonstration worlds with varied starts, speeds and noise,
    then ``goal_pose_episodes`` more whose hand starts near a goal image's hand pose, then
    ``random_episodes`` worlds acting at random throughout, then ``wander_episodes`` worlds
    acting at random with each action held ``wander_hold`` steps."""
    start, speed, noise = jax.random.split(key, 3)
    goal_key, offset_key = jax.random.split(jax.random.fold_in(key, 2))
    demos, n = config.demonstrations, config.episodes
    random_start = jax.random.randint(start, (n,), 0, config.max_random_start + 1)
    world = jnp.arange(n)
    goal_hands = jnp.stack([hand for _, hand in task.goal_worlds().values()])
    offsets = jax.random.uniform(offset_key, (n, 3), minval=-config.goal_pose_noise,
                                 maxval=config.goal_pose_noise)
    return Script(
        random_until=jnp.where(world < demos, random_start,
                               task.episode_length).astype(jnp.int32),
        expert_until=jnp.full((n,), task.episode_length, jnp.int32),
        speed=jax.random.uniform(speed, (n,), minval=config.min_speed, maxval=1.0),
        noise=jax.random.uniform(noise, (n,), maxval=config.max_noise),
        action_hold=jnp.where(world >= demos + config.random_episodes, config.wander_hold,
                              1).astype(jnp.int32),
        start_hand=(goal_hands[jax.random.randint(goal_key, (n,), 0, len(goal_hands))]
                    + offsets).astype(jnp.float32),
        from_start_hand=(world >= config.expert_episodes) & (world < demos),
    )


def scripted_actions(env: ManipulationEnv, script: Script, state: EnvState, key: jax.Array,
                     held: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(the worlds' actions, their random actions to hold), ``held`` being the last step's."""
    shape = (state.step_count.shape[0], env.action_dim)
    noise_key, random_key = jax.random.split(key)
    expert = jax.vmap(env.task.expert_action)(state.state) * script.speed[:, None]
    expert = expert + script.noise[:, None] * jax.random.normal(noise_key, shape)
    t = state.step_count
    fresh = (t % script.action_hold == 0)[:, None]
    uniform = jnp.where(fresh, jax.random.uniform(random_key, shape, minval=-1.0, maxval=1.0),
                        held)
    use_expert = (t >= script.random_until) & (t < script.expert_until)
    return jnp.where(use_expert[:, None], expert, uniform), uniform


def start_states(env: ManipulationEnv, script: Script, key: jax.Array) -> EnvState:
    """Each world's first state: ``env.reset(key, N)``'s, with the hand moved to
    ``script.start_hand`` in the worlds ``script.from_start_hand`` marks."""
    num_worlds = script.speed.shape[0]
    qpos, hand = jax.vmap(env.task.init_world)(jax.random.split(key, num_worlds))
    moved = script.from_start_hand[:, None]
    qpos = jnp.where(moved, jax.vmap(env.task.place_hand)(qpos, script.start_hand), qpos)
    return env.reset_at(qpos, jnp.where(moved, script.start_hand, hand))


def record(env: ManipulationEnv, script: Script, key: jax.Array, crop: bool = True) -> Footage:
    """One episode in each of the script's worlds (jittable); frames cropped to their
    central square when ``crop``."""
    num_worlds = script.speed.shape[0]
    reset_key, policy_key = jax.random.split(key)
    state = start_states(env, script, reset_key)

    def observe(state):
        frames = central_crop(state.obs) if crop else state.obs
        return frames, state.success, state.subgoal, state.data.qpos

    def body(carry, step_key):
        state, held = carry
        actions, held = scripted_actions(env, script, state, step_key, held)
        state = env.step(state, actions)
        return (state, held), observe(state)

    held = jnp.zeros((num_worlds, env.action_dim))
    _, steps = jax.lax.scan(body, (state, held),
                            jax.random.split(policy_key, env.episode_length))
    first = observe(state)
    frames, success, subgoal, qpos = (jnp.concatenate([f[None], s], axis=0).swapaxes(0, 1)
                                      for f, s in zip(first, steps, strict=True))
    return Footage(frames=frames, success=success, subgoal=subgoal,
                   qpos=qpos.astype(jnp.float32))


@functools.cache
def task_env(task: str) -> ManipulationEnv:
    """One env per task and process: building it and compiling its rollout cost ~30 s on a
    CPU, and ``train`` then ``check`` in one process should pay that once."""
    return envs.make(task)


@functools.cache
def _recorder(env: ManipulationEnv, crop: bool):
    return jax.jit(functools.partial(record, env, crop=crop))


def render_footage(env: ManipulationEnv, script: Script, key: jax.Array, num_envs: int,
                   desc: str = "rendering", crop: bool = True) -> Footage:
    """Episodes for every world of ``script``, ``num_envs`` at a time (the last batch padded,
    so one compiled rollout serves all), as numpy arrays; frames as :func:`record`'s."""
    crop = crop and env.image_shape[0] != env.image_shape[1]  # a square frame is its crop
    total = script.speed.shape[0]
    batches = -(-total // num_envs)
    padded = jax.tree.map(lambda x: jnp.resize(x, (batches * num_envs, *x.shape[1:])),
                          script)
    parts = []
    keys = jax.random.split(key, batches)
    for b in tqdm(range(batches), desc=desc, unit="batch", file=sys.stderr):
        part = jax.tree.map(operator.itemgetter(slice(b * num_envs, (b + 1) * num_envs)),
                            padded)
        parts.append(jax.device_get(_recorder(env, crop)(part, keys[b])))
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:total], *parts)


def first_reach(subgoal: np.ndarray, demonstrations: int, num_goals: int) -> np.ndarray:
    """(E, G) int: the first frame at which each of the first ``demonstrations`` episodes
    satisfies subgoal k + 1; -1 where it never does, and in every later (non-expert) episode."""
    subgoal = np.asarray(subgoal)
    reached = subgoal[:, :, None] >= np.arange(1, num_goals + 1)
    demo = (np.arange(len(subgoal)) < demonstrations)[:, None]
    return np.where(reached.any(axis=1) & demo, reached.argmax(axis=1), -1)


def steps_to_goals(subgoal: np.ndarray, demonstrations: int, num_goals: int) -> np.ndarray:
    """(E, T + 1, G) float32: for frame t of one of the first ``demonstrations`` episodes,
    the steps until the episode first satisfies subgoal k + 1 (0 from then on); -1 where the
    episode never does, and in every later (non-expert) episode, whose time to go is unknown."""
    first = first_reach(subgoal, demonstrations, num_goals)[:, None, :]
    t = np.arange(np.shape(subgoal)[1])[None, :, None]
    return np.where(first >= 0, np.maximum(first - t, 0), -1).astype(np.float32)


def usable_lengths(footage: Footage, config: RewardTrainConfig, experts: int) -> np.ndarray:
    """Frames per episode to train on: experts up to ``success_tail`` frames past their first
    success (at least one clip), random episodes whole."""
    num_episodes, num_frames = footage.success.shape
    succeeded = footage.success.any(axis=1)
    first = np.where(succeeded, footage.success.argmax(axis=1), num_frames)
    lengths = np.clip(first + 1 + config.success_tail, config.clip_span, num_frames)
    return np.where(np.arange(num_episodes) < experts, lengths, num_frames).astype(np.int32)


# --- the time-contrastive loss --------------------------------------------------------


def triplet_masks(timesteps: jax.Array, sequence_ids: jax.Array, pos_radius: int,
                  neg_radius: int) -> tuple[jax.Array, jax.Array]:
    """(positives, negatives), each (B, B) bool over (anchor, other): positives share the
    anchor's episode within ``pos_radius`` steps (not the anchor itself); negatives are
    beyond ``neg_radius`` steps in its episode, or in another episode."""
    chex.assert_rank([timesteps, sequence_ids], 1)
    chex.assert_equal_shape([timesteps, sequence_ids])
    same = sequence_ids[:, None] == sequence_ids[None, :]
    gap = jnp.abs(timesteps[:, None] - timesteps[None, :])
    positives = same & (gap <= pos_radius) & ~jnp.eye(timesteps.shape[0], dtype=bool)
    negatives = ~same | (gap > neg_radius)
    return positives, negatives


def pairwise_sq_distances(a: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """(A, B) squared Euclidean distances between the rows of ``a`` and of ``b`` (default
    ``a``)."""
    b = a if b is None else b
    chex.assert_rank([a, b], 2)
    return jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)


def semi_hard_negatives(sq_dist: jax.Array, negatives: jax.Array) -> jax.Array:
    """(B, B) index of the negative that anchor a pairs with positive p: the closest
    negative farther from a than p is, else a's farthest negative."""
    d_an = sq_dist[:, None, :]  # (a, ., n)
    d_ap = sq_dist[:, :, None]  # (a, p, .)
    neg = negatives[:, None, :]
    semi_hard = neg & (d_an > d_ap)
    closest = jnp.argmin(jnp.where(semi_hard, d_an, jnp.inf), axis=-1)
    farthest = jnp.argmax(jnp.where(negatives, sq_dist, -jnp.inf), axis=-1)
    return jnp.where(semi_hard.any(axis=-1), closest, farthest[:, None])


def triplet_loss(embeddings: jax.Array, timesteps: jax.Array, sequence_ids: jax.Array,
                 pos_radius: int = 2, neg_radius: int = 4,
                 margin: float = 0.2) -> tuple[jax.Array, jax.Array]:
    """(mean hinge over (anchor, positive) pairs, number of pairs). hold-rewards sums over
    the pairs instead; the mean reads the same at any batch size, and Adam barely cares."""
    chex.assert_rank(embeddings, 2)
    sq_dist = pairwise_sq_distances(embeddings)
    positives, negatives = triplet_masks(timesteps, sequence_ids, pos_radius, neg_radius)
    positives = positives & negatives.any(axis=1)[:, None]  # anchors with some negative
    d_an = jnp.take_along_axis(sq_dist, semi_hard_negatives(sq_dist, negatives), axis=1)
    hinge = jnp.maximum(0.0, margin + sq_dist - d_an)
    count = positives.sum()
    return jnp.sum(jnp.where(positives, hinge, 0.0)) / jnp.maximum(count, 1), count


# --- training --------------------------------------------------------------------------


@struct.dataclass
class Demos:
    """Training footage on the device."""

    frames: jax.Array  # (E, T + 1, S, S, 3) uint8
    lengths: jax.Array  # (E,) int32 usable frames per episode
    steps_to_goals: jax.Array  # (E, T + 1, G) float32 steps to reaching each goal, -1 unknown
    goals: jax.Array  # (G, S, S, 3) uint8 the goal images' central squares


@struct.dataclass
class TrainState:
    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    key: jax.Array


def sample_clips(key: jax.Array, demos: Demos, clips: int, clip_length: int,
                 stride: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``clips`` distinct random episodes, ``clip_length`` frames ``stride`` steps apart
    each from a random offset within their usable frames: frames (B, S, S, 3), timesteps
    (B,), episode ids (B,), with B = clips * clip_length."""
    episode_key, offset_key = jax.random.split(key)
    episodes = jax.random.choice(episode_key, demos.lengths.shape[0], (clips,), replace=False)
    room = demos.lengths[episodes] - (clip_length - 1) * stride
    offsets = jnp.floor(jax.random.uniform(offset_key, (clips,)) * room).astype(jnp.int32)
    timesteps = offsets[:, None] + stride * jnp.arange(clip_length)[None, :]
    frames = demos.frames[episodes[:, None], timesteps]
    ids = jnp.broadcast_to(episodes[:, None], timesteps.shape)
    return (frames.reshape(-1, *frames.shape[2:]), timesteps.reshape(-1), ids.reshape(-1))


def time_loss(embeddings: jax.Array, goal_embeddings: jax.Array, steps_to_goals: jax.Array,
              time_unit: float) -> jax.Array:
    """Mean Huber error of the frames' Euclidean distances (B, G) to the goals' embeddings
    against 1 + steps to go / ``time_unit``, over the (frame, goal) pairs whose steps to go
    are known (>= 0); 0 when none is."""
    chex.assert_rank([embeddings, goal_embeddings, steps_to_goals], 2)
    chex.assert_shape(steps_to_goals, (embeddings.shape[0], goal_embeddings.shape[0]))
    dist = jnp.sqrt(pairwise_sq_distances(embeddings, goal_embeddings) + 1e-12)
    known = steps_to_goals >= 0
    error = optax.huber_loss(dist, 1.0 + steps_to_goals / time_unit)
    return jnp.sum(jnp.where(known, error, 0.0)) / jnp.maximum(known.sum(), 1)


def _make_optimizer(config: RewardTrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, min(config.warmup_steps, config.steps - 1) + 1,
        config.steps + 1)
    return optax.adam(schedule)


def _init_state(config: RewardTrainConfig, key: jax.Array) -> TrainState:
    init_key, key = jax.random.split(key)
    size = config.image_size
    variables = jax.jit(holdc.build_model(config.model).init)(
        init_key, jnp.zeros((1, size, size, 3)))
    return TrainState(params=variables["params"], batch_stats=variables["batch_stats"],
                      opt_state=_make_optimizer(config).init(variables["params"]), key=key)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _train_step(config: RewardTrainConfig, demos: Demos,
                state: TrainState) -> tuple[TrainState, jax.Array]:
    """One Adam step on a freshly sampled batch of clips; returns the new state and loss."""
    key, sample_key = jax.random.split(state.key)
    frames, timesteps, ids = sample_clips(sample_key, demos, config.clips, config.clip_length,
                                          config.clip_stride)
    images = holdc.preprocess(config.model, frames)
    model = holdc.build_model(config.model)

    if config.time_weight:  # the goal images share the batch, so one forward pass serves
        images = jnp.concatenate([images, holdc.preprocess(config.model, demos.goals)])

    def loss_fn(params):
        embeddings, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, images, train=True,
            mutable=["batch_stats"])
        frames_embedded = embeddings[:timesteps.shape[0]]
        loss, _ = triplet_loss(frames_embedded, timesteps, ids, *config.step_radii,
                               config.margin)
        if config.time_weight:
            loss += config.time_weight * time_loss(
                frames_embedded, embeddings[timesteps.shape[0]:],
                demos.steps_to_goals[ids, timesteps], config.time_unit)
        return loss, updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = _make_optimizer(config).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params=params, batch_stats=batch_stats, opt_state=opt_state,
                      key=key), loss


@struct.dataclass
class Reached:
    """The demonstrations' first frames reaching each goal image: what the scale is set by."""

    frames: jax.Array  # (M, S, S, 3) uint8
    goal: jax.Array  # (M,) int32 index of the goal image each one reaches


def first_reached(footage: Footage, demonstrations: int, num_goals: int) -> Reached:
    """For goal image k (0-based) of ``num_goals``, every one of the first ``demonstrations``
    episodes' first frame whose state satisfies subgoal k + 1 (success, for one goal)."""
    first = first_reach(footage.subgoal, demonstrations, num_goals)
    frames, goals = [], []
    for k in range(num_goals):
        episodes = np.flatnonzero(first[:, k] >= 0)
        frames.append(np.asarray(footage.frames[episodes, first[episodes, k]]))
        goals.append(np.full(len(episodes), k, np.int32))
    return Reached(frames=np.concatenate(frames), goal=np.concatenate(goals))


def demonstrations(config: RewardTrainConfig, env: ManipulationEnv,
                   key: jax.Array) -> tuple[Demos, Reached]:
    """Renders the training footage; also returns its first frames reaching each goal."""
    script = sample_scripts(config, key, env.task)
    footage = render_footage(env, script, jax.random.fold_in(key, 1), config.num_envs,
                             desc=f"{config.task}: rendering demos")
    lengths = usable_lengths(footage, config, config.demonstrations)
    num_goals = env.task.num_subgoals
    reached = first_reached(footage, config.demonstrations, num_goals)
    goals = central_crop(jnp.asarray(load_goal_images(env.task)))
    return Demos(frames=jnp.asarray(footage.frames), lengths=jnp.asarray(lengths),
                 steps_to_goals=jnp.asarray(steps_to_goals(footage.subgoal,
                                                           config.demonstrations, num_goals)),
                 goals=goals), reached


def scale_embeddings(variables: dict, factor: float) -> dict:
    """``variables`` with the embedding head scaled by ``factor``, which scales every
    Euclidean distance between embeddings by ``factor``."""
    head = variables["params"]["output_projection"]
    params = {**variables["params"],
              "output_projection": jax.tree.map(lambda x: x * factor, head)}
    return {**variables, "params": params}


def in_chunks(fn, *inputs: np.ndarray, chunk: int = 512) -> np.ndarray:
    """``fn`` over ``inputs`` (each (B, ...)) in chunks of ``chunk`` along B, the last one
    padded with copies of the first row, so that every call has one compiled shape."""
    total = len(inputs[0])
    padded = [np.concatenate([x, np.repeat(x[:1], -total % chunk, axis=0)]) for x in inputs]
    out = [np.asarray(fn(*(jnp.asarray(x[i:i + chunk]) for x in padded)))
           for i in range(0, len(padded[0]), chunk)]
    return np.concatenate(out)[:total]


def median_reached_distance(config: RewardTrainConfig, variables: dict, reached: Reached,
                            goals: np.ndarray) -> float:
    """Median Euclidean distance of the first frames reaching each goal image to it."""
    if len(reached.goal) == 0:
        raise ValueError("no demonstration reached a goal image, so the distance scale is "
                         "undefined; render more expert_episodes or set solved_distance=0")
    model = dataclasses.replace(config.model, distance_type="eucl")
    to_goals = holdc.HoldCDistance(model, variables).to_goals(jnp.asarray(goals))
    dist = in_chunks(to_goals, reached.frames)
    return float(np.median(dist[np.arange(len(dist)), reached.goal]))


def calibrate(config: RewardTrainConfig, variables: dict, reached: Reached,
              goals: np.ndarray) -> tuple[dict, dict]:
    """(variables scaled to ``config.solved_distance``, what model.json records of it)."""
    solved = median_reached_distance(config, variables, reached, goals)
    factor = config.solved_distance / solved if config.solved_distance else 1.0
    return (scale_embeddings(variables, factor),
            {"solved_distance_unscaled": solved, "distance_scale": factor})


def fit(config: RewardTrainConfig, demos: Demos, quiet: bool = False) -> tuple[dict, list]:
    """Trains on ``demos``; returns the variables {'params', 'batch_stats'} and the losses
    (one per 10 steps)."""
    if int(demos.lengths.min()) < config.clip_span:
        raise ValueError(f"episodes shorter than a clip's span, {config.clip_span} frames")
    state = _init_state(config, jax.random.key(config.seed))
    losses = []
    bar = tqdm(range(config.steps), desc=f"{config.task}: HOLD-C", unit="step",
               file=sys.stderr, disable=quiet)
    for step in bar:
        state, loss = _train_step(config, demos, state)
        if step % 10 == 0 or step == config.steps - 1:
            losses.append(float(loss))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return {"params": state.params, "batch_stats": state.batch_stats}, losses


def save_model(out: str, config: RewardTrainConfig, variables: dict, info: dict) -> None:
    """``out/model.json`` and ``out/checkpoint``; written beside ``out`` first and then moved
    into place, so a killed run never leaves a half-written model that looks complete."""
    out = os.path.abspath(out)
    staging = f"{out}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    scenic_checkpoint.save_orbax(os.path.join(staging, CHECKPOINT_DIR),
                                 jax.tree.map(np.asarray, variables))
    model = {k: getattr(config.model, k) for k in ARCHITECTURE_FIELDS}
    record = {"model": model, "train": dataclasses.asdict(config), **info}
    with open(os.path.join(staging, MODEL_FILE), "w") as f:
        json.dump(record, f, indent=2)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(staging, out)


def model_exists(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MODEL_FILE))


def load_model(path: str, **overrides) -> holdc.HoldCDistance:
    """The model saved at ``path``; ``overrides`` set the HoldCConfig fields that are not its
    architecture (distance_type, distance_params, dtype)."""
    if not model_exists(path):
        raise FileNotFoundError(
            f"no holdjax HOLD-C model at {path} (no {MODEL_FILE}); train one with "
            "`python -m holdjax.reward.train --task=TASK --out=PATH`")
    config = holdc.HoldCConfig(**model_record(path)["model"], **overrides)
    variables = scenic_checkpoint.restore_orbax(os.path.join(path, CHECKPOINT_DIR), config)
    return holdc.HoldCDistance(config, variables)


def train(config: RewardTrainConfig, out: str, quiet: bool = False) -> dict:
    """Renders the footage, trains, saves to ``out``; returns what ``model.json`` records."""
    start = time.perf_counter()
    env = task_env(config.task)
    demos, reached = demonstrations(config, env, jax.random.key(config.seed))
    render_s = time.perf_counter() - start
    variables, losses = fit(config, demos, quiet)
    variables, scale = calibrate(config, variables, reached, np.asarray(demos.goals))
    info = {
        "task": config.task,
        "frames": int(demos.lengths.sum()),
        "final_loss": float(np.mean(losses[-10:])),
        **scale,
        "render_s": round(render_s, 1),
        "train_s": round(time.perf_counter() - start - render_s, 1),
        "device": jax.devices()[0].device_kind,
    }
    save_model(out, config, variables, info)
    return info


def ensure_default_model(task: str) -> str:
    """The default model's directory for ``task``, training it first (with the default
    settings) when it does not exist yet."""
    path = default_model_dir(task)
    if not model_exists(path) and jax.process_count() > 1:
        raise FileNotFoundError(
            f"reward holdc: no released HOLD-C checkpoint and no default model at {path}, and "
            f"a job of {jax.process_count()} processes does not train one (each process "
            f"would, at once); train it in one process first: python -m holdjax.reward.train "
            f"--task={task}")
    if not model_exists(path):
        print(f"reward holdc: no released HOLD-C checkpoint and no default model at {path}; "
              f"training holdjax's demo-trained HOLD-C for {task} first "
              "(python -m holdjax.reward.train)", file=sys.stderr)
        train(RewardTrainConfig(task=task), path)
    elif (stale := stale_settings(path)):
        print(f"reward holdc: the default model at {path} was trained with settings that are no "
              f"longer the defaults ({', '.join(stale)}); it is used as it is, and "
              f"`python -m holdjax.reward.train --task={task} --overwrite` retrains it",
              file=sys.stderr)
    return path


def model_record(path: str) -> dict:
    """What ``model.json`` of the model at ``path`` records (`save_model`)."""
    with open(os.path.join(path, MODEL_FILE)) as f:
        return json.load(f)


def model_task(path: str) -> str:
    """The task on whose footage the model at ``path`` was trained."""
    return model_record(path)["train"]["task"]


def stale_settings(path: str) -> list[str]:
    """The training settings of the model at ``path`` (its model.json) that differ from the
    current defaults for its task, e.g. a default model trained by an older holdjax."""
    used = model_record(path)["train"]
    defaults = dataclasses.asdict(RewardTrainConfig(task=used["task"]))
    return sorted(k for k, v in defaults.items() if k != "seed" and used.get(k) != v)


def parse_args(argv: list[str] | None = None) -> tuple[RewardTrainConfig, str]:
    parser = argparse.ArgumentParser(prog="python -m holdjax.reward.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(RewardTrainConfig):
        parser.add_argument(f"--{field.name}", type=type(field.default), default=None,
                            help=f"(default: {field.default})")
    parser.add_argument("--out", default="",
                        help="model directory (default: $HOLD_TOP_DIR/holdjax_models/<task>/"
                             "holdc, or runs/reward_models/<task>/holdc)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing model at --out")
    args = vars(parser.parse_args(argv))
    out, overwrite = args.pop("out"), args.pop("overwrite")
    given = {k: v for k, v in args.items() if v is not None}
    try:
        config = RewardTrainConfig(**given)
    except ValueError as e:
        parser.error(str(e))
    out = out or default_model_dir(config.task)
    if model_exists(out) and not overwrite:
        parser.error(f"a model already exists at {out}; pass --overwrite to replace it")
    return config, out


def main(argv: list[str] | None = None) -> dict:
    config, out = parse_args(argv)
    info = train(config, out)
    print(f"saved {out} (loss {info['final_loss']:.4f}, the mean of the last 10 logged, one "
          f"per 10 steps; render {info['render_s']} s, "
          f"train {info['train_s']} s); score it with "
          f"python -m holdjax.reward.check --task={config.task} --model={out}", file=sys.stderr)
    return info


if __name__ == "__main__":
    main()
