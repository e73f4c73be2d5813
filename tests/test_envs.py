"""Behaviour of the batched task environments (physics impl 'jax', the fast one on CPUs)."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Lane, jitted

from holdjax import envs
from holdjax.envs import drawer_open as drawer_module
from holdjax.envs import pushing as pushing_module
from holdjax.envs.__main__ import main as envs_cli
from holdjax.envs.base import image_to_float, sanitize_action

TASKS = envs.TASKS
# Worlds per batch in the pushing tests: one size, so that they share one compiled reset and
# one compiled step (compiling them again for each batch size cost ~20 s a size on the CI).
WORLDS = 4


# The CLI's rollouts (success rates of the noisy expert and of random actions) run in one
# background process, started with the module, while its other tests compile: each rollout
# is a program of its own. The DVD tabletop tasks (close_drawer, cup_forward, faucet_right):
# tests/test_tabletop.py checks their rates on one physics-only program, cheaper than
# compiling these rendered rollouts for each.
CLI_TASKS = ("pushing", "drawer_open")
CLI_RUNS = {
    (task, policy): [f"--task={task}", f"--policy={policy}", "--episodes=8", "--json",
                     "--impl=jax", *(["--noise=0.2"] if policy == "expert" else [])]
    for task in CLI_TASKS for policy in ("expert", "random")
}
CLI_SCRIPT = """
import json, sys
from holdjax.envs.__main__ import main
for args in json.loads(sys.argv[1]):
    main(args)
