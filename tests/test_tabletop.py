"""Behaviour of the DVD tabletop tasks cup_forward and faucet_right (physics impl 'jax'), and
the expert and random success rates of all three (close_drawer's too).

The tasks share one scene, reset and state layout, so one compiled physics-only episode
serves them all: the task picks the expert and the success criterion. Compiling the CLI's
rendered rollouts (tests/test_envs.py, pushing and drawer_open) for each tabletop task and
policy instead cost about 25 s each on the CI machine.
"""

import functools
import os

import jax
import jax.numpy as jnp
import mujoco_warp
import numpy as np
import pytest
from conftest import cached_env
from mujoco import mjx

from holdjax import envs
from holdjax.envs import tabletop
from holdjax.envs.base import ManipulationEnv, physics_overflow, sanitize_action

TASKS = ("close_drawer", "cup_forward", "faucet_right")
WORLDS = 16
# Random actions' success bound: close_drawer's is that of the CLI check (test_envs.py) it
# had before; random pushes move the mug or turn the faucet more often.
RANDOM_MAX_SUCCESS = {"close_drawer": 0.125, "cup_forward": 0.25, "faucet_right": 0.25}
# Awkward starts the expert must recover from: (task, hand position).
HARD_STARTS = (
    ("cup_forward", (0.01, 0.665, 0.015)),  # in front of the mug
    ("cup_forward", (0.06, 0.6, 0.015)),  # beside the mug
    ("faucet_right", (-0.29, 0.56, 0.093)),  # on the handle's wrong (-x) side
    ("faucet_right", (-0.33, 0.62, 0.05)),  # further round on the wrong side, low
)


@functools.cache
def scene():
    """(env, tasks by name, jitted episode) for the shared tabletop scene."""
    env = cached_env("cup_forward")
    tasks = {name: envs.make_task(name) for name in TASKS}
    experts = [jax.vmap(tasks[name].expert_action) for name in TASKS]
    successes = [jax.vmap(lambda s, t=tasks[name]: t.evaluate(s)["success"]) for name in TASKS]

    def episode(task_index, qpos, hand, key, expert_weight, noise):
        """States (T + 1, N, S) and success (T, N) of one episode from the given worlds,
        acting ``expert_weight * (expert + noise) + (1 - expert_weight) * uniform``."""
        data = jax.vmap(env._world_at, in_axes=(0, 0, None))(qpos, hand, WORLDS)
        first = jax.vmap(env.task.observe)(data)

        def body(data, step_key):
            state = jax.vmap(env.task.observe)(data)
            noise_key, random_key = jax.random.split(step_key)
            expert = jax.lax.switch(task_index, experts, state)
            expert = expert + noise * jax.random.normal(noise_key, expert.shape)
            uniform = jax.random.uniform(random_key, expert.shape, minval=-1.0, maxval=1.0)
            action = sanitize_action(expert_weight * expert + (1.0 - expert_weight) * uniform)
            data = jax.vmap(env._step_world)(data, action)
            state = jax.vmap(env.task.observe)(data)
            return data, (state, jax.lax.switch(task_index, successes, state))

        keys = jax.random.split(key, env.episode_length)
        _, (states, success) = jax.lax.scan(body, data, keys)
        return jnp.concatenate([first[None], states]), success

    return env, tasks, jax.jit(episode)


def start_worlds(task, hands=()):
    """(qpos, hand) of WORLDS worlds: the reset, with the first hands moved to ``hands``."""
    qpos, hand = jax.vmap(task.init_world)(jax.random.split(jax.random.PRNGKey(0), WORLDS))
    for i, position in enumerate(hands):
        position = jnp.array(position, jnp.float32)
        qpos = qpos.at[i].set(task.start_qpos(hand=position))
        hand = hand.at[i].set(position)
    return qpos, hand


def run(name, expert_weight, noise=0.0, hands=(), seed=0):
    """numpy (states, success) of one jitted episode of task ``name``."""
    _, tasks, episode = scene()
    qpos, hand = start_worlds(tasks[name], hands)
    states, success = episode(TASKS.index(name), qpos, hand, jax.random.PRNGKey(seed),
                              expert_weight, noise)
    return np.asarray(states), np.asarray(success)


