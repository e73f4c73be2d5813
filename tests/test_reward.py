"""Reward shaping and the L2 distance against hand-computed values."""

import dataclasses
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from holdjax.reward.base import RewardFunction, RewardSettingsError
from holdjax.reward.l2 import l2_distance
from holdjax.reward.shaping import ShapingConfig, init_shaping, shape_reward


def test_l2_distance_of_known_images():
    goals = jnp.zeros((2, 2, 2, 3), jnp.uint8).at[1].set(255)
    frames = jnp.zeros((1, 2, 2, 3), jnp.uint8).at[0, 0, 0, 0].set(255)
    np.testing.assert_allclose(l2_distance(frames, goals), [[1.0, np.sqrt(11.0)]], rtol=1e-6)
    # A wide frame is compared by its central square, as the reference crops it: the side
    # columns do not count.
    wide = jnp.zeros((1, 2, 4, 3), jnp.uint8).at[0, :, 0].set(255).at[0, :, 3].set(255)
    wide_goals = jnp.zeros((1, 2, 4, 3), jnp.uint8)
    np.testing.assert_allclose(l2_distance(wide, wide_goals), [[0.0]])
    np.testing.assert_allclose(l2_distance(wide.at[0, 0, 1, 0].set(255), wide_goals), [[1.0]])


def test_baseline_clip_normalizer_and_weights():
    config = ShapingConfig(normalizer=5.0, distance_weight=2.0, env_weight=0.5)
    state = init_shaping(config, 3, 1)
    distances = jnp.array([[3.0], [0.5], [11.0]])
    reward, _, info = shape_reward(config, distances, jnp.array([1.0]), jnp.array([1.0, 0, 0]),
                                   state)
    # max(0, d - 1) / 5, negated, times 2, plus half the env reward.
    np.testing.assert_allclose(reward, [2 * -2 / 5 + 0.5, 0.0, 2 * -10 / 5], rtol=1e-6)
    np.testing.assert_allclose(info["distance"], [3.0, 0.5, 11.0])


def test_baseline_subtracted_from_normalizer():
    config = ShapingConfig(normalizer=5.0, subtract_baseline_from_normalizer=True, env_weight=0)
    reward, _, _ = shape_reward(config, jnp.array([[3.0]]), jnp.array([1.0]), jnp.zeros(1),
                                init_shaping(config, 1, 1))
    np.testing.assert_allclose(reward, [-2.0 / 4.0])


def test_subtract_prev_distance_rewards_progress():
    config = ShapingConfig(normalizer=1.0, subtract_prev_distance=True, env_weight=0)
    state = init_shaping(config, 1, 1).replace(prev=jnp.array([-4.0]))
    reward, state, _ = shape_reward(config, jnp.array([[3.0]]), jnp.zeros(1), jnp.zeros(1), state)
    np.testing.assert_allclose(reward, [-3.0 - -4.0])
    np.testing.assert_allclose(state.prev, [-3.0])


def test_subtasks_switch_after_exactly_hold_steps():
    config = ShapingConfig(normalizer=1.0, use_subtasks=True, subtask_threshold=1.0,
                           subtask_cost=2.0, subtask_hold_steps=3, env_weight=0)
    state = init_shaping(config, 2, 2)
    assert state.subtask.tolist() == [0, 0]
    baselines = jnp.zeros(2)
    # World 0 stays close to subgoal 1; world 1 is close, then far (resets its count).
    sequence = [[0.5, 0.5], [0.5, 0.5], [0.5, 3.0], [0.5, 0.5]]
    rewards, subtasks = [], []
    for d0 in sequence:
        distances = jnp.array([[d0[0], 9.0], [d0[1], 9.0]])
        reward, state, _ = shape_reward(config, distances, baselines, jnp.zeros(2), state)
        rewards.append(reward.tolist())
        subtasks.append(state.subtask.tolist())
    assert subtasks == [[0, 0], [0, 0], [1, 0], [1, 0]]
    # Before the switch: -(0.5 + 1 remaining subtask * cost 2); the switching step still
    # pays for the subtask it was on; after it, the distance to goal 2 with no cost.
    np.testing.assert_allclose([r[0] for r in rewards], [-2.5, -2.5, -2.5, -9.0])
    np.testing.assert_allclose([r[1] for r in rewards], [-2.5, -2.5, -5.0, -2.5])


def test_env_reward_replaced_by_threshold():
    config = ShapingConfig(normalizer=1.0, distance_weight=0.0,
                           env_reward_replace_threshold=1.0)
    reward, _, _ = shape_reward(config, jnp.array([[0.5], [1.5]]), jnp.zeros(1),
                                jnp.zeros(2), init_shaping(config, 2, 1))
    np.testing.assert_allclose(reward, [1.0, 0.0])


