"""The fused trainer on the CPU: tiny runs (few worlds, small batches, short epochs)."""

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TEST_XLA_FLAGS, Lane, cached_env, run_two_processes
from kinematic import use_kinematic_physics

from holdjax import checkpoint
from holdjax.config import TrainConfig, config_from_args, device_default, field_help
from holdjax.evaluate import evaluate_run
from holdjax.evaluate import main as evaluate_cli
from holdjax.plot import curves_figure, drop_unfinished_line, plot_runs, read_metrics
from holdjax.plot import main as plot_cli
from holdjax.train import (
    ReplayTooLarge,
    Trainer,
    TrainingDiverged,
    check_finite,
    check_replay_fits,
    clear_earlier_attempt,
    device_split,
    finished_message,
    free_memory,
    get_trainer,
    live_bar,
    over_seeds,
    overflow_warning,
    policy_obs_shape,
    stop_on_signal,
    summarize_epoch,
    tensorboard_scalars,
    train,
    training_devices,
    write_curves,
)
from holdjax.train import main as train_cli

TINY = TrainConfig(
    task="pushing", reward="dense", num_envs=4, seeds=1, num_epochs=2, epoch_length=8,
    batch_size=8, initial_random_steps=4, learning_starts=4, replay_size=64,
    eval_episodes=2, checkpoint_frequency=1, path_save_frequency=2, save_replay=True,
)


def params_of(run_dir, config):
    trainer = get_trainer(config)
    like = trainer.init_shapes()[0]
    _, state, _ = checkpoint.restore(run_dir, like)
    return state.sac


# The trainers here run on a kinematic stand-in for the physics (kinematic.py): what these
# tests check is the training loop around it, and compiling MJX's step would be most of each
# trainer's minute of compilation on a CI machine.
@pytest.fixture(autouse=True, scope="module")
def kinematic_physics():
    with pytest.MonkeyPatch.context() as patch:
        use_kinematic_physics(patch)
        yield


# A training run in its own process (on the same stand-in): the config's fields as JSON and
# the number of devices the process must see (the XLA flags force them); prints train()'s
# record, `holdjax.evaluate`'s result for the run's checkpoint and what the trainer split
# over the devices, as one JSON object.
TRAIN_SCRIPT = """
import json, sys
import jax
import pytest
sys.path.insert(0, "tests")
from kinematic import use_kinematic_physics
from holdjax.config import TrainConfig
from holdjax.evaluate import evaluate_run
from holdjax.train import get_trainer, train
fields, devices = json.loads(sys.argv[1]), int(sys.argv[2])
assert jax.device_count() == devices, jax.devices()
config = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
use_kinematic_physics(pytest.MonkeyPatch())
record = train(config, quiet=True)
evaluated, _ = evaluate_run(config.out_dir, episodes=config.eval_episodes)
print(json.dumps({"record": record, "evaluated": evaluated,
                  "split": get_trainer(config).split}))
"""
TWO_DEVICES = {"XLA_FLAGS": f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count=2",
               "JAX_PLATFORMS": "cpu"}


# The two-seed run (and its twins below) score frames with HOLD-C, a tiny network in the
# released checkpoint's format: one trainer then serves both the trainer's tests and the
# HOLD-C reward's (test_holdc_reward_...); each trainer costs about a minute to compile.
HOLDC = dict(reward="holdc", holdc_layers=18, holdc_filters=2, holdc_embedding_size=4,
             holdc_crop_size=32, distance_normalizer=5.0)


@pytest.fixture(scope="module")
def holdc_checkpoint(tmp_path_factory):
    """A released-format (scenic) HOLD-C checkpoint file with random weights."""
    from test_holdc import hold_rewards_state, random_flat_variables, write_checkpoint

    folder = tmp_path_factory.mktemp("holdc")
    return write_checkpoint(str(folder / "checkpoint_7"),
                            hold_rewards_state(random_flat_variables(18)))


def two_seed_config(holdc_checkpoint, **changes):
    return dataclasses.replace(TINY, seeds=2, reward_checkpoint=os.path.dirname(
        holdc_checkpoint), **HOLDC, **changes)


@pytest.fixture(scope="module")
def background_runs(tmp_path_factory, holdc_checkpoint):
    """Runs the tests compare with the two-seed run, trained one after another in another
    process while this one trains the two-seed run and goes on with the tests
    (conftest.Lane): name -> (config, future of the run's record). sharded: the same two
    seeds over two devices; worlds: its seed 1 alone, with its worlds split over two
    devices."""
    config = two_seed_config(holdc_checkpoint)
    get_trainer(config)  # converts the HOLD-C checkpoint, before other processes read it
    root = tmp_path_factory.mktemp("background")
    runs = {"sharded": dataclasses.replace(config, **SHARDED_EVALUATION),
            "worlds": dataclasses.replace(config, seeds=1, seed=config.seed + 1,
                                          **SHARDED_EVALUATION)}
    lane = Lane()
    futures = {}
    for name, config in runs.items():
        config = dataclasses.replace(config, out=str(root / name))
        fields = json.dumps(dataclasses.asdict(config))
        futures[name] = config, lane.submit("-c", TRAIN_SCRIPT, fields, "2", env=TWO_DEVICES)
    yield futures
    lane.close()


# The sharded run also evaluates its two epochs together (one checkpoint, at the end).
SHARDED_EVALUATION = dict(eval_batch=2, checkpoint_frequency=2)


def background_run(background_runs, name):
    """(config, {"record": train()'s, "evaluated": evaluate_run()'s}) of a background run,
    once it has finished."""
    config, future = background_runs[name]
    return config, json.loads(future.result().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def two_seed_run(tmp_path_factory, holdc_checkpoint, background_runs):
    config = two_seed_config(holdc_checkpoint,
                             out=str(tmp_path_factory.mktemp("runs") / "two_seeds"))
    record = train(config, quiet=True)
    return config, record


@pytest.fixture(scope="module")
def two_seed_evaluated(two_seed_run):
    """`holdjax.evaluate`'s result for the two-seed run's checkpoint, on one device (the
    background runs' evaluations on two are compared with it)."""
    config, _ = two_seed_run
    return evaluate_run(config.out_dir, episodes=config.eval_episodes)[0]


@pytest.fixture(scope="module")
def state_run(tmp_path_factory):
    config = dataclasses.replace(TINY, observation="state",
                                 out=str(tmp_path_factory.mktemp("runs") / "state"))
    return config, train(config, quiet=True)


def test_run_writes_metrics_checkpoints_video(two_seed_run):
    config, record = two_seed_run
    lines = open(os.path.join(config.out_dir, "metrics.jsonl")).read().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert record["env_steps"] == 16 and len(record["eval_success_rate"]) == 2
    assert all(np.isfinite(record["critic_loss"]))
    # Each epoch's time splits into its fused steps and its evaluation, within its wall time.
    records = [json.loads(line) for line in lines]
    epoch_walls = np.diff([0.0] + [r["wall_s"] for r in records])
    for r, epoch_wall in zip(records, epoch_walls, strict=True):
        assert r["train_s"] > 0 and r["eval_s"] > 0
        assert r["train_s"] + r["eval_s"] <= epoch_wall + 0.02  # wall_s is rounded to 0.01
    # The set-up before the first epoch (init's compilation at least) is logged once; both
    # are rounded to 0.01 s, and with the trainer already built the rest of the set-up may
    # round away.
    assert 0 < records[0]["init_s"] <= records[0]["setup_s"] and "setup_s" not in records[1]
    assert records[0]["started_at"] > 1.7e9 and "started_at" not in records[1]  # Unix time
    assert record["physics_overflow_episodes"] == [0, 0]  # MJX-JAX physics keeps no record
    assert "physics_overflow_kinds" not in record
    assert checkpoint.latest_epoch(config.out_dir) == 2
    assert checkpoint.holds_replay(config.out_dir, 2)  # TINY saves it
    assert not checkpoint.holds_replay(config.out_dir, 3)
    assert os.path.exists(os.path.join(config.out_dir, "videos", "eval_epoch0002.mp4"))
    assert os.listdir(os.path.join(config.out_dir, "tensorboard"))
    # The learning curve, redrawn at each checkpoint: the same figure as holdjax.plot's.
    with open(os.path.join(config.out_dir, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_curve_that_cannot_be_drawn_warns_and_training_goes_on(tmp_path, capsys):
    write_curves(str(tmp_path))  # no metrics.jsonl yet
    assert "curves.png not drawn (FileNotFoundError" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "curves.png")


def test_fused_epoch_changes_parameters(two_seed_run):
    config, _ = two_seed_run
    trainer = get_trainer(config)
    initial, _ = trainer.init(config.seed)
    trained = params_of(config.out_dir, config)
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                           initial.sac.actor_params, trained.actor_params)
    assert all(jax.tree.leaves(changed))


def test_epoch_summary_counts_episodes_that_hit_warp_limits():
    """3 iterations, 2 seeds x 2 worlds; episodes end at iteration 2, where seed 1's second
    world hit the line-search limit (bit 8) and another limit (bit 1) was seen."""
    import mujoco_warp

    ls = int(mujoco_warp.OverflowType.LS_ITERATIONS)
    out = {
        "updated": np.array([False, True, True]),
        "finished": np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool),
        "train_return": np.arange(12.0).reshape(3, 4),
        "train_success": np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 1, 1]], bool),
        "overflow_episodes": np.array([[0, 0], [0, 0], [0, 1]]),
        "overflow_bits": np.array([[0, 0], [0, 0], [0, ls | 1]]),
        "critic_loss": np.array([[9.0, 9.0], [1.0, 2.0], [3.0, 4.0]]),
    }
    summary = summarize_epoch(out, dataclasses.replace(TINY, seeds=2))
    assert summary["critic_loss"] == [2.0, 3.0]  # iterations that updated only
    assert summary["train_return"] == [8.5, 10.5] and summary["train_success_rate"] == [0.5, 1.0]
    assert summary["physics_overflow_episodes"] == [0, 1]
    kinds = summary["physics_overflow_kinds"]
    assert "LS_ITERATIONS" in kinds and len(kinds) == 2
    message = overflow_warning({"epoch": 4, **summary})
    assert message.startswith("epoch 4: MuJoCo Warp hit ") and "in 1 episodes" in message
    # TensorBoard gets the numbers (per-seed lists as their mean), not the limits' names
    scalars = tensorboard_scalars({"epoch": 4, "started_at": 1.7e9, "actor_loss": None,
                                   **summary})
    assert scalars == {"epoch": 4.0, "physics_overflow_episodes": 0.5, "critic_loss": 2.5,
                       "train_return": 9.5, "train_success_rate": 0.75}