@pytest.mark.parametrize("name", TASKS)
def test_reset_is_the_references_fixed_start(name):
    states, _ = run(name, expert_weight=0.0)
    start = states[0]
    np.testing.assert_array_equal(start, np.broadcast_to(start[0], start.shape))
    np.testing.assert_allclose(start[0, tabletop.HAND], [0.0, 0.5, 0.02], atol=0.01)
    np.testing.assert_allclose(start[0, tabletop.TARGET], [0.0, 0.5, 0.02], atol=1e-6)
    np.testing.assert_allclose(start[0, tabletop.MUG], [0.0, 0.6, 0.0], atol=0.005)
    np.testing.assert_allclose(start[0, tabletop.DRAWER], -0.07, atol=1e-6)
    np.testing.assert_allclose(start[0, tabletop.FAUCET], 0.0, atol=1e-6)
    task = envs.make_task(name)
    assert not bool(task.evaluate(jnp.asarray(start[0]))["success"])
    # Every key gives the same start (the reference's reset has no randomness).
    qpos, _ = jax.vmap(task.init_world)(jax.random.split(jax.random.PRNGKey(1), 3))
    np.testing.assert_array_equal(qpos, np.broadcast_to(qpos[0], qpos.shape))


@pytest.mark.parametrize("name", TASKS)
def test_noisy_expert_succeeds_and_recovers_from_awkward_starts(name):
    hands = [hand for task, hand in HARD_STARTS if task == name]
    _, success = run(name, expert_weight=1.0, noise=0.3, hands=hands)
    assert success.any(axis=0).all(), np.flatnonzero(~success.any(axis=0))
    assert success[-1].mean() >= 0.75, success[-1]  # and it stays solved


def test_cup_expert_leaves_the_mug_on_the_target_and_steps_aside():
    states, success = run("cup_forward", expert_weight=1.0)
    assert success[-1].all()
    final = states[-1]
    mug_to_target = np.linalg.norm(final[:, tabletop.MUG] - np.asarray(tabletop.MUG_TARGET), axis=1)
    assert (mug_to_target < 0.02).all(), mug_to_target
    np.testing.assert_allclose(final[:, tabletop.HAND], np.tile(tabletop.CUP_REST, (WORLDS, 1)),
                               atol=0.01)


def test_faucet_expert_turns_the_handle_right_to_its_goal():
    states, success = run("faucet_right", expert_weight=1.0)
    assert success[-1].all()
    faucet = states[:, :, tabletop.FAUCET]
    # It only ever turns right, and ends near the goal angle, within the joint range.
    assert (faucet <= 1e-3).all()
    np.testing.assert_allclose(faucet[-1], tabletop.FAUCET_GOAL, atol=0.1)
    assert (faucet[-1] > -1.57).all()


@pytest.mark.parametrize("name", TASKS)
def test_random_actions_mostly_fail(name):
    _, success = run(name, expert_weight=0.0, seed=1)
    assert success.any(axis=0).mean() <= RANDOM_MAX_SUCCESS[name]


def metrics_of(name, **parts):
    """``Task.evaluate`` of task ``name`` on a state that holds only ``parts`` (tabletop's
    state slices by name: MUG, HAND, DRAWER, FAUCET), as floats."""
    task = envs.make_task(name)
    state = jnp.zeros(task.state_dim)
    for part, value in parts.items():
        state = state.at[getattr(tabletop, part)].set(value)
    return {k: float(v) for k, v in task.evaluate(state).items()}


def test_cup_forward_success_and_dense_reward():
    target = np.asarray(tabletop.MUG_TARGET)

    def metrics(mug, hand):
        return metrics_of("cup_forward", MUG=mug, HAND=hand)

    # Success: the mug within 0.075 of the target in 3-D (the reference's criterion).
    assert metrics(target + [0.0, -0.0749, 0.0], target)["success"] == 1.0
    assert metrics(target + [0.0749, 0.0, 0.0], target)["reward"] == 1.0
    assert metrics(target + [0.0, -0.0751, 0.0], target)["success"] == 0.0
    assert metrics(target + [0.0, 0.0, 0.0751], target)["reward"] == 0.0
    # Dense: success - |mug - target| - |hand - target| (the hand term is to the target).
    solved = metrics(target + [0.03, 0.0, 0.0], target + [0.0, -0.04, 0.0])
    assert solved["dense_reward"] == pytest.approx(1.0 - 0.03 - 0.04, abs=1e-6)
    start = metrics([0.0, 0.6, 0.0], [0.0, 0.5, 0.02])
    assert start["dense_reward"] == pytest.approx(-0.1 - np.hypot(0.2, 0.02), abs=1e-6)


