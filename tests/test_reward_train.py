"""holdjax's demo-trained HOLD-C: the triplet loss and its sampling against hand-computed
values, Spearman's rho, a tiny model trained on rendered pushing demos (it must rank
held-out expert frames), the check CLI's JSON and the default-model wiring of make_reward.
The tiny model (ResNet-8, 4 filters, 32 px) is trained once for the module."""

import dataclasses
import functools
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from holdjax.config import TrainConfig, config_from_args, load_config
from holdjax.envs.goal_images import load_goal_image, load_goal_images
from holdjax.reward import base, check, holdc, holdr, shaping
from holdjax.reward import train as rt

TINY = rt.RewardTrainConfig(
    task="pushing", layers=8, filters=4, embedding_size=8, image_size=32, expert_episodes=16,
    goal_pose_episodes=8, random_episodes=8, num_envs=32, steps=300, clips=4, clip_length=16,
    warmup_steps=20)


def test_triplet_loss_against_hand_computed_value():
    # Episode A at t = 0, 1, 2 and single frames of episodes B and C, on a line.
    embeddings = jnp.array([[0.0], [1.0], [3.0], [0.5], [2.0]])
    timesteps = jnp.array([0, 1, 2, 0, 0])
    ids = jnp.array([0, 0, 0, 1, 2])
    # Radii 1 and 2: A's positives are its neighbours; A's negatives are B and C only.
    # Squared distances: A0-A1 1, A1-A2 4, A-B 0.25 0.25 6.25, A-C 4 1 1.
    # (A0, A1): semi-hard C (4 > 1): 0.2 + 1 - 4 < 0 -> 0
    # (A1, A0): nothing beyond 1 (C is exactly 1) -> farthest C: 0.2 + 1 - 1 = 0.2
    # (A1, A2): nothing beyond 4 -> farthest C: 0.2 + 4 - 1 = 3.2
    # (A2, A1): semi-hard B (6.25 > 4): 0.2 + 4 - 6.25 < 0 -> 0
    loss, count = rt.triplet_loss(embeddings, timesteps, ids, pos_radius=1, neg_radius=2,
                                  margin=0.2)
    assert int(count) == 4
    np.testing.assert_allclose(loss, (0.2 + 3.2) / 4, rtol=1e-6)
    sq = rt.pairwise_sq_distances(embeddings)
    _, negatives = rt.triplet_masks(timesteps, ids, 1, 2)
    chosen = rt.semi_hard_negatives(sq, negatives)
    assert [int(chosen[a, p]) for a, p in ((0, 1), (1, 0), (1, 2), (2, 1))] == [4, 4, 4, 3]
    # hold-rewards' released radii and margin are the defaults.
    assert (TINY.pos_radius, TINY.neg_radius, TINY.margin) == (2, 4, 0.2)


def test_triplet_sampling_respects_the_radii():
    episodes, length = 8, 30
    lengths = jnp.array([30, 20, 16, 25, 30, 17, 29, 16], jnp.int32)
    # Each frame's pixels hold (episode, timestep), so the gathered clips can be checked.
    e, t = np.meshgrid(np.arange(episodes), np.arange(length), indexing="ij")
    frames = np.broadcast_to(np.stack([e, t, t], -1)[:, :, None, None, :],
                             (episodes, length, 2, 2, 3)).astype(np.uint8)
    demos = rt.Demos(frames=jnp.asarray(frames), lengths=lengths,
                     steps_to_goals=jnp.full((episodes, length, 1), -1.0),
                     goals=jnp.zeros((1, 2, 2, 3), jnp.uint8))
    for seed in range(5):
        got, timesteps, ids = rt.sample_clips(jax.random.key(seed), demos, 6, 16)
        assert got.shape == (96, 2, 2, 3)
        np.testing.assert_array_equal(got[:, 0, 0, 0], ids)
        np.testing.assert_array_equal(got[:, 0, 0, 1], timesteps)
        clips = timesteps.reshape(6, 16)
        assert (np.diff(clips, axis=1) == 1).all()  # consecutive frames
        # Strided clips: 6 frames 3 steps apart, within the usable frames too.
        got, strided, strided_ids = rt.sample_clips(jax.random.key(seed), demos, 6, 6, 3)
        np.testing.assert_array_equal(got[:, 0, 0, 1], strided)
        strided = np.asarray(strided).reshape(6, 6)
        assert (np.diff(strided, axis=1) == 3).all()
        assert (strided[:, -1] < lengths[np.asarray(strided_ids).reshape(6, 6)[:, 0]]).all()
        assert (clips[:, -1] < lengths[ids.reshape(6, 16)[:, 0]]).all()  # usable frames only
        positives, negatives = rt.triplet_masks(timesteps, ids, 2, 4)
        same = np.asarray(ids)[:, None] == np.asarray(ids)[None, :]
        gap = np.abs(np.asarray(timesteps)[:, None] - np.asarray(timesteps)[None, :])
        assert len(set(np.asarray(ids).tolist())) == 6  # distinct episodes
        assert (same & (gap >= 1) & (gap <= 2))[positives].all()
        assert (~same | (gap > 4))[negatives].all()
        assert not (positives & negatives).any()
        embeddings = jax.random.normal(jax.random.key(10 + seed), (96, 4))
        chosen = np.asarray(rt.semi_hard_negatives(rt.pairwise_sq_distances(embeddings),
                                                   negatives))
        anchor, positive = np.nonzero(positives)
        assert negatives[anchor, chosen[anchor, positive]].all()