def test_over_seeds_equals_vmap_with_and_without_a_seed_axis_to_map():
    def fn(tree, x):
        return {"scaled": tree["a"] * x}, (x @ tree["a"]).sum()

    for seeds in (1, 3):
        tree = {"a": jax.numpy.arange(seeds * 4.0).reshape(seeds, 2, 2)}
        x = jax.numpy.linspace(-1.0, 1.0, seeds * 2 * 2).reshape(seeds, 2, 2)
        mapped, expected = over_seeds(fn, seeds)(tree, x), jax.vmap(fn)(tree, x)
        assert jax.tree.structure(mapped) == jax.tree.structure(expected)
        for a, b in zip(jax.tree.leaves(mapped), jax.tree.leaves(expected), strict=True):
            assert a.shape == b.shape and a.shape[0] == seeds
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_seeds_differ_and_each_equals_its_single_seed_run(two_seed_run, background_runs):
    config, _ = two_seed_run
    both = params_of(config.out_dir, config)
    first, second = (jax.tree.map(lambda x, k=k: np.asarray(x[k]), both.critic_params)
                     for k in range(2))
    assert not np.allclose(jax.tree.leaves(first)[0], jax.tree.leaves(second)[0])
    # seeds=1, seed=config.seed + 1 (its worlds split over two devices, which trains as on one:
    # test_one_seeds_worlds_over_two_devices_train_as_on_one)
    single, _ = background_run(background_runs, "worlds")
    assert single == dataclasses.replace(config, seeds=1, seed=config.seed + 1, out=single.out,
                                         **SHARDED_EVALUATION)
    alone = params_of(single.out_dir, single)
    for a, b in zip(jax.tree.leaves(second), jax.tree.leaves(alone.critic_params), strict=True):
        np.testing.assert_allclose(a, np.asarray(b)[0], rtol=2e-4, atol=2e-5)


def test_resume_equals_uninterrupted(two_seed_run, tmp_path, monkeypatch, capsys):
    """A run stopped after its first epoch and continued from the command line with only
    --out and --resume (the run's saved settings: HOLD-C reward, two seeds, ...; here also
    --num_epochs, as the stopped run was started with one) ends bit-exact."""
    config, _ = two_seed_run
    out = str(tmp_path / "resumed")
    first = train(dataclasses.replace(config, out=out, num_epochs=1), quiet=True)  # "killed"
    record = train_cli([f"--out={out}", "--resume", f"--num_epochs={config.num_epochs}"])
    assert record["epoch"] == config.num_epochs
    assert "replay: 64 transitions per seed" in capsys.readouterr().err
    # Wall time goes on from the first session's; the rate is the second session's alone.
    second_s = (record["env_steps"] - first["env_steps"]) * config.seeds / record[
        "env_steps_per_s"]
    assert record["wall_s"] == pytest.approx(first["wall_s"] + second_s, abs=0.01)
    assert checkpoint.read_config(out, TrainConfig) == dataclasses.replace(config, out=out)
    with monkeypatch.context() as patch:  # a finished run is reported, not rebuilt
        patch.setattr("holdjax.train.get_trainer", lambda config: pytest.fail("built"))
        assert train_cli([f"--out={out}", "--resume"]) == record
    resumed, uninterrupted = params_of(out, config), params_of(config.out_dir, config)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The restored state called the epoch compiled for the fresh one (no second compile).
    trainer = get_trainer(config)
    assert trainer.train_epoch._cache_size() == trainer.evaluate._cache_size() == 1


def test_evaluate_reads_a_checkpoint_written_by_train(two_seed_run, monkeypatch, capsys):
    """`holdjax.evaluate` restores the HOLD-C run's policy and scores it without its reward
    model (here made unloadable), as the run's own trainer scores the same policy."""
    config, _ = two_seed_run
    trainer = get_trainer(config)
    _, state, _ = checkpoint.restore(config.out_dir, trainer.init_shapes()[0])
    expected, _ = trainer.evaluate_policies(state.sac.actor_params, trainer.seed_keys(12345))
    monkeypatch.setattr("holdjax.reward.base.holdc_to_goals",
                        lambda *args: pytest.fail("loaded the reward model"))
    rewards_built = []  # the cached HOLD-C trainer would never load the model either

    def spied(config):
        rewards_built.append(config.reward)
        return get_trainer(config)

    monkeypatch.setattr("holdjax.evaluate.get_trainer", spied)
    result = evaluate_cli([f"--run={config.out_dir}", "--episodes=2", "--json"])
    assert rewards_built == ["sparse"]
    assert result["step"] == 2 and result["episodes"] == 2 and result["seeds"] == 2
    assert result["env_steps"] == int(state.env_steps) == 16
    assert result["per_seed"] == {k: np.asarray(v).tolist() for k, v in expected.items()}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2


def test_plot_draws_a_trained_runs_logged_success(two_seed_run, tmp_path):
    """A run's own metrics.jsonl draws as the seeds' mean eval success per logged step."""
    config, _ = two_seed_run
    records = read_metrics(config.out_dir)
    (ax,) = curves_figure([config.out_dir]).axes
    np.testing.assert_allclose(ax.get_lines()[0].get_xydata(), [
        [r["env_steps"], np.mean(r["eval_success_rate"])] for r in records])
    path = plot_runs([config.out_dir], str(tmp_path / "curves.png"))
    assert os.path.getsize(path) > 1000


def test_read_metrics_names_the_missing_file(tmp_path):
    """A missing metrics file given by name is reported as that file; a folder without one
    is asked about as a run directory."""
    with pytest.raises(FileNotFoundError, match=r"copied\.jsonl not found$"):
        read_metrics(str(tmp_path / "copied.jsonl"))
    with pytest.raises(FileNotFoundError, match="metrics.jsonl not found: is .* a holdjax.train"):
        read_metrics(str(tmp_path))