def test_close_drawer_success_and_dense_reward():
    hand_target = np.asarray(tabletop.DRAWER_DENSE_HAND)

    def metrics(drawer, hand=hand_target):
        return metrics_of("close_drawer", DRAWER=drawer, HAND=hand)

    # Success: the drawer joint above -0.05 (closed to within 5 cm); the start's -0.07 fails.
    assert metrics(-0.0499)["success"] == 1.0
    assert metrics(-0.0501)["reward"] == 0.0
    assert metrics(tabletop.DRAWER_START)["success"] == 0.0
    # Dense: success + q_drawer - |hand - the handle's dense target|.
    assert metrics(-0.01)["dense_reward"] == pytest.approx(1.0 - 0.01, abs=1e-6)
    away = metrics(-0.07, hand_target + [0.0, 0.03, 0.04])
    assert away["dense_reward"] == pytest.approx(-0.07 - 0.05, abs=1e-6)


def test_faucet_right_success_and_dense_reward():
    hand_target = np.asarray(tabletop.FAUCET_DENSE_HAND)

    def metrics(faucet, hand=hand_target):
        return metrics_of("faucet_right", FAUCET=faucet, HAND=hand)

    # Success: the faucet joint below -0.01 rad (turned right); left never counts.
    assert metrics(-0.0101)["success"] == 1.0
    assert metrics(-0.0099)["success"] == 0.0
    assert metrics(1.0)["reward"] == 0.0
    # Dense: success - q_faucet - |hand - (-0.27, 0.53, 0.11)|.
    assert metrics(-0.5)["dense_reward"] == pytest.approx(1.5, abs=1e-6)
    away = metrics(0.0, hand_target + [0.0, 0.0, 0.05])
    assert away["dense_reward"] == pytest.approx(-0.05, abs=1e-6)


def test_camera_images_are_120x180_and_mirrored():
    """Goal states render at the reference's 120 x 180, and differ from the same scene
    unsolved (hand in place) where the object is: the faucet (world x = -0.25) in the
    right half of the mirrored image, the mug (x = 0) in the middle."""
    env, tasks, _ = scene()
    worlds = []
    for name in ("cup_forward", "faucet_right"):
        (qpos, hand), = tasks[name].goal_worlds().values()
        worlds += [(tasks[name].start_qpos(hand=hand), hand), (qpos, hand)]
    images = np.asarray(jax.jit(env.render_worlds)(jnp.stack([q for q, _ in worlds]),
                                                   jnp.stack([h for _, h in worlds])))
    assert images.shape == (4, 120, 180, 3) and images.dtype == np.uint8
    cup, faucet = (np.abs(images[i + 1].astype(int) - images[i]).sum(axis=(0, 2))
                   for i in (0, 2))
    assert cup.sum() > 0 and faucet.sum() > 0
    assert faucet[90:].sum() > 10 * faucet[:90].sum()
    assert 60 < np.average(np.arange(180), weights=cup) < 120


# One close_drawer world's state and random action (world 498 of 2048, step 27, PRNGKey(1),
# benchmarks/NOTES.md) whose MuJoCo Warp step runs out of 10 line-search iterations while
# the mug rests on the table.
LINE_SEARCH_STEP = os.path.join(os.path.dirname(__file__), "data",
                                "close_drawer_line_search_step.npz")


def overflow_after_recorded_step(ls_iterations: int | None) -> int:
    """Warp's overflow bits after that step, with the scene's ls_iterations or the given."""
    task = envs.make_task("close_drawer")
    if ls_iterations is not None:
        task.mj_model.opt.ls_iterations = ls_iterations
    env = ManipulationEnv(task, impl="warp", render_obs=False)
    recorded = {name: jnp.asarray(value)[None] for name, value in np.load(LINE_SEARCH_STEP).items()}
    action = recorded.pop("action")
    state = env.reset(jax.random.PRNGKey(0), 1)
    state = state.replace(data=state.data.replace(**recorded))
    return int(physics_overflow(jax.jit(env.step)(state, action).data)[0])


def test_tabletop_line_search_does_not_run_out_where_ten_iterations_did():
    assert overflow_after_recorded_step(10) & mujoco_warp.OverflowType.LS_ITERATIONS
    assert overflow_after_recorded_step(None) == 0


def test_jax_physics_reports_no_overflow():
    model = envs.make_task("close_drawer").mj_model
    data = jax.vmap(lambda _: mjx.make_data(model, impl="jax"))(jnp.arange(2))
    np.testing.assert_array_equal(physics_overflow(data), [0, 0])