def test_spearman_against_hand_computed_values():
    np.testing.assert_allclose(check.spearman([1, 2, 3, 4], [10, 30, 20, 40]), 0.8)
    # Ties share their mean rank: ranks (0, 1.5, 1.5, 3) and (0, 1, 2, 3).
    np.testing.assert_allclose(check.spearman([1, 2, 2, 3], [1, 2, 3, 4]),
                               4.5 / np.sqrt(4.5 * 5.0))
    np.testing.assert_allclose(check.spearman([3.0, 2.0, 1.0], [0.1, 0.2, 0.9]), -1.0)
    assert np.isnan(check.spearman([1, 1, 1], [1, 2, 3]))


def test_wandering_worlds_hold_their_random_actions():
    """Worlds after the experts and random ones draw a random action every ``wander_hold``
    steps and hold it in between; random worlds draw one every step."""
    env = rt.task_env("pushing")
    config = rt.RewardTrainConfig(expert_episodes=1, goal_pose_episodes=0, random_episodes=1,
                                  wander_episodes=2, wander_hold=3)
    script = rt.sample_scripts(config, jax.random.key(0), env.task)
    assert np.asarray(script.action_hold).tolist() == [1, 1, 3, 3]
    assert np.asarray(script.random_until).tolist()[1:] == [env.episode_length] * 3
    # scripted_actions reads a state's step count and task state only; one compile serves.
    act = jax.jit(lambda t, key, held: rt.scripted_actions(
        env, script, types.SimpleNamespace(step_count=jnp.full((4,), t, jnp.int32),
                                           state=jnp.zeros((4, env.task.state_dim))),
        key, held))
    held = jnp.full((4, env.action_dim), 0.5)
    for t in range(4):
        actions, to_hold = act(t, jax.random.key(t), held)
        actions = np.asarray(actions)
        np.testing.assert_array_equal(actions[1:], np.asarray(to_hold)[1:])
        assert not np.any(actions[1] == 0.5)  # random: fresh every step
        assert np.all(actions[2:] == 0.5) == (t % 3 != 0)  # wandering: held between draws
        assert np.all(np.abs(actions[1:]) <= 1.0)


def test_usable_lengths_cut_demonstrations_after_success_and_cover_a_clip():
    config = rt.RewardTrainConfig(expert_episodes=2, goal_pose_episodes=1, random_episodes=1,
                                  success_tail=3, clip_length=6, clip_stride=2)
    assert config.clip_span == 11 and config.step_radii == (4, 8)
    success = np.zeros((4, 30), bool)
    success[0, 20:] = True  # cut 3 frames after its first success: 24 frames
    success[1, 2:] = True  # succeeds early: still one clip's span, 11 frames
    success[2, 25:] = True  # goal-pose worlds are demonstrations too: 29 frames
    success[3, 5:] = True  # random worlds are kept whole
    footage = rt.Footage(frames=None, success=success, subgoal=None, qpos=None)
    lengths = rt.usable_lengths(footage, config, config.demonstrations)
    assert lengths.tolist() == [24, 11, 29, 30]