def test_a_normalizer_not_above_the_baseline_is_refused():
    """With subtract_baseline_from_normalizer, T = normalizer - baseline must stay positive
    (the reference asserts it): at or below, the reward would blow up or change sign."""
    goals = np.zeros((2, 4, 4, 3), np.uint8)

    def constant_distance(value):
        return lambda frames: jnp.full((frames.shape[0], 2), value)

    for normalizer, baseline in ((5.0, 5.0), (5.0, 6.0)):
        config = ShapingConfig(normalizer=normalizer, subtract_baseline_from_normalizer=True)
        with pytest.raises(RewardSettingsError, match=r"distance_normalizer 5.0 is not above "
                                                      r"the holdc model's baselines"):
            RewardFunction("holdc", config, goals, constant_distance(baseline))
    fine = ShapingConfig(normalizer=5.0, subtract_baseline_from_normalizer=True)
    np.testing.assert_allclose(
        RewardFunction("holdc", fine, goals, constant_distance(4.9)).baselines, [4.9, 4.9])
    RewardFunction("holdc", ShapingConfig(normalizer=5.0), goals, constant_distance(6.0))


def marked(*marks):
    """Frames (N, 2, 2, 3) whose first pixel holds each mark (a row of `table_distance`)."""
    marks = jnp.array(marks, jnp.uint8)
    return jnp.zeros((len(marks), 2, 2, 3), jnp.uint8).at[:, 0, 0, 0].set(marks)


def table_distance(rows):
    """A distance model that gives a frame marked m the distances ``rows[m]`` (G,)."""
    table = jnp.asarray(rows, jnp.float32)
    return lambda frames: table[frames[:, 0, 0, 0].astype(jnp.int32)]


def test_reward_function_baseline_is_goal_to_itself():
    # Goal g is marked g: its baseline is its own row's g-th distance (the diagonal).
    goals = marked(0, 1)
    fn = RewardFunction("holdc", ShapingConfig(), goals, table_distance([[0.3, 5.0],
                                                                          [7.0, 0.6]]))
    np.testing.assert_allclose(fn.baselines, [0.3, 0.6])
    images = np.random.default_rng(0).integers(0, 255, (2, 4, 4, 3), dtype=np.uint8)
    fn = RewardFunction("l2", ShapingConfig(), images)  # l2 builds its own distance
    np.testing.assert_allclose(fn.baselines, [0.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="valid rewards"):
        RewardFunction("holdq", ShapingConfig(), images)


def test_only_the_rewarded_goals_baselines_must_stay_below_the_normalizer():
    """Without subtasks a run rewards against the final goal only, so a subgoal whose
    baseline is above the normalizer does not matter; with subtasks it does."""
    distance = table_distance([[6.0, 9.0], [9.0, 1.0]])  # baselines 6 and 1
    config = ShapingConfig(normalizer=5.0, subtract_baseline_from_normalizer=True)
    RewardFunction("holdc", config, marked(0, 1), distance)
    with pytest.raises(RewardSettingsError, match=r"to itself: \[6.0, 1.0\]"):
        RewardFunction("holdc", dataclasses.replace(config, use_subtasks=True), marked(0, 1),
                       distance)


def test_the_reset_frame_sets_prev_and_counts_towards_the_hold_steps():
    """With subtract_prev_distance the reference scores the reset frame in full: its term is
    the first step's prev, and a reset frame near the subgoal is the first of its hold
    steps (here 2: one more step switches)."""
    config = ShapingConfig(normalizer=1.0, env_weight=0.0, subtract_prev_distance=True,
                           use_subtasks=True, subtask_threshold=1.0, subtask_cost=2.0,
                           subtask_hold_steps=2)
    # Rows 0-1: the goals (baselines 0); world 0's frames are rows 2 (near subgoal 0), world
    # 1's row 3 (far from it).
    fn = RewardFunction("holdc", config, marked(0, 1), table_distance(
        [[0.0, 9.0], [9.0, 0.0], [0.5, 4.0], [3.0, 9.0]]))
    state = fn.init(SimpleNamespace(obs=marked(2, 3), reward=jnp.zeros(2)))
    assert state.shaping.hold.tolist() == [1, 0] and state.shaping.subtask.tolist() == [0, 0]
    np.testing.assert_allclose(state.shaping.prev, [-(0.5 + 2.0), -(3.0 + 2.0)])
    reward, state = fn(SimpleNamespace(obs=marked(2, 3), reward=jnp.zeros(2)), state)
    assert state.shaping.subtask.tolist() == [1, 0]
    # The switching step still pays for subtask 0: the same term as at reset, no progress.
    np.testing.assert_allclose(reward, [0.0, 0.0])
    np.testing.assert_allclose(state.shaping.prev, [-2.5, -5.0])