"""


@pytest.fixture(scope="module", autouse=True)
def cli_results():
    """A function waiting for the CLI runs: {(task, policy): the JSON each printed}."""
    lane = Lane()
    future = lane.submit("-c", CLI_SCRIPT, json.dumps(list(CLI_RUNS.values())))

    @functools.cache
    def results():
        printed = [line for line in future.result().splitlines() if line.startswith("{")]
        return dict(zip(CLI_RUNS, map(json.loads, printed), strict=True))

    yield results
    lane.close()


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid tasks: .*pushing"):
        envs.make_task("stacking")
    with pytest.raises(ValueError, match="valid tasks: .*pushing"):
        envs.task_class("stacking")
    assert envs.task_class("pushing").episode_length == 100


@pytest.mark.parametrize("timestep", [0.0, -0.005, 0.003])
def test_a_timestep_that_cannot_make_the_control_period_is_refused(timestep):
    with pytest.raises(ValueError, match="must be positive and divide the control period"):
        envs.make_task("pushing", timestep=timestep)
    assert envs.make_task("pushing", timestep=0.01).substeps == 10


def test_envs_cli_refuses_a_video_format_before_rolling_out(monkeypatch, capsys):
    monkeypatch.setattr(envs, "make", lambda *a, **k: pytest.fail("rolled out"))
    with pytest.raises(SystemExit):
        envs_cli(["--task=pushing", "--video=out.avi"])
    assert "video path must end in .mp4 or .gif, got 'out.avi'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        envs_cli(["--task=pushing", "--impl=cuda"])
    assert "unknown physics impl 'cuda'; valid: auto, warp, jax" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        envs_cli(["--task=pushing", "--noise=-1"])
    assert "--noise is the std of the expert's action noise: >= 0, got -1.0" in (
        capsys.readouterr().err)


def test_each_mesh_position_renders_on_its_own_hosts_gpu():
    """Warp devices of the renderers, one per mesh position: on one host, position k is
    cuda:k; in a job of two hosts with one GPU each, each host's own position is its cuda:0,
    and the other host's position (a branch it never runs) a placeholder on its own GPU."""
    import types

    from holdjax.envs.base import render_device

    one_host = [types.SimpleNamespace(process_index=0, local_hardware_id=k) for k in range(2)]
    assert [render_device(k, one_host, 0) for k in range(2)] == ["cuda:0", "cuda:1"]
    two_hosts = [types.SimpleNamespace(process_index=k, local_hardware_id=0) for k in range(2)]
    assert [render_device(k, two_hosts, 1) for k in range(2)] == ["cuda:0", "cuda:0"]
    four = [types.SimpleNamespace(process_index=k // 2, local_hardware_id=k % 2)
            for k in range(4)]
    assert [render_device(k, four, 1) for k in range(4)] == ["cuda:0", "cuda:0", "cuda:0",
                                                            "cuda:1"]


def test_a_video_path_that_cannot_be_written_is_refused_up_front(tmp_path):
    """A folder named like a video, or a place no file can be made, is refused before any
    rollout (as `holdjax.envs` and `holdjax.evaluate` check it); missing folders are fine."""
    from holdjax.video import check_video_path

    check_video_path(str(tmp_path / "new" / "folders" / "rollout.mp4"))
    (tmp_path / "dir.gif").mkdir()
    with pytest.raises(ValueError, match="is a folder; name a file in it"):
        check_video_path(str(tmp_path / "dir.gif"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is not a writable folder"):
        check_video_path(str(tmp_path / "file" / "rollout.mp4"))


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match="unknown physics impl"):
        envs.make("pushing", impl="cuda")


def test_an_action_of_the_wrong_shape_is_refused_with_the_tasks_shape(pushing):
    env, reset, _ = pushing
    state = reset(jax.random.PRNGKey(0), WORLDS)
    with pytest.raises(ValueError, match=rf"pushing takes actions of shape \(worlds, 2\) = "
                       rf"\({WORLDS}, 2\), each component in \[-1, 1\]; got \({WORLDS}, 4\)"):
        env.step(state, jnp.zeros((WORLDS, 4)))


def test_the_hand_target_leads_the_hand_by_at_most_max_lead_within_the_bounds():
    """drawer_open's target stops 5 cm ahead of a blocked hand and at the bounds; pushing
    (no lead limit, as the reference) lets it run on."""
    from types import SimpleNamespace

    def data_with_hand_at(task, hand):
        qpos = task.place_hand(jnp.asarray(task.mj_model.qpos0), jnp.asarray(hand))
        mocap = jnp.zeros((task.mj_model.nmocap, 3)).at[task.hand_target_mocap].set(hand)
        return SimpleNamespace(qpos=qpos, mocap_pos=mocap)

    drawer = envs.make_task("drawer_open")
    low, high = drawer_module.HAND_LOW, drawer_module.HAND_HIGH
    data = data_with_hand_at(drawer, [0.0, 0.6, 0.2])
    np.testing.assert_allclose(drawer.moved_hand_target(data, jnp.array([0.0, 0.1, -0.03]),
                                                        low, high), [0.0, 0.65, 0.17], atol=1e-6)
    data = data_with_hand_at(drawer, [0.0, 0.98, 0.2])
    np.testing.assert_allclose(drawer.moved_hand_target(data, jnp.array([0.0, 0.04, 0.0]),
                                                        low, high), [0.0, 1.0, 0.2], atol=1e-6)
    pushing = envs.make_task("pushing")
    data = data_with_hand_at(pushing, [0.0, 0.5, 0.05])
    np.testing.assert_allclose(pushing.moved_hand_target(
        data, jnp.array([0.0, 0.1, 0.0]), pushing_module.HAND_LOW, pushing_module.HAND_HIGH),
        [0.0, 0.6, 0.05], atol=1e-6)


def test_sanitize_action_clips_and_zeroes_nan():
    action = jnp.array([2.0, -3.0, jnp.nan, jnp.inf, 0.25])
    np.testing.assert_array_equal(sanitize_action(action), [1.0, -1.0, 0.0, 1.0, 0.25])


def test_image_to_float_range():
    image = jnp.array([[0, 128, 255]], jnp.uint8)
    np.testing.assert_allclose(image_to_float(image), [[0.0, 128 / 255, 1.0]])


def test_pushing_reset_distribution_and_determinism(pushing):
    env, reset, _ = pushing

    def reset_64(seed):
        """64 worlds: 16 resets of WORLDS worlds, from keys split off one seed."""
        keys = jax.random.split(jax.random.PRNGKey(seed), 64 // WORLDS)
        states = [reset(key, WORLDS) for key in keys]
        return {name: np.concatenate([getattr(s, name) for s in states])
                for name in ("state", "obs", "success", "done", "step_count")}

    state = reset_64(0)
    puck = state["state"][:, 3:6]
    assert np.all(np.abs(puck[:, 0]) <= 0.1) and puck[:, 0].std() > 0.03
    np.testing.assert_allclose(puck[:, 1], 0.6, atol=1e-5)
    np.testing.assert_allclose(state["state"][:, 0:3], np.tile([0, 0.2, 0.07], (64, 1)),
                               atol=1e-4)
    assert not state["success"].any() and not state["done"].any()
    assert (state["step_count"] == 0).all()
    again = reset_64(0)
    np.testing.assert_array_equal(state["state"], again["state"])
    np.testing.assert_array_equal(state["obs"], again["obs"])
    other = reset_64(1)
    assert not np.allclose(state["state"][:, 3], other["state"][:, 3])
    # Worlds of one reset differ from each other too (each draws with its own key).
    assert len(set(state["state"][:WORLDS, 3].tolist())) == WORLDS


def test_pushing_observation_image(pushing):
    env, reset, _ = pushing
    state = reset(jax.random.PRNGKey(0), WORLDS)
    assert state.obs.shape == (WORLDS, 48, 48, 3) and state.obs.dtype == jnp.uint8
    obs = np.asarray(state.obs)
    assert obs.min() < 60 and obs.max() > 100  # not blank: dark goal square, grey table
    # The red mug is visible: some pixels are strongly red.
    red = (obs[..., 0].astype(int) - obs[..., 1]) > 80
    assert red.reshape(WORLDS, -1).any(axis=1).all()


def test_pushing_step_semantics(pushing):
    env, reset, step = pushing
    state = reset(jax.random.PRNGKey(0), WORLDS)
    right = step(state, jnp.tile(jnp.array([1.0, 1.0]), (WORLDS, 1)))
    # First step: mocap (0, 0.2, 0.07) + 0.02 -> clipped into y >= 0.3, z to its bound 0.05.
    np.testing.assert_allclose(right.state[:, 6:9], np.tile([0.02, 0.3, 0.05], (WORLDS, 1)),
                               atol=1e-6)
    assert (right.step_count == 1).all() and not right.done.any()
    # Out-of-range actions are clipped: 5.0 acts as 1.0. (float32 actions: a weakly typed
    # jnp.full would compile the step again.)
    clipped = step(state, jnp.full((WORLDS, 2), 5.0, jnp.float32))
    np.testing.assert_allclose(clipped.state, right.state, atol=1e-6)
    # NaN actions are treated as "no motion" and never reach the physics state.
    nan = step(state, jnp.full((WORLDS, 2), jnp.nan, jnp.float32))
    still = step(state, jnp.zeros((WORLDS, 2)))
    np.testing.assert_array_equal(nan.state, still.state)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(nan.data) if x.dtype.kind == "f")


def test_each_world_steps_as_if_alone(pushing):
    """Worlds do not interact: world i's step (physics and image) is the same whatever the
    other worlds hold, here each of them replaced by world i + 1's state and action. (One
    compiled step: a one-world step to compare with cost ~45 s more to compile on CI.)"""
    env, reset, step = pushing
    state = reset(jax.random.PRNGKey(3), WORLDS)
    actions = jax.random.uniform(jax.random.PRNGKey(4), (WORLDS, 2), minval=-1, maxval=1)
    batched = step(state, actions)
    for i in range(WORLDS):
        pick = np.full(WORLDS, (i + 1) % WORLDS)
        pick[i] = i
        mixed = step(jax.tree.map(lambda x, pick=pick: x[pick], state), actions[pick])
        np.testing.assert_allclose(mixed.state, batched.state[pick], atol=1e-5)
        np.testing.assert_array_equal(mixed.obs, batched.obs[pick])


def test_episode_ends_at_time_limit(pushing):
    env, reset, step = pushing
    state = reset(jax.random.PRNGKey(0), WORLDS)
    state = state.replace(step_count=state.step_count + env.episode_length - 2)
    state = step(state, jnp.zeros((WORLDS, 2)))  # step episode_length - 1: not yet
    assert not state.done.any() and (state.step_count == env.episode_length - 1).all()
    state = step(state, jnp.zeros((WORLDS, 2)))
    assert state.done.all()


def test_render_follows_state(pushing):
    env, _, _ = pushing
    render = jax.jit(env.render_worlds)
    qpos, hand = env.task.goal_worlds()["pushing"]
    moved = qpos.at[env.task.puck_qpos].add(0.08)
    images = np.asarray(render(jnp.stack([qpos, qpos, moved]), jnp.stack([hand] * 3)))
    np.testing.assert_array_equal(images[0], images[1])
    assert np.abs(images[0].astype(int) - images[2]).sum() > 1000


def test_pushing_success_threshold():
    task = pushing_module.Pushing()
    goal = np.asarray(pushing_module.GOAL)

    def success(l1):
        state = jnp.zeros(9).at[3:5].set(goal + jnp.array([l1 / 2, -l1 / 2]))
        return bool(task.evaluate(state)["success"]), float(task.evaluate(state)["reward"])

    assert success(0.0299) == (True, 1.0)
    assert success(0.0301) == (False, 0.0)


def test_pushing_dense_reward_adds_success_to_the_distance_terms():
    """dense = success - |puck - goal| - 0.5 |hand - puck|: crossing the success threshold
    is worth 1, far more than the distance terms change there."""
    task = pushing_module.Pushing()
    goal = jnp.asarray(pushing_module.GOAL)

    def dense(offset):
        puck = goal + jnp.array([offset, 0.0])
        state = jnp.zeros(9).at[0:2].set(puck - jnp.array([0.0, 0.04])).at[3:5].set(puck)
        return float(task.evaluate(state)["dense_reward"])

    assert dense(0.0) == pytest.approx(1.0 - 0.02, abs=1e-6)
    assert dense(0.029) == pytest.approx(1.0 - 0.029 - 0.02, abs=1e-6)
    assert dense(0.031) == pytest.approx(-0.031 - 0.02, abs=1e-6)


def test_drawer_open_dense_reward_adds_success_to_reach_and_opening():
    task = drawer_module.DrawerOpen()
    handle = jnp.array([0.0, 0.6, 0.09])

    def dense(opened, reach):
        tips = handle + jnp.array([0.0, 0.0, reach])
        state = jnp.zeros(11).at[0:3].set(tips).at[4].set(-opened).at[5:8].set(handle)
        return float(task.evaluate(state)["dense_reward"])

    assert dense(0.13, 0.01) == pytest.approx(1.0 + 0.13, abs=1e-6)  # open, hand on the bar
    assert dense(0.11, 0.01) == pytest.approx(0.11, abs=1e-6)
    assert dense(0.0, 0.15) == pytest.approx(-(0.15 - drawer_module.REACH_RADIUS), abs=1e-6)


@functools.cache
def world_at(xml_file: str):
    """One world posed at (qpos, hand), forward pass done: jitted once per scene file (the
    three DVD tabletop tasks share one scene and its reset, so they share this program)."""
    task = next(t for t in TASKS if envs.make_task(t).xml_file == xml_file)
    env, _, _ = jitted(task)
    return jax.jit(functools.partial(env._world_at, num_envs=1))


@pytest.mark.parametrize("task", TASKS)
def test_goal_worlds_are_solved(task):
    task = envs.make_task(task)
    for index, (name, (qpos, hand)) in enumerate(task.goal_worlds().items()):
        data = world_at(task.xml_file)(qpos, hand)
        metrics = task.evaluate(task.observe(data))
        assert int(metrics["subgoal"]) == index + 1, name  # goal image k shows subgoal k


@pytest.mark.parametrize("task", TASKS)
def test_committed_goal_images_match_a_fresh_render(task):
    from holdjax.envs.goal_images import load_goal_image, render_goal_images

    shape = (*envs.make_task(task).image_shape, 3)
    for name, image in render_goal_images(task, impl="jax").items():
        committed = load_goal_image(name)
        assert committed.shape == image.shape == shape and committed.dtype == np.uint8
        assert np.abs(committed.astype(int) - image).max() <= 2, name


def test_goal_images_cli_writes_then_checks_within_the_tolerance(tmp_path, capsys):
    """`python -m holdjax.envs.goal_images` writes a task's images (and PNGs to look at);
    --check passes them within CHECK_TOLERANCE grey levels and names one edited beyond."""
    from holdjax.envs import goal_images

    out = str(tmp_path)
    assert goal_images.main(["--tasks=pushing", f"--out={out}"]) == 0
    assert sorted(os.listdir(out)) == ["pushing.npy", "pushing.png"]
    assert goal_images.main(["--tasks=pushing", f"--out={out}", "--check"]) == 0
    image = np.load(tmp_path / "pushing.npy")
    image[0, 0] = (image[0, 0].astype(int) + goal_images.CHECK_TOLERANCE) % 256
    np.save(tmp_path / "pushing.npy", image)
    assert goal_images.main(["--tasks=pushing", f"--out={out}", "--check"]) == 0
    image[0, 0] = (image[0, 0].astype(int) + 10) % 256
    np.save(tmp_path / "pushing.npy", image)
    capsys.readouterr()
    assert goal_images.main(["--tasks=pushing", f"--out={out}", "--check"]) == 1
    assert "pushing: DIFFERS (largest difference " in capsys.readouterr().out
    # A file of another shape (here a single row, which would broadcast) differs too.
    np.save(tmp_path / "pushing.npy", image[:1])
    assert goal_images.main(["--tasks=pushing", f"--out={out}", "--check"]) == 1
    assert "pushing: DIFFERS (uint8 (1, 48, 3), the camera gives uint8 (48, 48, 3))" in (
        capsys.readouterr().out)
    with pytest.raises(SystemExit):
        goal_images.main(["--tasks=pushing,pushy", f"--out={out}"])
    assert "--tasks: unknown task 'pushy'; valid tasks: pushing" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["holdjax.envs.__main__", "holdjax.reward.check",
                                    "holdjax.reward.train"])
def test_every_command_names_the_valid_tasks_for_an_unknown_one(module, capsys):
    import importlib

    from holdjax import envs

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--task=pushy"])
    assert exit_info.value.code == 2
    assert f"unknown task 'pushy'; valid tasks: {', '.join(envs.TASKS)}" in (
        capsys.readouterr().err)


def test_load_goal_images_stacks_a_tasks_subgoal_images_in_order():
    from holdjax.envs.goal_images import load_goal_image, load_goal_images

    task = envs.make_task("drawer_open")
    images = load_goal_images(task)
    assert images.shape == (2, *task.image_shape, 3) and images.dtype == np.uint8
    for image, name in zip(images, ("drawer_open_step1", "drawer_open_step2"), strict=True):
        np.testing.assert_array_equal(image, load_goal_image(name))


@pytest.mark.parametrize("image", [np.zeros((64, 64, 3), np.uint8),
                                   np.zeros((48, 48, 3), np.float32),
                                   np.zeros((48, 48), np.uint8)])
def test_a_goal_image_of_another_shape_or_dtype_is_named(tmp_path, image):
    from holdjax.envs.goal_images import load_goal_images

    np.save(tmp_path / "pushing.npy", image)
    with pytest.raises(ValueError, match=rf"goal image {tmp_path}/pushing.npy is "
                       rf"{image.dtype} \({image.shape[0]}, .*camera gives uint8 \(48, 48, 3\)"
                       ": re-render it with `python -m holdjax.envs.goal_images`"):
        load_goal_images(envs.make_task("pushing"), str(tmp_path))


def test_success_metrics_defaults_subgoal_to_success():
    from holdjax.envs.base import success_metrics

    metrics = success_metrics(jnp.array([True, False]), jnp.array([0.5, -1.0]))
    np.testing.assert_array_equal(metrics["reward"], [1.0, 0.0])
    np.testing.assert_array_equal(metrics["subgoal"], [1, 0])
    staged = success_metrics(jnp.array([False]), jnp.array([0.0]), jnp.array([1]))
    assert staged["subgoal"].dtype == jnp.int32 and int(staged["subgoal"][0]) == 1


# Last in the module: by now the background process has run the CLI (see CLI_RUNS).
@pytest.mark.parametrize("task", CLI_TASKS)
def test_expert_succeeds_and_random_fails(task, cli_results):
    expert, random = cli_results()[task, "expert"], cli_results()[task, "random"]
    assert (expert["task"], expert["policy"], random["policy"]) == (task, "expert", "random")
    assert expert["success_rate"] >= 0.875, expert
    assert random["success_rate"] <= 0.125, random
