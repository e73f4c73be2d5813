"""One interface for every training reward: env (sparse), dense, and distance models."""

from __future__ import annotations

import sys
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from holdjax.envs.base import EnvState, ManipulationEnv
from holdjax.envs.goal_images import load_goal_image
from holdjax.reward import l2, shaping

DISTANCE_REWARDS = ("l2", "holdc")
REWARDS = ("sparse", "dense", *DISTANCE_REWARDS)

# frames (N, H, W, 3) uint8 -> (N, G) distances to the run's fixed goal images
DistanceToGoals = Callable[[jax.Array], jax.Array]


class RewardFunction:
    """Scores each world's frame after a step; its per-world state is a ShapingState."""

    def __init__(self, kind: str, config: shaping.ShapingConfig, goals: np.ndarray,
                 distance: DistanceToGoals | None = None):
        if kind not in REWARDS:
            raise ValueError(f"unknown reward {kind!r}; valid rewards: {', '.join(REWARDS)}")
        chex.assert_rank(goals, 4)
        self.kind = kind
        self.config = config
        self.goals = jnp.asarray(goals, jnp.uint8)  # (G, H, W, 3) subgoal images, in order
        if distance is None and kind == "l2":  # the one model that needs no weights
            distance = l2_to_goals(self.goals)
        if kind in DISTANCE_REWARDS and distance is None:
            raise ValueError(f"reward {kind!r} needs its distance model")
        self.distance = distance
        # The baseline: the model's distance of each goal to itself, computed once.
        self.baselines = (
            jnp.diagonal(self.distance(self.goals)) if self.distance else jnp.zeros(len(goals)))

    @property
    def num_goals(self) -> int:
        return self.goals.shape[0]

    def init(self, env_state: EnvState) -> shaping.ShapingState:
        """Reward state at an episode's start (its reset frames)."""
        num_worlds = env_state.obs.shape[0]
        state = shaping.init_shaping(self.config, num_worlds, self.num_goals)
        if self.distance is not None and self.config.subtract_prev_distance:
            _, scored, _ = self._shape(env_state, state)
            state = state.replace(prev=scored.prev)
        return state

    def __call__(
        self, env_state: EnvState, state: shaping.ShapingState
    ) -> tuple[jax.Array, shaping.ShapingState]:
        """Rewards (N,) for the frames in ``env_state`` (the observation after the step)."""
        if self.kind == "sparse":
            return env_state.reward, state
        if self.kind == "dense":
            return env_state.dense_reward, state
        reward, state, _ = self._shape(env_state, state)
        return reward, state

    def goal_image(self, state: shaping.ShapingState) -> jax.Array:
        """Each world's current subgoal image (N, H, W, 3), for goal-conditioned policies."""
        return self.goals[state.subtask]

    def _shape(self, env_state, state):
        distances = self.distance(env_state.obs)
        return shaping.shape_reward(self.config, distances, self.baselines,
                                    env_state.reward, state)


def l2_to_goals(goals: jax.Array) -> DistanceToGoals:
    return lambda frames: l2.l2_distance(frames, goals)


def released_holdc_checkpoint(path: str) -> str | None:
    """The released HOLD-C checkpoint file: at ``path`` (which must exist) when given, else
    at ``$HOLD_TOP_DIR/hold/holdc/checkpoint`` if present, else None."""
    from holdjax.reward import scenic_checkpoint

    if path:
        try:
            return scenic_checkpoint.find_checkpoint(path)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{e}. --reward_checkpoint names the released HOLD-C checkpoint "
                "(hold/holdc/checkpoint from the HOLD release, see README); leave it empty to "
                "use $HOLD_TOP_DIR's copy or, without one, holdjax's demo-trained model"
            ) from None
    try:
        return scenic_checkpoint.find_checkpoint(scenic_checkpoint.default_checkpoint_path())
    except FileNotFoundError:
        return None


def holdc_to_goals(config, task: str, goals: jax.Array) -> DistanceToGoals:
    """The run's HOLD-C model with the goals embedded once, here: the released checkpoint
    when there is one, else holdjax's demo-trained model of ``task`` (trained first if it
    does not exist yet). ``config.holdc_*`` describe the released network only; the demo
    model's architecture is read from its own ``model.json``."""
    from holdjax.reward import holdc, scenic_checkpoint
    from holdjax.reward import train as reward_train

    distance = dict(distance_type=config.distance_type, distance_params=config.distance_params,
                    dtype=config.reward_dtype)
    source = released_holdc_checkpoint(config.reward_checkpoint)
    if source is None:
        path = reward_train.ensure_default_model(task)
        print(f"reward holdc: holdjax's demo-trained HOLD-C {path} (trained on rendered robot "
              "demonstrations; the released one would be read from "
              "$HOLD_TOP_DIR/hold/holdc/checkpoint)", file=sys.stderr)
        model = reward_train.load_model(path, **distance)
    else:
        print(f"reward holdc: released HOLD-C checkpoint {source}", file=sys.stderr)
        model_config = holdc.HoldCConfig(
            num_layers=config.holdc_layers, num_filters=config.holdc_filters,
            embedding_size=config.holdc_embedding_size, crop_size=config.holdc_crop_size,
            **distance)
        model = scenic_checkpoint.load_holdc(model_config, source)
    return model.to_goals(goals)


def make_reward(config, env: ManipulationEnv) -> RewardFunction:
    """The reward ``config.reward`` for ``env``, with the task's committed goal images;
    ``config`` is a :class:`holdjax.config.TrainConfig`."""
    goals = np.stack([load_goal_image(name) for name in env.task.goal_worlds()])
    if goals.shape[1:3] != env.image_shape:
        raise ValueError(
            f"goal images are {goals.shape[1:3]} but the env renders {env.image_shape}; "
            "render matching goal images or use the task's image size")
    distance = (holdc_to_goals(config, env.task.name, jnp.asarray(goals))
                if config.reward == "holdc" else None)
    return RewardFunction(config.reward, config.shaping, goals, distance)