def test_steps_to_goals_count_down_to_each_first_reach():
    """Demonstrations count the steps to their first frame satisfying subgoal k + 1, then 0;
    goals an episode never reaches, and every non-expert episode, are unknown (-1)."""
    subgoal = np.array([[0, 1, 1, 2, 2], [0, 0, 0, 1, 1], [0, 0, 2, 2, 2]])
    got = rt.steps_to_goals(subgoal, demonstrations=2, num_goals=2)
    assert got.shape == (3, 5, 2) and got.dtype == np.float32
    assert got[0, :, 0].tolist() == [1, 0, 0, 0, 0] and got[0, :, 1].tolist() == [3, 2, 1, 0, 0]
    assert got[1, :, 0].tolist() == [3, 2, 1, 0, 0] and (got[1, :, 1] == -1).all()
    assert (got[2] == -1).all()  # reaches both goals, but is not a demonstration


def test_time_loss_against_hand_computed_values():
    """Huber error (delta 1) of each frame's distance to each goal against 1 + steps / unit,
    averaged over the known pairs only."""
    goals = jnp.array([[0.0, 0.0], [10.0, 0.0]])
    frames = jnp.array([[3.0, 4.0], [10.0, 1.0]])  # distances (5, 8.06) and (10.05, 1)
    steps = jnp.array([[20.0, -1.0], [-1.0, 5.0]])  # targets 3 (error 2) and 1.5 (error 0.5)
    loss = rt.time_loss(frames, goals, steps, time_unit=10.0)
    np.testing.assert_allclose(loss, ((2 - 0.5) + 0.5 * 0.5**2) / 2, rtol=1e-5)
    assert float(rt.time_loss(frames, goals, -jnp.ones((2, 2)), 10.0)) == 0.0
    # The gradient reaches the embeddings, also at a frame that sits on its goal.
    grad = jax.grad(rt.time_loss)(goals, goals, jnp.array([[0.0, -1], [-1, 10]]), 10.0)
    assert np.isfinite(np.asarray(grad)).all()


def test_first_reached_frames_and_embedding_scale():
    """Each demonstration's first frame satisfying subgoal k + 1 is paired with goal image k;
    random episodes and never-reached goals give none. Scaling the head scales distances."""
    subgoal = np.array([[0, 1, 1, 2, 2], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [2, 2, 2, 2, 2]])
    frames = (10 * np.arange(4)[:, None] + np.arange(5)[None]).astype(np.uint8)
    footage = rt.Footage(frames=np.broadcast_to(frames[..., None, None, None], (4, 5, 1, 1, 3)),
                         success=subgoal == 2, subgoal=subgoal, qpos=None)
    reached = rt.first_reached(footage, demonstrations=3, num_goals=2)
    assert reached.frames[:, 0, 0, 0].tolist() == [1, 12, 3] and reached.goal.tolist() == [0, 0, 1]
    config = holdc.HoldCConfig(num_layers=8, num_filters=4, embedding_size=8, crop_size=32)
    variables = holdc.random_variables(config)
    images = jnp.asarray(load_goal_image("pushing"))[None].repeat(2, 0)
    images = images.at[1].set(255 - images[1])
    base_distance = holdc.HoldCDistance(config, variables)(images[:1], images[1:])
    scaled = holdc.HoldCDistance(config, rt.scale_embeddings(variables, 2.5))(images[:1],
                                                                              images[1:])
    np.testing.assert_allclose(scaled, 2.5 * base_distance, rtol=1e-5)
    with pytest.raises(ValueError, match="solved_distance=0"):
        rt.median_reached_distance(TINY, variables, rt.first_reached(footage, 0, 2), images)