def test_metrics_cut_short_by_a_kill_are_read_and_appended_to(tmp_path, capsys):
    """An unfinished last line (a kill mid-write) is left out with a warning and cut off
    before the next record is appended; a bad line elsewhere is named; a whole last line
    without its newline is kept and ended."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "eval_success_rate": [0.5]}\n{"epoch": 2, "eval_succ')
    assert [r["epoch"] for r in read_metrics(str(path))] == [1]
    assert "its last line is unfinished" in capsys.readouterr().err
    drop_unfinished_line(str(path))
    with open(path, "a") as f:
        f.write('{"epoch": 2, "eval_success_rate": [1.0]}\n')
    assert [r["eval_success_rate"] for r in read_metrics(str(path))] == [[0.5], [1.0]]
    assert capsys.readouterr().err == ""
    path.write_text('{"epoch": 1}\n{"epoch": 2\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2, is not a metrics record"):
        read_metrics(str(path))
    path.write_text('{"epoch": 1}')
    drop_unfinished_line(str(path))
    assert path.read_text() == '{"epoch": 1}\n'


def test_plot_leaves_gaps_where_an_epoch_lacks_the_metric(tmp_path, capsys):
    """Losses are None before training starts: those epochs are gaps, not an error; an empty
    metrics file given by name is named once."""
    records = [{"epoch": 1, "env_steps": 8, "critic_loss": None},
               {"epoch": 2, "env_steps": 16, "critic_loss": [0.5, 0.7]}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    mean_line = curves_figure([str(tmp_path)], "critic_loss").axes[0].lines[0]
    np.testing.assert_array_equal(mean_line.get_xdata(), [8, 16])
    np.testing.assert_allclose(mean_line.get_ydata(), [np.nan, 0.6])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit):
        plot_cli([str(tmp_path / "empty.jsonl"), f"--out={tmp_path / 'c.png'}"])
    assert f"error: {tmp_path / 'empty.jsonl'} is empty" in capsys.readouterr().err


def test_plot_names_the_metrics_a_run_logs(tmp_path, capsys):
    os.makedirs(tmp_path / "run")
    (tmp_path / "run" / "metrics.jsonl").write_text(json.dumps(
        {"epoch": 1, "env_steps": 1000, "eval_success_rate": [0.5], "critic_loss": [1.0]}))
    with pytest.raises(SystemExit):
        plot_cli([str(tmp_path / "run"), "--metric=foo", f"--out={tmp_path / 'c.png'}"])
    assert ("logs no metric 'foo'; available: critic_loss, env_steps, eval_success_rate"
            in capsys.readouterr().err)


def test_plot_curve_is_the_seed_mean_with_its_range_on_a_rate_axis(tmp_path):
    """One line per run at the seeds' mean, labelled with the seed count; success rates on
    a 0-1 axis even when every value is 0; other metrics scaled to their values; against
    env steps or minutes of training."""
    import matplotlib.colors
    import matplotlib.pyplot as plt

    # Run "two" was resumed from epoch 1 and logged epoch 2 twice: the later record counts.
    runs = {"two": [[0.0, 0.5], [0.9, 0.9], [0.2, 0.4]], "one": [[0.0], [0.0]]}
    for name, rates in runs.items():
        os.makedirs(tmp_path / name)
        with open(tmp_path / name / "metrics.jsonl", "w") as f:
            for epoch, rate in zip([1, 2, 2] if name == "two" else [1, 2], rates, strict=True):
                f.write(json.dumps({"epoch": epoch, "env_steps": 1000 * epoch,
                                    "wall_s": 90.0 * epoch, "eval_success_rate": rate,
                                    "eval_return": [5.0 * epoch]}) + "\n")
    (ax,) = curves_figure([str(tmp_path / "two"), str(tmp_path / "one")]).axes
    two, one = ax.get_lines()
    np.testing.assert_allclose(two.get_xydata(), [[1000, 0.25], [2000, 0.3]])
    np.testing.assert_allclose(one.get_ydata(), [0.0, 0.0])
    # The shaded band spans the seeds' range: its outline holds each step's min and max.
    band = {tuple(v) for v in ax.collections[0].get_paths()[0].vertices.tolist()}
    assert {(1000, 0.0), (1000, 0.5), (2000, 0.2), (2000, 0.4)} <= band
    assert {y for x, y in band if x == 1000} == {0.0, 0.5}
    assert ax.collections[0].get_facecolor()[0][:3] == pytest.approx(
        matplotlib.colors.to_rgb(two.get_color()))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["two (2 seeds)",
                                                                   "one (1 seed)"]
    assert ax.get_ylim() == (-0.02, 1.02)
    assert ax.get_xlabel() == "environment steps"
    (ax,) = curves_figure([str(tmp_path / "one")], "eval_return").axes
    assert ax.get_ylim()[1] > 10 > 1.02
    (ax,) = curves_figure([str(tmp_path / "two")], x="wall_s").axes
    np.testing.assert_allclose(ax.get_lines()[0].get_xydata(), [[1.5, 0.25], [3.0, 0.3]])
    assert ax.get_xlabel() == "training time (minutes)"
    plt.close("all")
    with pytest.raises(SystemExit):
        plot_cli([str(tmp_path / "two"), "--x=epochs", f"--out={tmp_path / 'c.png'}"])
    assert os.path.exists(plot_cli([str(tmp_path / "two"), "--x=wall_s",
                                    f"--out={tmp_path / 'by_time.png'}"]))


def test_plot_writes_where_it_says_marks_short_curves_and_refuses_a_folder(tmp_path, capsys):
    """An --out without a suffix is written (and named) as PNG; a folder is refused; a run
    of one epoch shows its one point."""
    os.makedirs(tmp_path / "run")
    (tmp_path / "run" / "metrics.jsonl").write_text(json.dumps(
        {"epoch": 1, "env_steps": 1000, "eval_success_rate": [0.5]}) + "\n")
    assert plot_cli([str(tmp_path / "run"), f"--out={tmp_path / 'bare'}"]) == str(
        tmp_path / "bare.png")
    assert f"wrote {tmp_path / 'bare.png'}" in capsys.readouterr().out
    assert os.path.getsize(tmp_path / "bare.png") > 1000
    with pytest.raises(SystemExit):
        plot_cli([str(tmp_path / "run"), f"--out={tmp_path / 'run'}"])
    assert f"--out {tmp_path / 'run'} is a folder" in capsys.readouterr().err
    (line,) = curves_figure([str(tmp_path / "run")]).axes[0].get_lines()
    assert line.get_marker() == "o"


def test_config_flags():
    config, rest = config_from_args(["--config=fig3a_pushing_sac", "--seeds=5",
                                     "--timeouts_as_terminal=true", "--resume"])
    assert (config.task, config.reward, config.seeds, config.num_epochs) == (
        "pushing", "sparse", 5, 400)
    assert config.timeouts_as_terminal and rest == {"resume": None}  # bare: the caller parses it
    config, _ = config_from_args(["--task=pushing", "--reward=dense", "--total_steps=4000"])
    assert config.num_epochs == 4 and config.total_steps == 4000
    assert config.batched_q_heads is None  # unset: by backend
    config, _ = config_from_args(["--batched_q_heads=false"])
    assert config.sac.batched_q_heads is False
    with pytest.raises(ValueError, match="expects an int"):
        config_from_args(["--num_envs=many"])
    with pytest.raises(ValueError, match="unknown config 'nope'; available: .*fig3a"):
        config_from_args(["--config=nope"])
    with pytest.raises(ValueError, match="valid rewards"):
        config_from_args(["--reward=holdz"])[0].validate()


def test_update_unroll_device_default(monkeypatch):
    """Unrolled update scans pay off on an accelerator, not in CPU compile time; so do
    batched evaluations and one update per env step. A set value is kept on any device."""
    assert TrainConfig().resolved_update_unroll == 1  # this CPU
    assert TrainConfig(update_unroll=2).resolved_update_unroll == 2
    assert TrainConfig().resolved_eval_batch == 1
    assert TrainConfig(num_envs=16).resolved_updates_per_step == 1 / 16
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert TrainConfig().resolved_update_unroll == 4
    assert TrainConfig().resolved_eval_batch == 10
    assert TrainConfig(eval_batch=3).resolved_eval_batch == 3
    assert TrainConfig(num_envs=16).resolved_updates_per_step == 1.0
    assert device_default(0.25, 1, 2) == 0.25
    with pytest.raises(ValueError, match="update_unroll"):
        TrainConfig(update_unroll=-1).validate()


@pytest.mark.parametrize("field, value, message", [
    ("learning_rate", 0.0, "learning_rate must be > 0"),
    ("tau", 1.5, r"tau must be in \(0.0, 1.0\]"),
    ("discount", -0.1, r"discount must be in \[0, 1\]"),
    ("distance_normalizer", 0.0, "distance_normalizer must be > 0"),
    ("reward_dtype", "fp16", "unknown reward_dtype 'fp16'; valid: float32, bfloat16"),
    ("distance_type", "l1", "unknown distance_type 'l1'; valid: eucl, sq_eucl"),
    ("distance_type", "sq_eucl", "set HOLD-C's embedding distance; --reward=sparse has its own"),
    ("impl", "cuda", "unknown physics impl 'cuda'; valid: auto, warp, jax"),
    ("encoder_conv", "cudnn", "unknown encoder conv 'cudnn'; valid: auto, canonical, lax, rows"),
    ("aug_pad", -1, "aug_pad must be >= 0"),
    ("subtask_hold_steps", 0, "subtask_hold_steps must be at least 1"),
    ("replay_size", 100, "replay_size 100 is smaller than one batch"),
    ("holdr_attention", "flash", "unknown holdr_attention 'flash'; valid: auto, flax, cudnn"),
])
def test_out_of_range_settings_fail_before_anything_is_built(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TrainConfig(), **{field: value}).validate()


def test_runs_keep_every_checkpoint_or_the_newest_with_their_replay(tmp_path):
    """Every checkpoint stays (evaluate --step reads any), unless each holds the replay
    buffer (--save_replay): then the newest 3, or --keep_checkpoints of them."""
    assert TrainConfig().resolved_keep_checkpoints is None
    assert TrainConfig(save_replay=True).resolved_keep_checkpoints == 3
    assert TrainConfig(keep_checkpoints=5, save_replay=True).resolved_keep_checkpoints == 5
    state = {"w": jnp.ones(3)}
    for keep, kept in ((None, [1, 2, 3, 4, 5]), (2, [4, 5])):
        run_dir = str(tmp_path / str(keep))
        mngr = checkpoint.manager(run_dir, keep)
        for epoch in range(1, 6):
            checkpoint.save(mngr, epoch, state)
        assert sorted(checkpoint.manager(run_dir).all_steps()) == kept


def test_a_replay_too_small_to_start_updates_is_refused():
    """Updates wait for learning_starts transitions: a replay that can never hold them would
    train nothing, so the settings are refused up front."""
    with pytest.raises(ValueError, match="wait for 2000 transitions .* the replay holds 1008"):
        TrainConfig(replay_size=1000, learning_starts=2000).validate()
    TrainConfig(replay_size=1000, learning_starts=1008).validate()  # rounded up to whole rows
    assert TrainConfig(replay_size=1000).replay_held == 1008  # 63 rows of 16 worlds


def test_updates_start_after_the_initial_random_steps_as_the_references():
    """By default updates wait for the random steps' transitions (the reference explores
    first, then updates), for one episode when there are fewer, and for no more than the
    replay holds."""
    assert TrainConfig().min_replay == 1000
    assert TrainConfig(initial_random_steps=2500).min_replay == 2500
    assert TrainConfig(initial_random_steps=0).min_replay == 100  # pushing's episode
    assert TrainConfig(task="drawer_open", initial_random_steps=50).min_replay == 200
    small = TrainConfig(task="drawer_open", batch_size=64, replay_size=100)  # 112 held
    assert small.min_replay == 112
    small.validate()
    assert TrainConfig(learning_starts=300).min_replay == 300


def test_an_update_ratio_not_whole_per_fused_step_is_rounded_and_told(monkeypatch, capsys):
    """Updates are whole per fused step: the ratio rounds (halves up, at least one update)
    and the run says what it gets when that differs from what was asked."""
    assert TrainConfig(updates_per_step=0.5, num_envs=5).updates_per_iteration == 3
    assert TrainConfig(updates_per_step=0.01, num_envs=16).effective_updates_per_step == 1 / 16
    monkeypatch.setattr("holdjax.train.train", lambda config, resume: {})
    train_cli(["--updates_per_step=0.01", "--num_envs=16"])
    assert ("note: --updates_per_step=0.01 gives 1 update(s) per step of 16 worlds, 0.0625 per "
            "env step") in capsys.readouterr().err
    train_cli(["--updates_per_step=0.25", "--num_envs=16"])
    assert "note:" not in capsys.readouterr().err


def test_per_q_critic_optimizers_reach_sac_and_refuse_fused_encoders():
    config = config_from_args(["--per_q_critic_optimizers=true"])[0].validate()
    assert config.sac.per_q_optimizers and not TrainConfig().sac.per_q_optimizers
    with pytest.raises(ValueError, match="turn one of them off"):
        config_from_args(["--per_q_critic_optimizers=true", "--fused_encoders=true"])[0].validate()


def test_replay_capacity_is_the_run_up_to_a_million_and_at_least_a_batch():
    assert TrainConfig(num_epochs=4, epoch_length=1000).replay_capacity == 4000
    assert TrainConfig(num_epochs=2000, epoch_length=1000).replay_capacity == 1_000_000
    short = TrainConfig(num_epochs=1, epoch_length=200, batch_size=256)
    assert short.replay_capacity == 256
    short.program_key().validate()  # the trainer's config of a run shorter than one batch
    assert TrainConfig(replay_size=40_000).replay_capacity == 40_000


def test_total_steps_must_be_a_positive_int():
    """Rounded up to whole epochs, never silently turned into one epoch."""
    assert config_from_args(["--total_steps=1001"])[0].num_epochs == 2
    for text, message in (("-5", "must be at least 1, got -5"), ("0", "at least 1"),
                          ("4k", "expects an int, got '4k'")):
        with pytest.raises(ValueError, match=message):
            config_from_args([f"--total_steps={text}"])


@pytest.mark.parametrize(("flag", "message"), [
    ("--task=stacking", "unknown task 'stacking'"), ("--bogus=1", "unknown flags: --bogus;"),
    ("--lerning_rate=1e-3", "unknown flags: --lerning_rate (did you mean --learning_rate?)"),
    ("--num_envs=0", "num_envs"), ("--total_steps=-5", "at least 1"),
    ("--task", "--task needs a value"), ("--total_steps", "--total_steps needs a value"),
    ("--distance_params=a,b", "--distance_params expects comma-separated numbers"),
    ("--resume=maybe", "--resume expects true or false, got 'maybe'"),
    ("--num_envs=many", "--num_envs expects an int"),
    ("pushing", "unexpected argument 'pushing'; use --field=value")])
def test_bad_train_flags_exit_with_a_message(flag, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cli([flag])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err


def test_an_out_that_is_a_file_is_refused_before_anything_is_built(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.setattr("holdjax.train.train", lambda config, resume: pytest.fail("trained"))
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        train_cli([f"--out={tmp_path / 'afile'}"])
    assert exit_info.value.code == 2
    assert f"error: --out {tmp_path / 'afile'} is a file" in capsys.readouterr().err


def test_train_help_lists_its_flags_and_each_fields_comment(capsys):
    train_cli(["--help"])
    out = capsys.readouterr().out
    for flag in ("--config=NAME", "--total_steps=N", "--resume", "--num_envs=16",
                 "--updates_per_step=0.0", "--batched_q_heads=None"):
        assert flag in out
    assert "0 = auto: 1 (the reference's) on an" in out  # updates_per_step's comment
    assert "Output." not in out and "SAC (the reference's settings)" not in out  # titles
    assert set(field_help()) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_holdc_reward_from_a_released_format_checkpoint(two_seed_run, holdc_checkpoint,
                                                      tmp_path):
    """A tiny HOLD-C in the released checkpoint's format drives a short training run (the
    two-seed run's)."""
    config, record = two_seed_run
    assert config.reward == "holdc" and config.reward_checkpoint == os.path.dirname(
        holdc_checkpoint)
    assert np.all(np.isfinite(record["critic_loss"]))
    assert os.path.isdir(holdc_checkpoint + ".orbax")  # converted once, restored afterwards
    trainer = get_trainer(config)
    distances = trainer.reward_fn.distance(trainer.reward_fn.goals)
    assert distances.shape == (1, 1) and float(trainer.reward_fn.baselines[0]) < 1e-3
    with pytest.raises(FileNotFoundError, match="released HOLD-C checkpoint"):
        get_trainer(dataclasses.replace(config, reward_checkpoint=str(tmp_path / "none")))


