"""Rewards for training: the environment's own, and distance-to-goal-image models.

Every reward a run can use goes through :func:`make_reward`, which returns a
:class:`RewardFunction`: ``init`` builds the per-world reward state at an episode's reset
frame, ``__call__`` scores the frames after a step. Distance models (``l2``, ``holdc``,
``holdr``, ``r3m``, one module each) only provide distances to the run's goal images, of the
new frame or, for HOLD-R, of each world's kept frame history; the shaping of
``holdjax.reward.shaping`` (baseline, normaliser, subtasks, weights) is shared by all.
"""

from __future__ import annotations

from holdjax.reward.base import RewardFunction, make_reward

__all__ = ["RewardFunction", "make_reward"]
