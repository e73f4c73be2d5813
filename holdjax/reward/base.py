"""One interface for every training reward: env (sparse), dense, and distance models."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from holdjax.envs.base import EnvState, ManipulationEnv
from holdjax.envs.goal_images import load_goal_images
from holdjax.reward import holdr, l2, shaping

DISTANCE_REWARDS = ("l2", "holdc", "holdr", "r3m")
REWARDS = ("sparse", "dense", *DISTANCE_REWARDS)
MODEL_NAMES = {"holdc": "HOLD-C", "holdr": "HOLD-R"}

# The model's input (uint8 frames (N, H, W, 3), or history features (N, L, F)) -> (N, G)
# distances to the run's fixed goal images.
DistanceToGoals = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class FrameHistory:
    """How a model that reads each world's recent frames (HOLD-R) keeps them: ``features``
    maps new uint8 frames (N, H, W, 3) to what is kept per frame (N, F); ``length`` frames
    are kept, oldest first, padded at an episode's start by repeating its first frame."""

    features: Callable[[jax.Array], jax.Array]
    length: int


@struct.dataclass
class RewardState:
    """Each world's reward state: the shaping's, and for history models the kept features
    of its last frames (N, L, F); None for single-frame models."""

    shaping: shaping.ShapingState
    history: jax.Array | None = None


class RewardSettingsError(ValueError):
    """Reward settings that do not fit the reward model (found once it is loaded)."""