def test_run_config_round_trips_through_json(tmp_path):
    config = dataclasses.replace(TINY, distance_type="sq_eucl_huber",
                                 distance_params=(1.0, 2.0, 0.5), out=str(tmp_path))
    checkpoint.write_config(str(tmp_path), config)
    checkpoint.write_config(str(tmp_path), config)  # replaces it whole
    assert os.listdir(tmp_path) == ["config.json"]
    restored = checkpoint.read_config(str(tmp_path), TrainConfig)
    assert restored == config and hash(restored) == hash(config)


def test_state_observation_run_trains_evaluates_and_saves(state_run, tmp_path, capsys):
    """observation=state: float state vectors in policy and replay, no camera while training,
    parameters change, metrics, checkpoint, eval video and the evaluate CLI (its plain
    report and video) all work."""
    config, record = state_run
    trainer = get_trainer(config)
    initial, replay = trainer.init(config.seed)
    assert trainer.obs_shape == (trainer.env.task.state_dim,)
    assert initial.env.obs.size == 0  # the env skipped rendering
    seed_replay = jax.tree.map(lambda x: x[0], replay)
    assert seed_replay.frames.shape[2:] == (trainer.env.task.state_dim,)
    assert seed_replay.frames.dtype == np.float32
    assert seed_replay.capacity >= config.replay_capacity
    assert "encoder" not in initial.sac.actor_params["params"]
    lines = open(os.path.join(config.out_dir, "metrics.jsonl")).read().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert all(np.isfinite(record["critic_loss"])) and record["env_steps"] == 16
    trained = params_of(config.out_dir, config)
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                           initial.sac.actor_params, trained.actor_params)
    assert all(jax.tree.leaves(changed))
    assert os.path.exists(os.path.join(config.out_dir, "videos", "eval_epoch0002.mp4"))
    capsys.readouterr()
    video = str(tmp_path / "eval.mp4")  # (a GIF merges the stand-in physics' still frames)
    result = evaluate_cli([f"--run={config.out_dir}", "--episodes=2", f"--video={video}"])
    sparse = get_trainer(dataclasses.replace(config, reward="sparse"))  # the evaluation's
    expected, frames = sparse.evaluate_policies(trained.actor_params, sparse.seed_keys(12345))
    assert result["step"] == 2 and result["video"] == video
    assert result["per_seed"] == {k: np.asarray(v).tolist() for k, v in expected.items()}
    assert result["success_rate"] == np.mean(expected["eval_success_rate"])
    episode_length = trainer.env.task.episode_length
    assert np.asarray(frames).shape[:2] == (episode_length + 1, 2)  # the reset frame too
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)  # the reader's ffmpeg
        written = imageio.mimread(video)
    assert len(written) == episode_length + 1
    assert written[0].shape[:2] == (48 * 4, 2 * 48 * 4)  # two worlds side by side, x4
    out = capsys.readouterr().out
    assert (f"pushing checkpoint 2 (16 env steps): success rate {result['success_rate']:.3f} "
            "over 2 episodes x 1 seed(s)") in out and f"video: {video}" in out


# After the state test, by when the sharded run (second in the background) has finished.
def test_two_devices_give_the_same_result(two_seed_run, two_seed_evaluated, background_runs):
    """Seeds sharded over two forced host devices train exactly as on one device, their
    two epochs evaluated together give the records of one at a time, and `holdjax.evaluate`
    restores the run onto both devices and scores it as the one-device run scores."""
    config, _ = two_seed_run
    sharded, output = background_run(background_runs, "sharded")  # it saw two devices
    assert sharded == dataclasses.replace(config, out=sharded.out, **SHARDED_EVALUATION)
    records = {run.out_dir: [json.loads(line) for line in open(
        os.path.join(run.out_dir, "metrics.jsonl"))] for run in (sharded, config)}
    for one, together in zip(records[config.out_dir], records[sharded.out_dir], strict=True):
        for name in ("epoch", "eval_success_rate", "eval_success_rate_last", "eval_return"):
            assert together[name] == one[name], name
    assert os.path.exists(os.path.join(sharded.out_dir, "videos", "eval_epoch0002.mp4"))
    assert output["evaluated"]["step"] == two_seed_evaluated["step"] == 2
    assert output["evaluated"]["per_seed"] == two_seed_evaluated["per_seed"]
    sharded, single = params_of(sharded.out_dir, config), params_of(config.out_dir, config)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)