def test_goal_pose_worlds_start_with_the_hand_near_a_goal_image_pose():
    """Goal-pose worlds come after the experts and before the random ones, start from the
    task's reset with only the hand moved (within the noise of the goal image's hand), and
    then follow the expert like the experts."""
    env = rt.task_env("pushing")
    config = rt.RewardTrainConfig(expert_episodes=2, goal_pose_episodes=3, random_episodes=1,
                                  goal_pose_noise=0.04)
    script = jax.device_get(rt.sample_scripts(config, jax.random.key(0), env.task))
    assert script.from_start_hand.tolist() == [False, False, True, True, True, False]
    assert config.demonstrations == 5 and config.episodes == 6
    assert (script.random_until[:5] <= config.max_random_start).all()
    assert script.random_until[5] == env.episode_length
    (_, goal_hand), = env.task.goal_worlds().values()
    offsets = script.start_hand[2:5] - np.asarray(goal_hand)
    assert (np.abs(offsets) <= 0.04).all() and np.abs(offsets).max() > 0.01
    key = jax.random.key(1)
    state = jax.device_get(jax.jit(functools.partial(rt.start_states, env))(script, key))
    plain = jax.device_get(jax.jit(env.reset, static_argnums=1)(key, 6))
    hand, puck = state.state[:, 0:3], state.state[:, 3:6]
    np.testing.assert_allclose(puck, plain.state[:, 3:6], atol=1e-6)  # the same scenes
    np.testing.assert_allclose(state.state[[0, 1, 5]], plain.state[[0, 1, 5]], atol=1e-6)
    np.testing.assert_array_equal(state.obs[[0, 1, 5]], plain.obs[[0, 1, 5]])
    np.testing.assert_allclose(hand[2:5], script.start_hand[2:5], atol=1e-5)
    assert (state.step_count == 0).all() and not state.success.any()


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="valid tasks: .*pushing"):
        rt.RewardTrainConfig(task="stacking")
    with pytest.raises(ValueError, match="image_size >= 40"):
        rt.RewardTrainConfig(layers=18, image_size=32)
    with pytest.raises(ValueError, match="neg_radius must exceed"):
        rt.RewardTrainConfig(pos_radius=4, neg_radius=4)
    with pytest.raises(ValueError, match="wander_hold must be at least 1"):
        rt.RewardTrainConfig(wander_hold=0)
    with pytest.raises(ValueError, match="solved_distance must be >= 0"):
        rt.RewardTrainConfig(solved_distance=-1.0)
    with pytest.raises(ValueError, match="goal_pose_noise must be >= 0"):
        rt.RewardTrainConfig(goal_pose_noise=-0.1)
    with pytest.raises(ValueError, match="clip_stride must be at least 1"):
        rt.RewardTrainConfig(clip_stride=0)
    with pytest.raises(ValueError, match="pushing episodes have 101 frames"):
        rt.RewardTrainConfig(clip_length=16, clip_stride=7)
    with pytest.raises(SystemExit):
        rt.parse_args(["--task=stacking"])
    config, out = rt.parse_args(["--steps=7", "--out=/tmp/x"])
    assert config == rt.RewardTrainConfig(task="pushing", steps=7) and out == "/tmp/x"


@pytest.fixture(scope="module")
def tiny_parts():
    """The steps of `train` for a tiny HOLD-C on rendered pushing demos: the footage, then
    the fitted (not yet calibrated) variables and their losses."""
    env = rt.task_env("pushing")
    demos, reached = rt.demonstrations(TINY, env, jax.random.key(TINY.seed))
    assert demos.frames.shape == (32, 101, 48, 48, 3)
    lengths = np.asarray(demos.lengths)
    # Demonstrations (plain and goal-pose) are cut after success; random episodes are whole.
    assert (lengths[:24] < 101).sum() >= 20 and (lengths[24:] == 101).all()
    assert len(reached.goal) >= (lengths[:24] < 101).sum() and (reached.goal == 0).all()
    variables, losses = rt.fit(TINY, demos, quiet=True)
    assert np.mean(losses[-5:]) < 0.5 * losses[0]
    return types.SimpleNamespace(demos=demos, reached=reached, variables=variables,
                                 losses=losses)