class RewardFunction:
    """Scores each world's frame (or recent frames) after a step; its per-world state is a
    :class:`RewardState`."""

    def __init__(self, kind: str, config: shaping.ShapingConfig, goals: np.ndarray,
                 distance: DistanceToGoals | None = None, history: FrameHistory | None = None,
                 source: str | None = None):
        if kind not in REWARDS:
            raise ValueError(f"unknown reward {kind!r}; valid rewards: {', '.join(REWARDS)}")
        chex.assert_rank(goals, 4)
        self.kind = kind
        self.config = config
        self.goals = jnp.asarray(goals, jnp.uint8)  # (G, H, W, 3) subgoal images, in order
        if distance is None and kind == "l2":  # the one model that needs no weights
            distance = _l2_to_goals(self.goals)
        if kind in DISTANCE_REWARDS and distance is None:
            raise ValueError(f"reward {kind!r} needs its distance model")
        self.distance = distance
        self.history = history
        self.source = source  # where the distance model's weights came from, if anywhere
        # The baseline: the model's distance of each goal to itself (as history: the goal
        # repeated), computed once.
        self.baselines = (jnp.diagonal(self.distance(self._model_input(self.goals, None)[0]))
                          if self.distance else jnp.zeros(len(goals)))
        # Only the goals a run rewards against count: all subgoals with subtasks, else the
        # final goal (the reference builds and asserts only the baselines it uses).
        used = np.asarray(self.baselines) if config.use_subtasks else np.asarray(
            self.baselines)[-1:]
        if config.subtract_baseline_from_normalizer and np.any(config.normalizer - used <= 0):
            raise RewardSettingsError(
                f"distance_normalizer {config.normalizer} is not above the {kind} model's "
                f"baselines (the distance of each goal image it rewards against to itself: "
                f"{np.round(used, 4).tolist()}), so the normalizer less "
                "the baseline would flip or blow up the reward (the reference asserts it): "
                "raise --distance_normalizer or turn subtract_baseline_from_normalizer off")

    @property
    def num_goals(self) -> int:
        return self.goals.shape[0]

    def init(self, env_state: EnvState) -> RewardState:
        """Reward state at an episode's start (its reset frames). With
        ``subtract_prev_distance`` the reset frame is scored as the reference scores it: its
        term becomes the first ``prev``, and it counts towards a subtask's hold steps."""
        num_worlds = env_state.obs.shape[0]
        model_input, history = self._model_input(env_state.obs, None)
        state = shaping.init_shaping(self.config, num_worlds, self.num_goals)
        if self.distance is not None and self.config.subtract_prev_distance:
            _, state = self._shape(model_input, env_state.reward, state)
        return RewardState(state, history)

    def __call__(self, env_state: EnvState,
                 state: RewardState) -> tuple[jax.Array, RewardState]:
        """Rewards (N,) for the frames in ``env_state`` (the observation after the step)."""
        if self.kind == "sparse":
            return env_state.reward, state
        if self.kind == "dense":
            return env_state.dense_reward, state
        model_input, history = self._model_input(env_state.obs, state.history)
        reward, shaped = self._shape(model_input, env_state.reward, state.shaping)
        return reward, RewardState(shaped, history)

    def goal_image(self, state: RewardState) -> jax.Array:
        """Each world's current subgoal image (N, H, W, 3), for goal-conditioned policies."""
        return self.goals[state.shaping.subtask]

    def _model_input(self, frames: jax.Array,
                     history: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        """(what the distance model scores, the new history) for new frames: the frames
        themselves, or the history with their features pushed (started, padded with them,
        when None)."""
        if self.history is None:
            return frames, None
        features = self.history.features(frames)
        history = (holdr.init_history(features, self.history.length) if history is None
                   else holdr.push_history(history, features))
        return history, history

    def _shape(self, model_input: jax.Array, env_reward: jax.Array,
               state: shaping.ShapingState) -> tuple[jax.Array, shaping.ShapingState]:
        reward, shaped, _ = shaping.shape_reward(self.config, self.distance(model_input),
                                                 self.baselines, env_reward, state)
        return reward, shaped


def _l2_to_goals(goals: jax.Array) -> DistanceToGoals:
    return lambda frames: l2.l2_distance(frames, goals)


def released_checkpoint(path: str, model: str = "holdc") -> str | None:
    """The released ``model`` (holdc or holdr) checkpoint file: at ``path`` (which must exist)
    when given, else at ``$HOLD_TOP_DIR/hold/<model>/checkpoint`` if present, else None."""
    from holdjax.reward import scenic_checkpoint

    if path:
        try:
            return scenic_checkpoint.find_checkpoint(path)
        except FileNotFoundError as e:
            fallback = ("$HOLD_TOP_DIR's copy or, without one, holdjax's demo-trained model"
                        if model == "holdc" else "$HOLD_TOP_DIR's copy")
            own = (" or a model folder written by python -m holdjax.reward.train"
                   if model == "holdc" else "")
            raise FileNotFoundError(
                f"{e}. --reward_checkpoint names the released {MODEL_NAMES[model]} checkpoint "
                f"(hold/{model}/checkpoint from the HOLD release, see README){own}; leave it "
                f"empty to use {fallback}") from None
    try:
        return scenic_checkpoint.find_checkpoint(
            scenic_checkpoint.default_checkpoint_path(model))
    except FileNotFoundError:
        return None


def holdr_model(config):
    """The released HOLD-R model (there is no demo-trained stand-in: holdjax trains HOLD-C
    only), its architecture read from the checkpoint, and the checkpoint's path."""
    from holdjax.reward import scenic_checkpoint

    source = released_checkpoint(config.reward_checkpoint, "holdr")
    if source is None:
        raise FileNotFoundError(
            "reward holdr needs the released HOLD-R checkpoint: put it at "
            "$HOLD_TOP_DIR/hold/holdr/checkpoint or pass --reward_checkpoint=PATH (download "
            "locations in the README); holdjax can train only a HOLD-C stand-in "
            "(--reward=holdc)")
    print(f"reward holdr: released HOLD-R checkpoint {source}", file=sys.stderr)
    return scenic_checkpoint.load_holdr(source, dtype=jnp.dtype(config.reward_dtype),
                                        attention=config.holdr_attention), source


def _distance_settings(config) -> dict:
    """The run's distance settings, which apply to every HOLD-C model (released or not)."""
    return dict(distance_type=config.distance_type, distance_params=config.distance_params,
                dtype=config.reward_dtype)


def released_holdc_config(config):
    """The released HOLD-C network that the run's ``holdc_*`` fields describe."""
    from holdjax.reward import holdc

    return holdc.HoldCConfig(
        num_layers=config.holdc_layers, num_filters=config.holdc_filters,
        embedding_size=config.holdc_embedding_size, crop_size=config.holdc_crop_size,
        **_distance_settings(config))


def holdc_to_goals(config, task: str, goals: jax.Array) -> tuple[DistanceToGoals, str]:
    """The run's HOLD-C model with the goals embedded once, here, and where it came from:
    ``--reward_checkpoint`` (a released checkpoint, or a model directory written by
    ``holdjax.reward.train``), else the released checkpoint under ``$HOLD_TOP_DIR``, else
    holdjax's demo-trained model of ``task`` (trained first if it does not exist yet).
    ``config.holdc_*`` describe the released network only; a demo model's architecture is
    read from its own ``model.json``."""
    from holdjax.reward import scenic_checkpoint
    from holdjax.reward import train as reward_train

    if config.reward_checkpoint and reward_train.model_exists(config.reward_checkpoint):
        source, released = config.reward_checkpoint, False
    else:
        source = released_checkpoint(config.reward_checkpoint)
        released = source is not None
        source = source if released else reward_train.ensure_default_model(task)
    if released:
        print(f"reward holdc: released HOLD-C checkpoint {source}", file=sys.stderr)
        model = scenic_checkpoint.load_holdc(released_holdc_config(config), source)
    else:
        print(f"reward holdc: holdjax's demo-trained HOLD-C {source} (trained on rendered robot "
              "demonstrations; the released one would be read from "
              "$HOLD_TOP_DIR/hold/holdc/checkpoint)", file=sys.stderr)
        model = reward_train.load_model(source, **_distance_settings(config))
        if (trained_on := reward_train.model_task(source)) != task:
            print(f"warning: {source} was trained on {trained_on}'s footage, not {task}'s: how "
                  f"well it ranks {task}'s frames is unknown (python -m holdjax.reward.check "
                  f"--task={task} --model={source} measures it)", file=sys.stderr)
    return model.to_goals(goals), source


def _r3m_model(config):
    """The public R3M ResNet (figure 5's baseline: ResNet-50) from ``--reward_checkpoint`` or
    its default location (:func:`holdjax.reward.r3m.default_weights_path`), and that path; no
    torch needed."""
    from holdjax.reward import r3m

    source = config.reward_checkpoint or r3m.default_weights_path()
    model = r3m.load_r3m(source, dtype=config.reward_dtype)
    print(f"reward r3m: R3M ResNet-{model.config.num_layers} from {source}", file=sys.stderr)
    return model, source


def make_reward(config, env: ManipulationEnv) -> RewardFunction:
    """The reward ``config.reward`` for ``env``, with the task's committed goal images;
    ``config`` is a :class:`holdjax.config.TrainConfig`."""
    goals = load_goal_images(env.task)
    if goals.shape[1:3] != env.image_shape:
        raise ValueError(
            f"goal images are {goals.shape[1:3]} but the env renders {env.image_shape}; "
            "render matching goal images or use the task's image size")
    if config.reward == "holdr":
        model, source = holdr_model(config)
        return RewardFunction("holdr", config.shaping, goals, model.to_goals(jnp.asarray(goals)),
                              FrameHistory(model.features, model.history_length), source)
    distance, source = None, None
    if config.reward == "holdc":
        distance, source = holdc_to_goals(config, env.task.name, jnp.asarray(goals))
    elif config.reward == "r3m":
        model, source = _r3m_model(config)
        distance = model.to_goals(jnp.asarray(goals))
    return RewardFunction(config.reward, config.shaping, goals, distance, source=source)