# After the two-device test, by when the worlds run (second in the background) has finished.
def test_one_seeds_worlds_over_two_devices_train_as_on_one(two_seed_run, two_seed_evaluated,
                                                           background_runs):
    """One seed's worlds split over two forced host devices (each steps, renders and scores
    its two worlds and keeps their transitions; the learner runs on both, each batch drawn
    from both devices' columns) train as that seed does on one device, here as seed 1 of the
    two-seed run: the same records and parameters, up to float rounding (bitwise equal on
    some CPUs; on an AVX2-only EPYC the two programs round differently, by 5e-8 in the
    parameters after two epochs), and `holdjax.evaluate` restores the run onto both devices
    and scores it the same."""
    config, _ = two_seed_run
    worlds, two = background_run(background_runs, "worlds")  # it saw two devices
    assert two["split"] == "worlds" and get_trainer(config).split == "seeds"
    assert worlds == dataclasses.replace(config, seeds=1, seed=config.seed + 1,
                                         out=worlds.out, **SHARDED_EVALUATION)
    for both, split in zip(read_metrics(config.out_dir), read_metrics(worlds.out_dir),
                           strict=True):
        assert (split["epoch"], split["env_steps"]) == (both["epoch"], both["env_steps"])
        for name in ("eval_success_rate", "eval_return", "physics_overflow_episodes"):
            assert split[name] == both[name][1:], name
        for name in ("critic_loss", "actor_loss", "alpha"):
            np.testing.assert_allclose(split[name], both[name][1:], rtol=1e-6, err_msg=name)
    assert two["evaluated"]["per_seed"] == {
        name: values[1:] for name, values in two_seed_evaluated["per_seed"].items()}
    params = params_of(config.out_dir, config)
    for a, b in zip(jax.tree.leaves(params_of(worlds.out_dir, worlds)),
                    jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b)[1], rtol=1e-5, atol=1e-6)


# `python -m holdjax.train` on the kinematic stand-in, with the flags given, in a process of a
# job whose process SIGTERM_PROCESS gets a SIGTERM during its first epoch. Each process then
# prints main()'s exit status and the run's newest checkpoint and, as a relaunched job would,
# runs `--out=... --resume` (in the same processes: a second launch would compile the
# trainers again), printing its record as JSON.
MAIN_SCRIPT = """
import json, os, signal, sys
import pytest
sys.path.insert(0, "tests")
from kinematic import use_kinematic_physics
from holdjax import checkpoint, train
use_kinematic_physics(pytest.MonkeyPatch())
summarize = train.summarize_epoch
if os.environ["SIGTERM_PROCESS"] == os.environ["JAX_PROCESS_ID"]:
    def summarize_after_a_sigterm(out, config):
        os.kill(os.getpid(), signal.SIGTERM)
        return summarize(out, config)
    train.summarize_epoch = summarize_after_a_sigterm
try:
    train.main(sys.argv[1:])
except SystemExit as stopped:
    status = stopped.code
train.summarize_epoch = summarize
out = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--out="))
print(f"exit status {status}; newest checkpoint: epoch {checkpoint.latest_epoch(out)}",
      file=sys.stderr, flush=True)
print(json.dumps(train.main([f"--out={out}", "--resume"])))
"""


def flags_of(config: TrainConfig) -> list[str]:
    """The command-line flags that give ``config``."""
    defaults = TrainConfig()
    return [f"--{name}={value}" for name, value in dataclasses.asdict(config).items()
            if value != getattr(defaults, name)]


def test_two_processes_train_as_one_job(state_run, tmp_path):
    """A job of two processes (hosts) splits two seeds over their devices, process 0 alone
    prints and writes the logs, a SIGTERM to process 1 alone stops both after epoch 1 with a
    checkpoint (exit status 130), and the job resumes from it: each seed then ends as in an
    uninterrupted one-process run."""
    config, _ = state_run
    two = dataclasses.replace(config, seeds=2, checkpoint_frequency=2,
                              out=str(tmp_path / "job"))
    lead, other = run_two_processes(["-c", MAIN_SCRIPT, *flags_of(two)],
                                    env={"SIGTERM_PROCESS": "1"})
    stopped = [p.stderr.split("exit status")[0] for p in (lead, other)]
    assert "(2 devices in 2 processes)" in stopped[0] and "eval_success" in stopped[0]
    assert "SIGTERM: stopping after this epoch" in stopped[1]
    assert f"its last checkpoint is epoch 1 in {two.out_dir}" in stopped[0]
    assert "run pushing" not in stopped[1] and "eval_success" not in stopped[1]
    assert "last checkpoint" not in stopped[1]
    for process in (lead, other):
        assert "exit status 130; newest checkpoint: epoch 1" in process.stderr
    # Both processes restore their seeds from epoch 1's checkpoint and go on together.
    records = [json.loads(p.stdout.splitlines()[-1]) for p in (lead, other)]
    timings = ("wall_s", "env_steps_per_s", "train_s", "eval_s", "setup_s", "init_s",
               "started_at")
    untimed = [{k: v for k, v in r.items() if k not in timings} for r in records]
    assert untimed[0] == untimed[1] and untimed[0]["epoch"] == 2
    resumed = [p.stderr.split("exit status")[1] for p in (lead, other)]
    assert "done: 16 env steps x 2 seed(s)" in resumed[0] and "done: " not in resumed[1]
    # Seed 0 of the job is the one-seed run's seed: the same records and parameters.
    alone, job = read_metrics(config.out_dir), read_metrics(two.out_dir)
    assert len(open(os.path.join(two.out_dir, "metrics.jsonl")).readlines()) == len(job) == 2
    for one, both in zip(alone, job, strict=True):
        for name in ("eval_success_rate", "eval_return", "critic_loss", "actor_loss"):
            assert both[name][0] == one[name][0], name
    assert os.path.exists(os.path.join(two.out_dir, "videos", "eval_epoch0002.mp4"))
    _, saved, _ = checkpoint.restore(two.out_dir, get_trainer(two).init_shapes()[0])
    for a, b in zip(jax.tree.leaves(saved.sac), jax.tree.leaves(params_of(config.out_dir,
                                                                          config)), strict=True):
        np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(b)[0])


def test_the_first_initial_random_steps_act_uniformly_then_the_policy_acts(state_run):
    """Until initial_random_steps (4: the first fused step of 4 worlds) each world's action
    is the uniform draw of the step's key, as the fused step splits it; afterwards the
    policy's sample (here read back from the run's saved replay)."""
    config, _ = state_run
    trainer = get_trainer(config)
    initial, replay_like = trainer.init(config.seed)
    _, _, replay = checkpoint.restore(config.out_dir, trainer.init_shapes()[0], replay_like)
    actions = np.asarray(replay.action[0])  # seed 0: (rows, worlds, action_dim)
    key = initial.key[0]
    for row in range(2):
        next_key, act_key = jax.random.split(key, 4)[:2]  # the fused step's split
        uniform = jax.random.uniform(jax.random.split(act_key)[1], actions.shape[1:],
                                     minval=-1.0, maxval=1.0)
        if row == 0:
            np.testing.assert_array_equal(actions[row], uniform)
        else:
            assert not np.allclose(actions[row], uniform)
            assert (np.abs(actions[row]) < 1).all()
        key = next_key


def test_resuming_a_run_that_has_its_epochs_trains_nothing_and_says_so(state_run, monkeypatch,
                                                                       capsys):
    config, record = state_run
    monkeypatch.setattr("holdjax.train.get_trainer", lambda config: pytest.fail("built"))
    assert train(config, resume=True, quiet=True) == record
    assert f"{config.out_dir} has finished its 2 epochs; pass a larger" in capsys.readouterr().err
    assert train(dataclasses.replace(config, num_epochs=1), resume=True, quiet=True) == record
    assert (f"{config.out_dir} already has 2 epochs, more than the 1 asked for (nothing is "
            "trained or removed)") in capsys.readouterr().err


def test_a_half_configured_multi_process_launch_says_what_to_set(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS="localhost:1")
    env.pop("JAX_NUM_PROCESSES", None)
    result = subprocess.run([sys.executable, "-m", "holdjax.train", "--task=pushing",
                             f"--out={tmp_path}"], env=env, text=True, capture_output=True,
                            timeout=300)
    assert result.returncode == 2
    assert "set JAX_NUM_PROCESSES and JAX_PROCESS_ID" in result.stderr
    assert not os.listdir(tmp_path)