@pytest.fixture(scope="module")
def tiny_model(tiny_parts, tmp_path_factory):
    """A tiny HOLD-C trained on rendered pushing demos, saved as train's output."""
    reached, variables = tiny_parts.reached, tiny_parts.variables
    # Scaled so that the first successes lie at distance solved_distance (1) from the goal.
    goals = load_goal_image("pushing")[None]
    variables, scale = rt.calibrate(TINY, variables, reached, goals)
    assert scale["distance_scale"] == pytest.approx(1.0 / scale["solved_distance_unscaled"])
    assert rt.median_reached_distance(TINY, variables, reached, goals) == pytest.approx(1.0)
    out = str(tmp_path_factory.mktemp("tiny") / "holdc")
    rt.save_model(out, TINY, variables, {"task": "pushing"})
    return out, variables


def test_main_renders_trains_calibrates_and_saves(tiny_parts, tiny_model, tmp_path,
                                                 monkeypatch, capsys):
    """`python -m holdjax.reward.train` puts the steps together: the model it saves is the
    fitted one, calibrated, with the settings given and what model.json records (frames,
    the mean of the last 10 losses, the scale, times); it refuses to replace a model unless
    told to. (The footage and the fit are the fixture's, not made again.)"""
    monkeypatch.setattr(rt, "demonstrations",
                        lambda config, env, key: (tiny_parts.demos, tiny_parts.reached))
    monkeypatch.setattr(rt, "fit", lambda config, demos, quiet: (tiny_parts.variables,
                                                                 tiny_parts.losses))
    out = str(tmp_path / "model")
    flags = [f"--{name}={getattr(TINY, name)}" for name in (
        "layers", "filters", "embedding_size", "image_size", "expert_episodes",
        "goal_pose_episodes", "random_episodes", "num_envs", "steps", "clips", "clip_length",
        "warmup_steps")]
    info = rt.main([*flags, f"--out={out}"])
    assert info["frames"] == int(np.asarray(tiny_parts.demos.lengths).sum())
    assert info["final_loss"] == pytest.approx(float(np.mean(tiny_parts.losses[-10:])))
    with open(os.path.join(out, rt.MODEL_FILE)) as f:
        saved = json.load(f)
    assert saved["train"] == dataclasses.asdict(TINY)
    assert saved["distance_scale"] == pytest.approx(info["distance_scale"])
    frames = jnp.asarray(load_goal_image("pushing"))[None]
    np.testing.assert_allclose(rt.load_model(out).embed(frames),
                               rt.load_model(tiny_model[0]).embed(frames), rtol=1e-5)
    assert f"saved {out}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rt.main([*flags, f"--out={out}"])
    assert "pass --overwrite to replace it" in capsys.readouterr().err


def test_saved_model_restores_and_embeds_the_same(tiny_model):
    out, variables = tiny_model
    assert sorted(os.listdir(out)) == ["checkpoint", "model.json"]
    model = rt.load_model(out, distance_type="sq_eucl")
    assert model.config == dataclasses.replace(TINY.model, distance_type="sq_eucl")
    frames = jnp.asarray(load_goal_image("pushing"))[None]
    np.testing.assert_allclose(model.embed(frames),
                               holdc.embed(TINY.model, variables, frames), rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="holdjax.reward.train"):
        rt.load_model(os.path.dirname(out))


