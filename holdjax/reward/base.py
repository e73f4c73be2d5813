"""One interface for every training reward: env (sparse), dense, and distance models."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from holdjax.envs.base import EnvState, ManipulationEnv
from holdjax.envs.goal_images import load_goal_image
from holdjax.reward import l2, shaping

DISTANCE_MODELS = {"l2": l2.l2_distance}
REWARDS = ("sparse", "dense", *DISTANCE_MODELS)


class RewardFunction:
    """Scores each world's frame after a step; its per-world state is a ShapingState."""

    def __init__(self, kind: str, config: shaping.ShapingConfig, goals: np.ndarray):
        if kind not in REWARDS:
            raise ValueError(f"unknown reward {kind!r}; valid rewards: {', '.join(REWARDS)}")
        chex.assert_rank(goals, 4)
        self.kind = kind
        self.config = config
        self.goals = jnp.asarray(goals, jnp.uint8)  # (G, H, W, 3) subgoal images, in order
        self.distance = DISTANCE_MODELS.get(kind)
        # The baseline: the model's distance of each goal to itself, computed once.
        self.baselines = (
            jnp.diagonal(self.distance(self.goals, self.goals))
            if self.distance else jnp.zeros(len(goals))
        )

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
        distances = self.distance(env_state.obs, self.goals)
        return shaping.shape_reward(self.config, distances, self.baselines,
                                    env_state.reward, state)


def make_reward(kind: str, config: shaping.ShapingConfig, env: ManipulationEnv) -> RewardFunction:
    """The reward ``kind`` for ``env``, with the task's committed goal images."""
    goals = np.stack([load_goal_image(name) for name in env.task.goal_worlds()])
    if goals.shape[1:3] != env.image_shape:
        raise ValueError(
            f"goal images are {goals.shape[1:3]} but the env renders {env.image_shape}; "
            "render matching goal images or use the task's image size")
    return RewardFunction(kind, config, goals)