def test_evaluations_batched_over_epochs_equal_one_at_a_time(state_run, tmp_path,
                                                              monkeypatch):
    """`eval_batch`: the policies of several epochs rolled out together give each epoch the
    episodes and results it gets alone, the same records and parameters; a checkpoint (here
    also a video and the run's end) ends a batch early. (Each epoch's eval_return here is
    made of its evaluation keys, so that a record given another epoch's results shows.)"""
    config = dataclasses.replace(state_run[0], num_epochs=4, checkpoint_frequency=4,
                                 path_save_frequency=4, save_replay=False)
    runs = {batch: dataclasses.replace(config, eval_batch=batch, out=str(tmp_path / str(batch)))
            for batch in (1, 3)}
    trainer = get_trainer(config)
    evaluate = trainer.evaluate

    def keyed(policies, keys):
        stats, frames = evaluate(policies, keys)
        return {**stats, "eval_return": keys[..., 1].astype(jnp.float32)}, frames

    monkeypatch.setattr(trainer, "evaluate", keyed)
    for run in runs.values():
        train(run, quiet=True)
    assert evaluate._cache_size() >= 2  # rolled out 3 epochs at once, then 1
    records = {batch: [json.loads(line) for line in open(
        os.path.join(run.out_dir, "metrics.jsonl"))] for batch, run in runs.items()}
    assert [r["epoch"] for r in records[3]] == [1, 2, 3, 4]
    for one, batched in zip(records[1], records[3], strict=True):
        for name in ("env_steps", "eval_success_rate", "eval_success_rate_last", "eval_return",
                     "critic_loss"):
            assert batched[name] == one[name], name
    # Epoch e is evaluated with eval_keys(seed, e): its own stream, apart from training's.
    assert [r["eval_return"] for r in records[3]] == [
        trainer.eval_keys(config.seed, epoch)[:, 1].astype(np.float32).tolist()
        for epoch in range(4)]
    assert len({r["eval_return"][0] for r in records[3]}) == 4
    assert not np.array_equal(trainer.eval_keys(config.seed, 0), trainer.seed_keys(config.seed))
    walls = [r["wall_s"] for r in records[3]]
    assert walls == sorted(walls) and records[3][0]["eval_s"] == records[3][2]["eval_s"]
    for a, b in zip(jax.tree.leaves(params_of(runs[1].out_dir, config)),
                    jax.tree.leaves(params_of(runs[3].out_dir, config)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert os.path.exists(os.path.join(runs[3].out_dir, "videos", "eval_epoch0004.mp4"))


def test_starting_again_where_a_start_left_no_checkpoint_drops_its_logs(state_run, tmp_path,
                                                                         capsys):
    """A run killed before its first checkpoint and started again: the old attempt's records,
    events and videos go, so that curves and TensorBoard show the new run alone."""
    config = dataclasses.replace(state_run[0], out=str(tmp_path / "again"))
    os.makedirs(os.path.join(config.out_dir, "videos"))  # a folder no run wrote: kept
    assert clear_earlier_attempt(config.out_dir) == []
    assert os.path.isdir(os.path.join(config.out_dir, "videos"))
    checkpoint.write_config(config.out_dir, config)  # the earlier start's
    os.makedirs(os.path.join(config.out_dir, "tensorboard"))
    open(os.path.join(config.out_dir, "tensorboard", "events.old"), "w").close()
    with open(os.path.join(config.out_dir, "metrics.jsonl"), "w") as f:
        for epoch in (1, 2, 3):
            f.write(json.dumps({"epoch": epoch, "env_steps": 8 * epoch,
                                "eval_success_rate": [0.99]}) + "\n")
    train(config)
    assert "starting anew: removed metrics.jsonl, videos, tensorboard of an earlier start" in (
        capsys.readouterr().err)
    assert [r["epoch"] for r in read_metrics(config.out_dir)] == [1, 2]
    assert not os.path.exists(os.path.join(config.out_dir, "tensorboard", "events.old"))
    assert tensorboard_steps(config.out_dir, "eval_success_rate") == [8, 16]


@pytest.mark.parametrize("failure", ["interrupt", "nan_parameters"])
def test_a_run_stopped_in_epoch_3_logs_the_epochs_before(state_run, tmp_path, monkeypatch,
                                                         failure):
    """Ctrl-C (or a launcher's SIGINT) during epoch 3 of a run that evaluates 5 epochs at a
    time, or parameters that turn NaN in it (its losses, taken before each update, are still
    finite): epochs 1 and 2 are evaluated and logged before the run stops, and no checkpoint
    holds NaN parameters."""
    config = dataclasses.replace(state_run[0], num_epochs=5, checkpoint_frequency=5,
                                 path_save_frequency=0, eval_batch=5,
                                 out=str(tmp_path / failure))
    trainer = get_trainer(config)
    train_epoch, calls = trainer.train_epoch, []

    def third_fails(*args):
        calls.append(1)
        if len(calls) == 3 and failure == "interrupt":
            raise KeyboardInterrupt
        state, replay, out = train_epoch(*args)
        if len(calls) == 3:
            nan = jax.tree.map(lambda x: x * jnp.nan, state.sac.actor_params)
            state = state.replace(sac=state.sac.replace(actor_params=nan))
        return state, replay, out

    monkeypatch.setattr(trainer, "train_epoch", third_fails)
    stops = (pytest.raises(KeyboardInterrupt) if failure == "interrupt" else pytest.raises(
        TrainingDiverged, match="non-finite parameters in epoch 3; no checkpoint was written "
                                "yet; start it again with a lower --learning_rate"))
    with stops:
        train(config, quiet=True)
    records = read_metrics(config.out_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(len(r["eval_success_rate"]) == config.seeds for r in records)
    assert checkpoint.latest_epoch(config.out_dir) is None


def test_a_signal_stops_the_run_after_its_epoch_with_a_checkpoint(state_run, tmp_path,
                                                                  monkeypatch, capsys):
    """A SIGTERM (or a first Ctrl-C) during epoch 2 of a run checkpointed every 4 epochs and
    evaluated 3 at a time: the run finishes epoch 2, evaluates and logs epochs 1 and 2, saves
    a checkpoint of epoch 2 and stops saying so; resumed, it ends as the uninterrupted run."""
    config = dataclasses.replace(state_run[0], num_epochs=4, checkpoint_frequency=4,
                                 path_save_frequency=0, eval_batch=3)
    runs = {name: dataclasses.replace(config, out=str(tmp_path / name))
            for name in ("stopped", "uninterrupted")}
    summaries = []

    def sigterm_in_epoch_2(out, config):
        summaries.append(1)
        if len(summaries) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return summarize_epoch(out, config)

    monkeypatch.setattr("holdjax.train.summarize_epoch", sigterm_in_epoch_2)
    with pytest.raises(SystemExit) as exit_info:
        train_cli(flags_of(runs["stopped"]))
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "SIGTERM: stopping after this epoch with a checkpoint" in err
    assert f"its last checkpoint is epoch 2 in {runs['stopped'].out_dir}" in err
    assert [r["epoch"] for r in read_metrics(runs["stopped"].out_dir)] == [1, 2]
    assert checkpoint.latest_epoch(runs["stopped"].out_dir) == 2
    assert tensorboard_steps(runs["stopped"].out_dir, "eval_success_rate") == [8, 16]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the usual handlers are back
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler
    train(runs["stopped"], resume=True, quiet=True)
    train(runs["uninterrupted"], quiet=True)
    # A signal while an epoch's policy is evaluated stops the run after that epoch too.
    trainer = get_trainer(config)
    evaluate = trainer.evaluate

    def sigint_in_evaluation(*args):
        os.kill(os.getpid(), signal.SIGINT)
        return evaluate(*args)

    monkeypatch.setattr(trainer, "evaluate", sigint_in_evaluation)
    early = dataclasses.replace(config, eval_batch=1, out=str(tmp_path / "early"))
    with pytest.raises(KeyboardInterrupt):
        train(early, quiet=True)
    assert [r["epoch"] for r in read_metrics(early.out_dir)] == [1]
    assert checkpoint.latest_epoch(early.out_dir) == 1
    stopped, uninterrupted = (read_metrics(run.out_dir) for run in runs.values())
    for a, b in zip(stopped, uninterrupted, strict=True):
        for name in ("epoch", "env_steps", "eval_success_rate", "eval_return", "critic_loss"):
            assert a[name] == b[name], name
    for a, b in zip(*(jax.tree.leaves(params_of(run.out_dir, config)) for run in runs.values()),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def tensorboard_steps(run_dir: str, tag: str) -> list[int]:
    """The steps at which a run's TensorBoard events hold scalar ``tag``, read from the event
    file's records (length, its CRC, an Event proto, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    steps = []
    folder = os.path.join(run_dir, "tensorboard")
    for name in os.listdir(folder):
        data = open(os.path.join(folder, name), "rb").read()
        offset = 0
        while offset < len(data):
            length = int.from_bytes(data[offset:offset + 8], "little")
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return sorted(steps)


def test_a_second_signal_stops_at_once():
    """`stop_on_signal`: the first SIGINT only asks, the second raises KeyboardInterrupt; on
    leaving, the usual handler is back; off the main thread nothing is installed."""
    with stop_on_signal() as requested:
        os.kill(os.getpid(), signal.SIGINT)
        assert requested.wait(timeout=10)  # the handler runs in the main thread, here
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)  # interrupted by the handler
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler
    handlers = []

    def off_the_main_thread():
        with stop_on_signal() as requested:
            handlers.append((signal.getsignal(signal.SIGINT), requested.is_set()))

    thread = threading.Thread(target=off_the_main_thread)
    thread.start()
    thread.join()
    assert handlers == [(signal.default_int_handler, False)]


def test_a_batched_evaluation_gives_each_epoch_its_own_episodes_and_video(state_run):
    """`evaluate` of two epochs' policies (here one policy, two epochs' keys) equals each
    alone, statistics and video frames."""
    config, _ = state_run
    trainer = get_trainer(config)
    _, state, _ = checkpoint.restore(config.out_dir, trainer.init_shapes()[0])
    policy = state.sac.actor_params
    keys = [jax.vmap(jax.random.fold_in, in_axes=(0, None))(trainer.seed_keys(3), epoch)
            for epoch in (0, 1)]
    stats, frames = trainer.evaluate(jax.tree.map(lambda x: jnp.stack([x, x]), policy),
                                     jnp.stack(keys))
    for index, epoch_keys in enumerate(keys):
        alone, alone_frames = trainer.evaluate_policies(policy, epoch_keys)
        for name, value in alone.items():
            np.testing.assert_array_equal(np.asarray(stats[name])[index], np.asarray(value))
        np.testing.assert_array_equal(np.asarray(frames)[:, index], np.asarray(alone_frames))
    assert frames.shape[1:3] == (2, min(4, config.eval_episodes))
    assert not np.array_equal(np.asarray(frames)[:, 0], np.asarray(frames)[:, 1])


def test_a_checkpoint_that_does_not_fit_the_state_is_a_clear_error(tmp_path):
    """A checkpoint orbax cannot restore into the run's state (corrupt, or of another layout)
    is a CheckpointError saying what to do, never a silent fresh start."""
    run = str(tmp_path / "run")
    with checkpoint.manager(run) as mngr:
        checkpoint.save(mngr, 1, {"w": jnp.ones(3)})
    assert checkpoint.restore(run, {"w": jnp.zeros(3)})[0] == 1
    with pytest.raises(checkpoint.CheckpointError,
                       match=f"checkpoint 1 in {run} could not be restored .* another --out"):
        checkpoint.restore(run, {"w": jnp.zeros(4)})


def test_resuming_with_a_saved_replay_needs_the_settings_its_rewards_were_made_with():
    """With its buffer, a distance-reward run resumes only under the shaping and model that
    scored the buffer's rewards; without it (refilled) those may change; a sparse run's
    buffer does not depend on them."""
    saved = TrainConfig(reward="holdc", distance_normalizer=5.0)
    changed = dataclasses.replace(saved, distance_normalizer=10.0)
    with pytest.raises(checkpoint.CheckpointError, match="distance_normalizer: saved 5.0"):
        checkpoint.check_resumable(saved, changed, with_replay=True)
    checkpoint.check_resumable(saved, changed, with_replay=False)
    sparse = TrainConfig(reward="sparse")
    checkpoint.check_resumable(sparse, dataclasses.replace(sparse, distance_normalizer=10.0),
                               with_replay=True)
    with pytest.raises(checkpoint.CheckpointError, match="timeouts_as_terminal: saved False"):
        checkpoint.check_resumable(sparse, dataclasses.replace(sparse, timeouts_as_terminal=True),
                                   with_replay=True)


def test_missing_and_mismatched_checkpoints_fail_clearly(two_seed_run, state_run, tmp_path,
                                                         monkeypatch, capsys):
    config, _ = two_seed_run
    # Each is found before a trainer is built (compiling one takes a minute).
    monkeypatch.setattr("holdjax.train.get_trainer", lambda config: pytest.fail("built"))
    with pytest.raises(checkpoint.CheckpointError, match="no config.json"):
        train(dataclasses.replace(config, out=str(tmp_path / "nothing")), resume=True)
    with pytest.raises(checkpoint.CheckpointError,
                       match="observation: saved 'state', requested 'pixels'"):
        train(dataclasses.replace(config, out=state_run[0].out_dir), resume=True)
    with pytest.raises(checkpoint.CheckpointError, match="num_envs: saved 4, requested 8"):
        train(dataclasses.replace(config, num_envs=8), resume=True)
    with pytest.raises(checkpoint.CheckpointError, match="already holds checkpoints"):
        train(config)
    with pytest.raises(SystemExit):
        train_cli([f"--out={tmp_path / 'nothing'}", "--resume"])
    assert "cannot resume: " in capsys.readouterr().err
    # Stopped before its first checkpoint: its config.json is there, no checkpoint.
    checkpoint.write_config(str(tmp_path / "early"), dataclasses.replace(
        config, out=str(tmp_path / "early")))
    with pytest.raises(SystemExit):
        train_cli([f"--out={tmp_path / 'early'}", "--resume"])
    assert "has no checkpoint to resume from" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_cli([f"--run={tmp_path}", "--json"])
    assert "has no config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_cli([f"--run={tmp_path / 'early'}"])
    assert "no checkpoints in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_cli([f"--run={config.out_dir}", "--step=99"])
    err = capsys.readouterr().err
    assert "checkpoint 99 not found" in err and "available: [1, 2]" in err
    assert "evaluating" not in err  # told before anything is built or compiled


def test_an_extended_run_resumes_with_its_saved_replay_buffer(state_run, tmp_path, capsys):
    """A replay_size of 0 follows the run's length: a run that saved its buffer and is then
    extended (a larger --total_steps) keeps the buffer's size, and so the buffer; another
    size asked for, or another terminal rule, is refused before anything is built. A record
    that a kill left half-written is cut off before the resumed run logs on."""
    config = dataclasses.replace(state_run[0], replay_size=0, num_epochs=8,
                                 checkpoint_frequency=4, path_save_frequency=0,
                                 out=str(tmp_path / "run"))
    assert config.replay_capacity == 64  # the state run's program: compiled already
    train(config, quiet=True)
    longer = dataclasses.replace(config, num_epochs=9)
    assert longer.replay_capacity == 72
    with open(os.path.join(config.out_dir, "metrics.jsonl"), "a") as f:
        f.write('{"epoch": 9, "env_st')
    capsys.readouterr()
    assert train(longer, resume=True)["epoch"] == 9
    assert ("keeping the saved replay buffer's size, 64 transitions per seed "
            "(--replay_size=64)") in capsys.readouterr().err
    assert [r["epoch"] for r in read_metrics(config.out_dir)] == list(range(1, 10))
    assert "unfinished" not in capsys.readouterr().err
    assert checkpoint.read_config(config.out_dir, TrainConfig).replay_size == 64
    with pytest.raises(checkpoint.CheckpointError,
                       match="the run and the replay buffer saved with its checkpoint were made "
                             "with a different config .replay_capacity: saved 64, requested 80"):
        train(dataclasses.replace(longer, num_epochs=10, replay_size=80), resume=True)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"config .timeouts_as_terminal: saved False, requested True\)"):
        train(dataclasses.replace(longer, num_epochs=10, replay_size=64,
                                  timeouts_as_terminal=True), resume=True)


def test_bad_observation_fails_clearly():
    with pytest.raises(ValueError, match="unknown observation 'depth'; valid observations: "
                                         "pixels, state"):
        config_from_args(["--observation=depth"])[0].validate()
    with pytest.raises(ValueError, match="goal_based_policy .* needs observation=pixels"):
        dataclasses.replace(TINY, observation="state", goal_based_policy=True).validate()


def test_holdr_without_its_released_checkpoint_fails_clearly(monkeypatch, tmp_path):
    """HOLD-R has no demo-trained stand-in: without the checkpoint the run stops at once and
    says where to put it. (Its fused step runs in test_benchmarks' fused_step smoke test.)"""
    monkeypatch.delenv("HOLD_TOP_DIR", raising=False)
    config = dataclasses.replace(TINY, reward="holdr")
    with pytest.raises(FileNotFoundError, match="released HOLD-R checkpoint: put it at"):
        get_trainer(config)
    with pytest.raises(FileNotFoundError, match="names the released HOLD-R checkpoint"):
        get_trainer(dataclasses.replace(config, reward_checkpoint=str(tmp_path / "none")))


def test_replay_that_does_not_fit_stops_before_anything_is_built(monkeypatch, capsys):
    """Figure 3a's 400k-transition pixel buffer is 2.8 GB a seed: more than a device has
    free stops the run with the flags that fit, before the trainer allocates it."""
    config = config_from_args(["--config=fig3a_pushing_sac", "--seeds=5"])[0]
    # 25,001 rows of 16 worlds' frames, actions, rewards and dones, 252 slots of episodes'
    # last frames, each row's slot; cursor, size and episode count.
    per_seed = (25_001 + 252) * 16 * 48 * 48 * 3 + 25_001 * (16 * 16 + 4) + 12
    assert check_replay_fits(config, free_bytes=None) == 5 * per_seed
    assert check_replay_fits(config, free_bytes=10 * per_seed) == 5 * per_seed
    # Two accelerators hold two of four seeds each; the host's memory holds all four.
    four = dataclasses.replace(config, seeds=4)
    assert check_replay_fits(four, None, num_devices=2, host_memory=False) == 2 * per_seed
    assert check_replay_fits(four, None, num_devices=2, host_memory=True) == 4 * per_seed
    # One seed's worlds split over two accelerators: each holds half its buffer.
    one = dataclasses.replace(config, seeds=1)
    assert check_replay_fits(one, None, num_devices=2, host_memory=False) == per_seed // 2
    with pytest.raises(ReplayTooLarge, match=r"\(one seed's 2\.80 GB over 2 devices for 400000 "
                       r"transitions\).*pass --replay_size=\d+ \(or less\), or raise XLA_"):
        check_replay_fits(one, free_bytes=1_000_000_000, num_devices=2, host_memory=False)
    with pytest.raises(ReplayTooLarge, match=r"need 14\.0 GB \(5 seed\(s\) x 2\.80 GB for "
                       r"400000 transitions\), more than 90% of the 10\.0 GB free.*"
                       r"pass --replay_size=257192 \(or less\) or fewer --seeds"):
        check_replay_fits(config, free_bytes=10_000_000_000)
    # The size it names fits (within the 90% share), and one more row of worlds would not.
    check_replay_fits(dataclasses.replace(config, replay_size=257_192), 10_000_000_000)
    with pytest.raises(ReplayTooLarge):
        check_replay_fits(dataclasses.replace(config, replay_size=257_192 + 16), 10_000_000_000)
    with pytest.raises(ReplayTooLarge, match="pass fewer --seeds$"):
        check_replay_fits(config, free_bytes=1_000_000)
    with pytest.raises(ReplayTooLarge, match="seeds, or raise XLA_PYTHON_CLIENT_MEM_FRACTION$"):
        check_replay_fits(four, free_bytes=1_000_000, num_devices=2, host_memory=False)
    monkeypatch.setattr("holdjax.train.free_memory", lambda device: 10_000_000_000)
    monkeypatch.setattr("holdjax.train.get_trainer", lambda config: pytest.fail("built"))
    with pytest.raises(SystemExit) as exit_info:
        train_cli(["--config=fig3a_pushing_sac", "--seeds=5", "--out=/nonexistent/run"])
    assert exit_info.value.code == 2
    assert "pass --replay_size=257192" in capsys.readouterr().err


def test_policy_obs_shape_and_training_devices():
    assert policy_obs_shape(TINY) == (48, 48, 3)
    assert policy_obs_shape(dataclasses.replace(TINY, task="drawer_open",
                                                goal_based_policy=True)) == (48, 48, 6)
    assert policy_obs_shape(dataclasses.replace(TINY, task="close_drawer")) == (120, 180, 3)
    assert policy_obs_shape(dataclasses.replace(TINY, observation="state")) == (
        cached_env("pushing").task.state_dim,)
    assert jax.device_count() == 1  # (the two-device runs are the background_runs')
    assert training_devices(dataclasses.replace(TINY, seeds=3)) == 1
    # What several devices split: the seeds, or one seed's worlds, whichever they divide.
    assert device_split(dataclasses.replace(TINY, seeds=4), 2) == "seeds"
    assert device_split(TINY, 2) == "worlds" and device_split(TINY, 1) == "seeds"
    for seeds, num_envs in ((3, 4), (1, 3)):
        with pytest.raises(ValueError, match="split neither"):
            device_split(dataclasses.replace(TINY, seeds=seeds, num_envs=num_envs), 2)


def test_training_devices_are_all_that_split_the_run_else_one(monkeypatch):
    """Two devices take 2 seeds (or one seed's 4 worlds); 3 seeds of 3 worlds fall back to
    one device in a one-process job and stop a multi-process job, which must split."""
    monkeypatch.setattr(jax, "device_count", lambda: 2)
    assert training_devices(dataclasses.replace(TINY, seeds=2)) == 2
    assert training_devices(TINY) == 2  # one seed's 4 worlds
    uneven = dataclasses.replace(TINY, seeds=3, num_envs=3)
    assert training_devices(uneven) == 1
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="--seeds=3 cannot be split over the job's 2 devices"):
        training_devices(uneven)


def test_free_memory_is_an_accelerators_limit_less_what_it_holds():
    class Accelerator:
        platform = "gpu"

        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            return self.stats

    assert free_memory(Accelerator({"bytes_limit": 10, "bytes_in_use": 3})) == 7
    assert free_memory(Accelerator({"bytes_limit": 10})) == 10
    assert free_memory(Accelerator(None)) is None  # a backend that keeps no statistics


def test_free_memory_reads_the_host_for_the_cpu():
    free = free_memory(jax.devices()[0])
    assert free is not None and 0 < free <= os.sysconf("SC_PHYS_PAGES") * os.sysconf(
        "SC_PAGE_SIZE")


def test_live_bar_redraws_while_waiting_and_stops_on_exit():
    """The bar's clock is redrawn while an epoch runs (three redraws are awaited, not timed),
    it shows what it waits for, and the redrawing ends with the bar."""
    out, redrawn = io.StringIO(), threading.Event()
    with live_bar(waiting="compiling the first epoch", refresh_s=0.001, total=10,
                  file=out) as bar:
        draws = []
        refresh = bar.refresh

        def counted(*args, **kwargs):
            draws.append(1)
            if len(draws) >= 3:
                redrawn.set()
            return refresh(*args, **kwargs)

        bar.refresh = counted
        assert redrawn.wait(timeout=30)
    after_exit = len(draws)
    time.sleep(0.01)
    assert len(draws) == after_exit and bar.disable  # closed, no more redraws
    assert "compiling the first epoch" in out.getvalue()


def test_a_non_finite_loss_stops_the_run_naming_the_epoch_and_last_checkpoint(
        state_run, tmp_path, monkeypatch, capsys):
    """Epoch 2's critic loss turns NaN: the run stops before logging or saving epoch 2, and
    says which epoch diverged, where its last good checkpoint is and how to go on."""
    config, _ = state_run
    config = dataclasses.replace(config, out=str(tmp_path / "diverging"))
    epochs = []

    def diverging_in_epoch_2(out, config):
        summary = summarize_epoch(out, config)
        epochs.append(summary)
        if len(epochs) == 2:
            summary["critic_loss"] = [float("nan")]
        return summary

    monkeypatch.setattr("holdjax.train.summarize_epoch", diverging_in_epoch_2)
    with pytest.raises(SystemExit) as exit_info:
        train_cli(flags_of(config))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (f"non-finite critic_loss in epoch 2; the last good checkpoint is epoch 1 in "
            f"{config.out_dir}; resume from it with --resume and a lower --learning_rate") in err
    assert [r["epoch"] for r in read_metrics(config.out_dir)] == [1]
    assert checkpoint.latest_epoch(config.out_dir) == 1


def test_a_finished_run_says_how_it_ended_and_where_its_results_are(two_seed_run, state_run,
                                                                    capsys):
    """The last lines of a run: the final evaluation per seed, the files it left and the
    commands that roll its policy out and extend it; a resumed finished run says them too."""
    config, record = two_seed_run
    message = finished_message(config, record)
    success = record["eval_success_rate"]
    assert message.startswith(f"done: 16 env steps x 2 seed(s) in {record['wall_s'] / 60:.1f} "
                              f"min; final eval success {np.mean(success):.2f} (per seed: "
                              f"{success[0]:.2f}, {success[1]:.2f})")
    assert (f"results in {config.out_dir}: metrics.jsonl, curves.png, videos, tensorboard, "
            "checkpoint of epoch 2\n") in message
    assert f"python -m holdjax.evaluate --run={config.out_dir} --episodes=20" in message
    assert f"python -m holdjax.train --out={config.out_dir} --resume --total_steps=" in message
    config, _ = state_run
    assert train_cli([f"--out={config.out_dir}", "--resume"])["epoch"] == config.num_epochs
    err = capsys.readouterr().err
    assert "done: 16 env steps x 1 seed(s)" in err and "(per seed:" not in err


def test_a_loss_that_diverges_before_any_checkpoint_says_so(tmp_path):
    with pytest.raises(TrainingDiverged, match="non-finite actor_loss in epoch 1; no "
                       "checkpoint was written yet"):
        check_finite({"actor_loss": [1.0, float("inf")], "critic_loss": [0.5, 0.5],
                      "alpha_loss": None}, 0, str(tmp_path))
    check_finite({"actor_loss": [1.0], "alpha_loss": None}, 0, str(tmp_path),
                 params={"w": jnp.ones(3)})
    with pytest.raises(TrainingDiverged, match="non-finite parameters in epoch 2"):
        check_finite({"actor_loss": [1.0]}, 1, str(tmp_path),
                     params=({"w": jnp.ones(3)}, jnp.array([0.0, jnp.inf])))


def test_interrupted_train_cli_says_how_to_resume(monkeypatch, tmp_path, capsys):
    def interrupted(config, resume):
        os.makedirs(config.out_dir)
        raise KeyboardInterrupt

    monkeypatch.setattr("holdjax.train.train", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        train_cli([f"--out={tmp_path / 'run'}"])
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted before the first checkpoint" in err and "nothing to resume" in err
    assert "--resume" not in err


@pytest.mark.parametrize("goal_based_policy", [False, True])
def test_evaluation_runs_the_reward_model_only_for_a_goal_based_policy(goal_based_policy):
    """Evaluation reports the env's success and reward; the distance model runs in it only
    where the policy's goal image follows the subgoals it advances. (Traced, not compiled:
    the calls are counted as jit traces evaluate.)"""
    config = dataclasses.replace(TINY, reward="l2", goal_based_policy=goal_based_policy,
                                 name=f"eval_reward_{goal_based_policy}")
    trainer = Trainer(config.validate().program_key(), num_devices=1)
    calls = []

    class Counting:  # the trainer's reward function, counting the calls traced in evaluate
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, *args):
            calls.append(1)
            return self.inner(*args)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    trainer.reward_fn = Counting(trainer.reward_fn)
    state, _ = trainer.init_shapes()
    calls.clear()
    stats, _ = jax.eval_shape(trainer.evaluate_policies, state.sac.actor_params,
                              trainer.seed_keys(1))
    assert stats["eval_success_rate"].shape == (1,)
    assert bool(calls) == goal_based_policy


def test_train_header_names_the_encoder_computation(monkeypatch, tmp_path, capsys):
    """The header says which encoder computation "auto" picked on this backend (rows on an
    accelerator), warns that pallas on the CPU is the interpreter, and says nothing of
    encoders for state observations."""
    monkeypatch.setattr("holdjax.train.train", lambda config, resume: {})
    train_cli([f"--out={tmp_path / 'run'}", "--encoder_dtype=bfloat16"])
    assert "canonical bfloat16 encoder convolutions, on cpu" in capsys.readouterr().err
    train_cli([f"--out={tmp_path / 'run'}", "--encoder_conv=pallas"])
    assert "pallas (Pallas's interpreter on the CPU: for tests" in capsys.readouterr().err
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    train_cli([f"--out={tmp_path / 'run'}"])
    assert "rows float32 encoder convolutions" in capsys.readouterr().err
    train_cli([f"--out={tmp_path / 'run'}", "--observation=state"])
    assert "encoder" not in capsys.readouterr().err


def test_train_cli_reports_a_mismatched_released_checkpoint(tmp_path, capsys):
    """A released-format checkpoint that lacks a leaf stops the CLI with a message naming it."""
    from test_holdr import _without, scenic_tree, write_released_checkpoint

    write_released_checkpoint(tmp_path / "checkpoint_1",
                              _without(scenic_tree(), "TemporalTransformer", "encoder_norm"))
    with pytest.raises(SystemExit) as exit_info:
        train_cli(["--reward=holdr", f"--reward_checkpoint={tmp_path}", "--num_envs=2",
                   f"--out={tmp_path / 'run'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "not a HOLD-R checkpoint" in err and "TemporalTransformer/encoder_norm" in err


def test_train_cli_names_a_goal_image_of_the_wrong_shape(tmp_path, monkeypatch, capsys):
    from holdjax.envs import goal_images

    np.save(tmp_path / "pushing.npy", np.zeros((64, 64, 3), np.uint8))
    monkeypatch.setattr("holdjax.reward.base.load_goal_images",
                        lambda task: goal_images.load_goal_images(task, str(tmp_path)))
    with pytest.raises(SystemExit) as exit_info:
        train_cli(["--reward=l2", "--num_envs=2", f"--out={tmp_path / 'run'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: goal image {tmp_path}/pushing.npy is uint8 (64, 64, 3)" in err