def test_check_json_and_tiny_model_ranks_held_out_expert_frames(tiny_model, capsys):
    out, _ = tiny_model
    result = check.main(["--task=pushing", f"--model={out}", "--episodes=16",
                         "--random_episodes=16", "--num_envs=32", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == result
    assert {"task", "reward", "model", "spearman_time", "spearman_state"} <= printed.keys()
    assert printed["task"] == "pushing" and printed["model"] == os.path.abspath(out)
    assert printed["reward"] == "holdc"
    assert printed["expert_episodes_scored"] >= 12 and printed["state_frames"] > 500
    assert printed["spearman_time"] > 0.5, printed
    assert -1.0 <= printed["spearman_state"] <= 1.0
    assert 0.0 <= printed["goal_pose_below_success"] <= 1.0
    # The check's own episodes' first successes lie near the calibrated distance 1.
    assert 0.5 < printed["first_success_distance_median"] < 2.0


def test_object_to_goal_distance():
    env = rt.task_env("pushing")
    goal_qpos = np.asarray(env.task.goal_worlds()["pushing"][0])
    moved = goal_qpos.copy()
    moved[env.task.puck_qpos:env.task.puck_qpos + 2] += [0.03, -0.04]
    np.testing.assert_allclose(check.object_to_goal(env, np.stack([goal_qpos, moved])),
                               [0.0, 0.05], atol=1e-6)


def test_time_to_reach_against_hand_computed_values():
    distance = np.array([[5.0, 4.0, 6.0, 1.0, 0.0, 9.0],
                         [3.0, 2.0, 1.0, 0.0, 0.0, 0.0],
                         [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    reached = np.array([[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]], bool)
    # Episode 0 from step 1: distances 4, 6, 1, 0 against 3, 2, 1, 0 steps left -> 0.8;
    # episode 1 reaches at step 3 but begins at 2 (too close to score); episode 2 never.
    mean, scored = check.time_to_reach(distance, reached, np.array([1, 2, 0]))
    assert scored == 1
    np.testing.assert_allclose(mean, 0.8)
    mean, scored = check.time_to_reach(distance[:2], reached[:2], np.array([0, 0]))
    assert scored == 2
    np.testing.assert_allclose(mean, (check.spearman([5, 4, 6, 1, 0], [4, 3, 2, 1, 0]) + 1) / 2)
    assert np.isnan(check.time_to_reach(distance[2:], reached[2:], np.array([0]))[0])


def channel_distance(frames):
    """Stand-in model: a frame's distance to subgoal k is its first pixel's channel k."""
    return frames[:, 0, 0, :2].astype(jnp.float32)


def test_score_segments_expert_episodes_by_subgoal():
    """drawer_open has two goal images: subgoal k's correlation runs from the step the
    expert first satisfied subgoal k - 1 (or its start) to the step it first satisfies k."""
    env = rt.task_env("drawer_open")
    frames = np.zeros((3, 8, 1, 1, 3), np.uint8)
    frames[0, :, 0, 0, 0] = [9, 8, 7, 6, 0, 0, 0, 0]  # to subgoal 1: falls until step 3
    frames[0, :, 0, 0, 1] = [0, 0, 0, 5, 4, 3, 2, 2]  # to subgoal 2: falls from 3 to 6
    frames[1, :, 0, 0, 1] = [0, 0, 1, 3, 2, 4, 0, 0]
    frames[2, :, 0, 0, 1] = 10 - np.arange(8)  # random world: tracks the drawer's distance
    subgoal = np.array([[0, 0, 0, 1, 1, 1, 2, 2], [0, 1, 1, 1, 1, 2, 2, 2], [0] * 8])
    qpos = np.zeros((3, 8, env.task.mj_model.nq), np.float32)
    qpos[2, :, env.task.drawer_qpos] = -0.02 * np.arange(8)
    footage = rt.Footage(frames=frames, success=subgoal == 2, subgoal=subgoal, qpos=qpos)
    script = rt.Script(random_until=np.array([0, 2, 0]), expert_until=np.array([8, 8, 3]),
                       speed=np.ones(3), noise=np.zeros(3), action_hold=np.ones(3, int),
                       start_hand=np.zeros((3, 3)), from_start_hand=np.zeros(3, bool))
    goals = load_goal_images(env.task).copy()
    goals[:, 0, 0] = 0  # baselines (each goal's distance to itself) 0
    reward_fn = base.RewardFunction("holdc", shaping.ShapingConfig(), goals, channel_distance)
    goal_pose = np.zeros((4, 1, 1, 3), np.uint8)
    goal_pose[:, 0, 0, 1] = [1, 3, 5, 0]
    result = check.score(reward_fn, env, footage, script, episodes=2, goal_pose=goal_pose)
    # First successes (steps 6 and 5) are at distances 2 and 4 to the final image: median 3;
    # two of the four goal-pose frames score below it.
    assert result["first_success_distance_median"] == 3.0
    assert result["goal_pose_below_success"] == 0.5
    assert result["goal_pose_distance_median"] == 2.0
    # Episode 1 starts (step 2) after it first reached subgoal 1 (step 1): not scored for
    # subgoal 1; for subgoal 2 it counts from step 2 to its success at step 5.
    assert result["expert_episodes_scored_subgoals"] == [1, 2]
    np.testing.assert_allclose(result["spearman_time_subgoals"],
                               [1.0, (1.0 + check.spearman([1, 3, 2, 4], [3, 2, 1, 0])) / 2])
    # The final goal image over whole episodes, from each start to its success.
    whole = [check.spearman([0, 0, 0, 5, 4, 3, 2], np.arange(6, -1, -1)),
             check.spearman([1, 3, 2, 4], [3, 2, 1, 0])]
    np.testing.assert_allclose(result["spearman_time"], np.mean(whole))
    assert result["expert_episodes_scored"] == 2
    assert result["state_frames"] == 4
    np.testing.assert_allclose(result["spearman_state"], 1.0)
    # Subtask switches (threshold 1, 3 steps in a row, the reset frame unscored as in
    # training): episode 0 is below 1 from step 4, so switches at 6, 3 steps after reaching
    # subgoal 1; episode 1 from its reset, so from step 1 and at 3, 2 after.
    np.testing.assert_array_equal(check.subtask_switches(reward_fn, check.distances_to_goals(
        reward_fn, frames[:2])), [[6], [3]])
    assert result["subtask_switch_share"] == [1.0]
    assert result["subtask_switch_lead_steps"] == [-2.5]


def test_in_chunks_pads_the_last_chunk_and_keeps_the_order():
    calls = []

    def fn(a, b):
        calls.append(a.shape)
        return a * 10 + b

    a, b = np.arange(7), np.arange(7) % 3
    np.testing.assert_array_equal(rt.in_chunks(fn, a, b, chunk=3), a * 10 + b)
    assert calls == [(3,)] * 3  # 7 rows: three calls of one shape


def test_goal_pose_frames_move_only_the_hand():
    """The goal world's scene with the hand at the goal pose renders the goal image; the
    other offsets move the hand, and each start scene gets all of them."""
    env = rt.task_env("pushing")
    (qpos, _), = env.task.goal_worlds().values()
    start, _ = env.task.init_world(jax.random.key(0))  # a start scene (no render, no compile)
    # 32 worlds at a time, as the check CLI's test renders them: one compile serves both.
    frames = check.goal_pose_frames(env, np.stack([np.asarray(qpos), np.asarray(start)]),
                                    num_envs=32)
    offsets = len(check.GOAL_POSE_OFFSETS)
    assert frames.shape == (2 * offsets, *env.image_shape, 3) and offsets == 9
    centre = int(np.flatnonzero((check.GOAL_POSE_OFFSETS == 0).all(axis=1))[0])
    np.testing.assert_array_equal(frames[centre], load_goal_image("pushing"))
    assert len({f.tobytes() for f in frames}) == 2 * offsets


def test_history_model_sees_each_frame_with_the_ones_before_it_as_in_training():
    """HOLD-R's check input at step t is the history training keeps after step t: the reset
    frame's features repeated, then pushed one per step."""
    weights = jnp.array([1.0, 10.0, 100.0])
    history = base.FrameHistory(lambda f: f[:, 0, 0, :1].astype(jnp.float32), length=3)
    reward_fn = base.RewardFunction("holdr", shaping.ShapingConfig(),
                                    np.zeros((1, 1, 1, 3), np.uint8),
                                    lambda h: (h[:, :, 0] @ weights)[:, None], history)
    frames = np.random.default_rng(0).integers(0, 256, (2, 5, 1, 1, 3), dtype=np.uint8)
    expected, kept = [], None
    for t in range(5):
        features = history.features(jnp.asarray(frames[:, t]))
        kept = (holdr.init_history(features, 3) if kept is None
                else holdr.push_history(kept, features))
        expected.append(reward_fn.distance(kept))
    np.testing.assert_allclose(check.distances_to_goals(reward_fn, frames),
                               np.stack(expected, axis=1), rtol=1e-6)
    np.testing.assert_allclose(check.distances_to_goals(reward_fn, frames)[:, 0, 0],
                               111.0 * frames[:, 0, 0, 0, 0])


def test_check_scores_the_l2_baseline_and_names_missing_weights(tmp_path, monkeypatch, capsys):
    result = check.main(["--task=pushing", "--reward=l2", "--episodes=4",
                         "--random_episodes=4", "--num_envs=32", "--json"])
    assert result["reward"] == "l2" and result["model"] is None
    assert result["expert_episodes_scored"] >= 3 and -1.0 <= result["spearman_state"] <= 1.0
    monkeypatch.setenv("HOLD_TOP_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match="released HOLD-R checkpoint"):
        check.main(["--task=pushing", "--reward=holdr"])
    with pytest.raises(SystemExit):
        check.main(["--task=pushing", f"--model={tmp_path}/missing"])
    assert "no model at" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        check.main(["--task=pushing", "--reward=l2", f"--model={tmp_path}"])
    assert "--model does not apply to --reward=l2" in capsys.readouterr().err


def test_check_with_a_config_scores_the_reward_as_that_run_trains_with_it(capsys):
    """--config: the run's task and reward by default, and its reward settings (normaliser,
    subtask threshold and hold steps) where the defaults would differ; a config without a
    distance reward, or an unknown one, is refused."""
    args = check.parse_args(["--config=fig5b_drawer_l2"])
    assert (args.task, args.reward) == ("drawer_open", "l2")
    reward_fn = check.reward_for(args.task, args.reward, args.model, args.run)
    assert reward_fn.config.normalizer == 100.0 and reward_fn.config.subtask_cost == 20.0
    # Without --config, the settings --task and --reward train with: the reference's run
    # of them (fig5b_drawer_r3m's subtask threshold, not the default).
    assert check.reward_for("drawer_open", "l2").config == reward_fn.config
    assert load_config("fig5b_drawer_r3m").subtask_threshold == 0.5
    assert config_from_args(["--task=drawer_open", "--reward=r3m"])[0].subtask_threshold == 0.5
    assert check.parse_args(["--config=fig5b_drawer_l2", "--task=pushing"]).task == "pushing"
    with pytest.raises(SystemExit):
        check.parse_args(["--config=fig3a_pushing_sac"])
    assert "reward 'sparse' has no distance model to score" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        check.parse_args(["--config=nope"])
    assert "unknown config 'nope'" in capsys.readouterr().err


def test_make_reward_uses_the_default_model_training_it_first(tiny_model, tmp_path,
                                                               monkeypatch, capsys):
    """No released checkpoint under HOLD_TOP_DIR: make_reward trains the default model
    (here: copies the tiny one) at the documented path, says so, and scores with it."""
    monkeypatch.setenv("HOLD_TOP_DIR", str(tmp_path))
    default = rt.default_model_dir("pushing")
    assert default == os.path.join(str(tmp_path), "holdjax_models", "pushing", "holdc")
    trained = []

    def fake_train(config, out, quiet=False):
        trained.append((config.task, out))
        rt.save_model(out, TINY, tiny_model[1], {"task": config.task})

    monkeypatch.setattr(rt, "train", fake_train)
    config = TrainConfig(task="pushing", reward="holdc", distance_normalizer=5.0)
    env = rt.task_env("pushing")
    reward_fn = base.make_reward(config, env)
    assert trained == [("pushing", default)]
    assert "demo-trained HOLD-C" in capsys.readouterr().err
    capsys.readouterr()
    base.make_reward(config, env)  # exists now: no second training
    assert len(trained) == 1
    # It was trained with the tiny settings, not the defaults: make_reward says so.
    err = capsys.readouterr().err
    assert "no longer the defaults" in err and "expert_episodes" in err and "--overwrite" in err
    assert rt.stale_settings(default) == sorted(
        k for k, v in dataclasses.asdict(TINY).items()
        if v != getattr(rt.RewardTrainConfig(), k) and k != "seed")
    assert float(reward_fn.baselines[0]) < 1e-3
    assert reward_fn.distance(reward_fn.goals).shape == (1, 1)
    # A model trained on one task's footage scores another's only with a warning.
    other = dataclasses.replace(config, task="drawer_open", reward_checkpoint=default)
    assert base.make_reward(other, rt.task_env("drawer_open")).num_goals == 2
    assert (f"warning: {default} was trained on pushing's footage, not drawer_open's"
            in capsys.readouterr().err)
