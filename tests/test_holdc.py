"""HOLD-C: the scenic checkpoint import, the network against a hand-written forward pass,
preprocessing, and distances. Tiny networks and 32x32 images keep it fast on the CPU."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import serialization, traverse_util
from jax import lax

from holdjax.envs.base import central_crop
from holdjax.reward import holdc
from holdjax.reward import scenic_checkpoint as sc

WIDTH, EMBEDDING, SIZE = 2, 4, 32
# Depth -> (blocks per stage, bottleneck): a basic-block and a bottleneck ResNet.
TINY = {18: ((2, 2, 2, 2), False), 26: ((2, 2, 2, 2), True)}


def config(depth: int, **kwargs) -> holdc.HoldCConfig:
    return holdc.HoldCConfig(num_layers=depth, num_filters=WIDTH, embedding_size=EMBEDDING,
                             crop_size=SIZE, **kwargs)


def scenic_resnet_tree(block_sizes, bottleneck, width=WIDTH, embedding=EMBEDDING):
    """({param path: shape}, {batch-stat path: shape}) of scenic's baselines ResNet
    (scenic/projects/baselines/resnet.py), written out from its layout."""
    params, stats = {"stem_conv/kernel": (7, 7, 3, width)}, {}

    def batch_norm(name, channels):
        params.update({f"{name}/scale": (channels,), f"{name}/bias": (channels,)})
        stats.update({f"{name}/mean": (channels,), f"{name}/var": (channels,)})

    batch_norm("init_bn", width)
    channels, k = width, 0
    for stage, num_blocks in enumerate(block_sizes):
        filters = width * 2**stage
        out = 4 * filters if bottleneck else filters
        for j in range(num_blocks):
            block = f"ResidualBlock_{k}"
            if channels != 4 * filters or (stage > 0 and j == 0):
                params[f"{block}/proj_conv/kernel"] = (1, 1, channels, out)
                batch_norm(f"{block}/proj_bn", out)
            middle = channels
            if bottleneck:
                params[f"{block}/conv1/kernel"] = (1, 1, channels, filters)
                batch_norm(f"{block}/bn1", filters)
                middle = filters
            params[f"{block}/conv2/kernel"] = (3, 3, middle, filters)
            batch_norm(f"{block}/bn2", filters)
            params[f"{block}/conv3/kernel"] = (1, 1, filters, out) if bottleneck else (
                3, 3, filters, out)
            batch_norm(f"{block}/bn3", out)
            channels, k = out, k + 1
    params["output_projection/kernel"] = (channels, embedding)
    params["output_projection/bias"] = (embedding,)
    return params, stats


def random_leaves(shapes: dict, rng, positive=False) -> dict:
    def draw(shape):
        if positive:  # variances
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return (rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]) or 1)).astype(np.float32)

    return {path: draw(shape) for path, shape in shapes.items()}


def random_flat_variables(depth: int, seed: int = 0) -> dict:
    """{'params/...': array, 'batch_stats/...': array} with random values."""
    params, stats = scenic_resnet_tree(*TINY[depth])
    rng = np.random.default_rng(seed)
    flat = {f"params/{k}": v for k, v in random_leaves(params, rng).items()}
    means = {k: v for k, v in stats.items() if k.endswith("mean")}
    variances = {k: v for k, v in stats.items() if k.endswith("var")}
    flat.update({f"batch_stats/{k}": v for k, v in random_leaves(means, rng).items()})
    flat.update({f"batch_stats/{k}": v
                 for k, v in random_leaves(variances, rng, positive=True).items()})
    return flat


def unflatten(flat: dict, prefix: str) -> dict:
    return traverse_util.unflatten_dict(
        {k[len(prefix) + 1:]: v for k, v in flat.items() if k.startswith(prefix + "/")}, sep="/")


def hold_rewards_state(flat: dict, step: int = 7) -> dict:
    """A train state dict as hold-rewards' TrainState (flax.optim) saves it."""
    params = unflatten(flat, "params")
    return {
        "global_step": step,
        "optimizer": {"target": params, "state": {
            "step": step,
            "param_states": jax.tree.map(
                lambda p: {"grad_ema": np.zeros_like(p), "grad_sq_ema": np.ones_like(p)},
                params)}},
        "model_state": {"batch_stats": unflatten(flat, "batch_stats")},
        "rng": np.array([0, 42], np.uint32),
        "accum_train_time": 123,
    }


def write_checkpoint(path: str, state: dict) -> str:
    """The bytes flax.training.checkpoints.save_checkpoint writes for a state dict."""
    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize(state))
    return path


def flat_of(variables: dict) -> dict:
    return traverse_util.flatten_dict(variables, sep="/")


@pytest.mark.parametrize("depth", sorted(TINY))
def test_import_puts_every_leaf_where_it_belongs(tmp_path, depth):
    write_checkpoint(tmp_path / "checkpoint_3", hold_rewards_state(random_flat_variables(depth, 1)))
    flat = random_flat_variables(depth, 2)
    write_checkpoint(tmp_path / "checkpoint_12", hold_rewards_state(flat, 12))
    assert sc.find_checkpoint(str(tmp_path)).endswith("checkpoint_12")  # the latest step
    got = flat_of(sc.import_scenic_checkpoint(str(tmp_path), config(depth)))
    assert got.keys() == flat.keys()
    for path, value in flat.items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)


def test_import_newer_scenic_layout_from_a_file(tmp_path):
    flat = random_flat_variables(18)
    state = {"global_step": 5, "params": unflatten(flat, "params"),
             "model_state": {"batch_stats": unflatten(flat, "batch_stats")},
             "opt_state": {"0": {"count": np.int32(5)}}}
    path = write_checkpoint(tmp_path / "checkpoint", state)
    got = flat_of(sc.import_scenic_checkpoint(str(path), config(18)))
    for key, value in flat.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_import_flax_orbax_directory_checkpoint(tmp_path):
    """Newer flax writes checkpoint_<step> as an orbax directory of the same state dict,
    found in its parent or named itself."""
    flat = random_flat_variables(18)
    ocp.PyTreeCheckpointer().save(str(tmp_path / "checkpoint_5"), hold_rewards_state(flat))
    for path in (tmp_path, tmp_path / "checkpoint_5"):
        got = flat_of(sc.import_scenic_checkpoint(str(path), config(18)))
        for key, value in flat.items():
            np.testing.assert_array_equal(got[key], value, err_msg=key)


def conv(x, kernel, stride, pad):
    return lax.conv_general_dilated(x, kernel, (stride, stride), [(pad, pad)] * 2,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


def manual_embedding(flat: dict, depth: int, images):
    """scenic's ResNet forward pass in eval mode, written directly on the leaves."""
    block_sizes, bottleneck = TINY[depth]

    def bn(x, name):
        p = lambda leaf: flat[f"params/{name}/{leaf}"]  # noqa: E731
        s = lambda leaf: flat[f"batch_stats/{name}/{leaf}"]  # noqa: E731
        return (x - s("mean")) / jnp.sqrt(s("var") + 1e-5) * p("scale") + p("bias")

    kernel = lambda name: flat[f"params/{name}/kernel"]  # noqa: E731
    x = jax.nn.relu(bn(conv(images, kernel("stem_conv"), 2, 3), "init_bn"))
    x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                          [(0, 0), (1, 1), (1, 1), (0, 0)])
    k = 0
    for stage, num_blocks in enumerate(block_sizes):
        for j in range(num_blocks):
            b, stride = f"ResidualBlock_{k}", 2 if stage > 0 and j == 0 else 1
            shortcut = x
            if f"params/{b}/proj_conv/kernel" in flat:
                shortcut = bn(conv(x, kernel(f"{b}/proj_conv"), stride, 0), f"{b}/proj_bn")
            y = x
            if bottleneck:
                y = jax.nn.relu(bn(conv(y, kernel(f"{b}/conv1"), 1, 0), f"{b}/bn1"))
            y = jax.nn.relu(bn(conv(y, kernel(f"{b}/conv2"), stride, 1), f"{b}/bn2"))
            y = bn(conv(y, kernel(f"{b}/conv3"), 1, 0 if bottleneck else 1), f"{b}/bn3")
            x, k = jax.nn.relu(shortcut + y), k + 1
    pooled = x.mean(axis=(1, 2))
    return pooled @ flat["params/output_projection/kernel"] + flat[
        "params/output_projection/bias"]


@pytest.mark.parametrize("depth", sorted(TINY))
def test_forward_pass_matches_manual_computation(tmp_path, depth):
    flat = random_flat_variables(depth, 3)
    path = write_checkpoint(tmp_path / "checkpoint_1", hold_rewards_state(flat))
    variables = sc.import_scenic_checkpoint(str(path), config(depth))
    frames = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    images = frames.astype(np.float32) / 255.0 * 2.0 - 1.0  # already square, at crop size
    want = manual_embedding(flat, depth, jnp.asarray(images))
    got = holdc.embed(config(depth), variables, jnp.asarray(frames))
    assert got.shape == (3, EMBEDDING) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the batch norms (random statistics here) folded into the convolutions: the same network
    folded = holdc.embed(config(depth), holdc.fold_batch_norm(config(depth), variables),
                         jnp.asarray(frames))
    np.testing.assert_allclose(folded, want, rtol=1e-4, atol=1e-5)


def test_folded_variables_have_a_bias_per_convolution_and_no_batch_norm():
    cfg = config(50, dtype="bfloat16")
    variables = holdc.random_variables(cfg)
    folded = flat_of(holdc.fold_batch_norm(cfg, variables))
    convs = [p for p in flat_of(variables) if re.search(r"(conv\d?|proj_conv)/kernel$", p)]
    assert convs and set(folded) == (
        {p for p in convs} | {p.replace("/kernel", "/bias") for p in convs}
        | {"params/output_projection/kernel", "params/output_projection/bias"})
    assert {leaf.dtype for leaf in folded.values()} == {jnp.dtype(jnp.bfloat16)}
    model = holdc.HoldCDistance(cfg, variables)  # scores with them
    assert flat_of(model.variables).keys() == folded.keys()
    assert holdc.HoldCDistance(cfg, model.variables).variables is model.variables  # folded once
    with pytest.raises(ValueError, match="folded batch norms are for inference"):
        holdc.build_model(cfg, folded=True).apply(model.variables, jnp.zeros((1, 32, 32, 3)),
                                                  train=True)


def test_bfloat16_embedding_is_close_to_float32():
    variables = holdc.random_variables(config(18), seed=4)
    frames = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    full = holdc.embed(config(18), variables, frames)
    half = holdc.embed(config(18, dtype="bfloat16"), variables, frames)
    assert half.dtype == jnp.float32
    assert float(jnp.linalg.norm(half - full)) < 0.05 * float(jnp.linalg.norm(full))


def import_tampered(tmp_path, change) -> str:
    flat = random_flat_variables(18)
    change(flat)
    path = write_checkpoint(tmp_path / "checkpoint_1", hold_rewards_state(flat))
    with pytest.raises(sc.CheckpointMismatchError) as error:
        sc.import_scenic_checkpoint(str(path), config(18))
    return str(error.value)


def test_missing_leaf_is_named(tmp_path):
    message = import_tampered(tmp_path, lambda f: f.pop("params/ResidualBlock_5/conv2/kernel"))
    assert "missing leaf params/ResidualBlock_5/conv2/kernel" in message


def test_extra_leaf_is_named(tmp_path):
    message = import_tampered(
        tmp_path, lambda f: f.update({"batch_stats/ResidualBlock_2/bn9/mean": np.zeros(3)}))
    assert "extra leaf batch_stats/ResidualBlock_2/bn9/mean" in message


def test_misshaped_leaf_is_named(tmp_path):
    message = import_tampered(
        tmp_path, lambda f: f.update({"params/output_projection/kernel": np.zeros((16, 5))}))
    assert "mis-shaped leaf params/output_projection/kernel" in message
    assert "(16, 5)" in message and "(16, 4)" in message


def test_wrong_architecture_and_not_a_train_state(tmp_path):
    state = hold_rewards_state(random_flat_variables(18))
    path = write_checkpoint(tmp_path / "checkpoint_1", state)
    with pytest.raises(sc.CheckpointMismatchError,
                       match="missing leaf params/ResidualBlock_0/conv1"):
        sc.import_scenic_checkpoint(str(path), config(26))
    write_checkpoint(tmp_path / "checkpoint_2", {"weights": np.zeros(3)})
    with pytest.raises(sc.CheckpointMismatchError, match="not a scenic train state"):
        sc.import_scenic_checkpoint(str(tmp_path), config(18))
    with pytest.raises(FileNotFoundError):
        sc.find_checkpoint(str(tmp_path / "nowhere"))


def test_a_cut_off_or_corrupt_checkpoint_file_is_named(tmp_path):
    """A download cut short, or a file that is no msgpack at all, is a clear error naming the
    file, not msgpack's own."""
    whole = write_checkpoint(tmp_path / "checkpoint_1", hold_rewards_state(
        random_flat_variables(18))).read_bytes()
    cut = tmp_path / "cut" / "checkpoint_1"
    cut.parent.mkdir()
    cut.write_bytes(whole[: len(whole) // 2])
    (tmp_path / "checkpoint_7").write_bytes(b"\x01not a checkpoint")  # msgpack: 1, then junk
    for path in (cut, tmp_path / "checkpoint_7"):
        with pytest.raises(sc.CheckpointMismatchError,
                           match=f"{path} is not a flax msgpack checkpoint.*download it again"):
            sc.import_scenic_checkpoint(str(path), config(18))


def test_orbax_round_trip_and_convert_once(tmp_path, monkeypatch):
    flat = random_flat_variables(26)
    checkpoint_dir = tmp_path / "hold" / "holdc" / "checkpoint"
    checkpoint_dir.mkdir(parents=True)
    write_checkpoint(checkpoint_dir / "checkpoint_4", hold_rewards_state(flat))
    monkeypatch.setenv("HOLD_TOP_DIR", str(tmp_path))
    first = sc.load_holdc_variables(config(26))  # imports, then writes the orbax copy
    assert os.path.isdir(checkpoint_dir / "checkpoint_4.orbax")

    def no_import(*args):
        raise AssertionError("imported the scenic checkpoint again")

    monkeypatch.setattr(sc, "import_scenic_checkpoint", no_import)
    second = flat_of(sc.load_holdc_variables(config(26)))
    for key, value in flat.items():
        np.testing.assert_array_equal(flat_of(first)[key], value, err_msg=key)
        np.testing.assert_array_equal(second[key], value, err_msg=key)
    with pytest.raises(sc.CheckpointMismatchError):
        sc.restore_orbax(str(checkpoint_dir / "checkpoint_4.orbax"), config(18))


def test_a_copy_that_cannot_be_written_leaves_the_loaded_model_in_use(tmp_path, capsys):
    """Another run that wrote the orbax copy first is no error; a place the copy cannot go
    is a warning, not a stopped run."""
    variables = {"params": {"w": np.ones(3, np.float32)}}
    sc.save_converted(str(tmp_path / "copy.orbax"), variables)
    sc.save_converted(str(tmp_path / "copy.orbax"), variables)  # a second run, done later
    assert capsys.readouterr().err == ""
    (tmp_path / "file").write_text("")
    sc.save_converted(str(tmp_path / "file" / "copy.orbax"), variables)
    assert "warning: could not write the orbax copy" in capsys.readouterr().err


# Loads the HOLD-C checkpoint argv[1] in a process of a jax.distributed job and prints a
# checksum of its variables; then asks for a default model that does not exist.
LOAD_IN_A_JOB = """
import json, sys
import numpy as np
import jax
from holdjax.train import maybe_init_distributed
maybe_init_distributed()
from holdjax.reward import scenic_checkpoint as sc
from holdjax.reward import train as reward_train
from holdjax.reward.holdc import HoldCConfig
config = HoldCConfig(**json.loads(sys.argv[2]))
variables = sc.load_holdc_variables(config, sys.argv[1])
try:
    reward_train.ensure_default_model("pushing")
except FileNotFoundError as e:
    print(e)
print(json.dumps([float(np.abs(np.asarray(x, np.float64)).sum())
                  for x in jax.tree.leaves(variables)]))
"""


def test_a_multi_process_job_reads_a_released_checkpoint_and_trains_no_default_model(
        tmp_path):
    """The processes of a job read the released file alike without each writing its orbax
    copy (they would write it at once), restore the copy once a one-process load made it,
    and refuse to train a missing default model each, saying how to train it once."""
    from conftest import run_two_processes

    path = str(tmp_path / "checkpoint_3")
    write_checkpoint(path, hold_rewards_state(random_flat_variables(18)))
    fields = json.dumps({"num_layers": 18, "num_filters": WIDTH, "embedding_size": EMBEDDING,
                         "crop_size": SIZE})
    sums = [float(np.abs(np.asarray(x, np.float64)).sum())
            for x in jax.tree.leaves(sc.import_scenic_checkpoint(path, config(18)))]
    env = {"HOLD_TOP_DIR": str(tmp_path / "top")}
    for converted in (False, True):
        if converted:
            sc.load_holdc_variables(config(18), path)  # one process: writes the copy
        for index, result in enumerate(run_two_processes(["-c", LOAD_IN_A_JOB, path, fields],
                                                         env)):
            assert json.loads(result.stdout.splitlines()[-1]) == sums
            assert "a job of 2 processes does not train one" in result.stdout
            assert "python -m holdjax.reward.train --task=pushing" in result.stdout
            noted = "no orbax copy of the released weights" in result.stderr
            assert noted == (index == 0 and not converted)
        assert os.path.isdir(path + ".orbax") == converted
    assert not os.path.exists(tmp_path / "top")


def test_central_crop_and_centering():
    frames = np.zeros((1, 6, 10, 3), np.uint8)
    frames[0, :, :, 0] = np.arange(10) * 25  # column index in red
    cfg = holdc.HoldCConfig(num_layers=18, crop_size=6)
    images = holdc.preprocess(cfg, jnp.asarray(frames))
    assert images.shape == (1, 6, 6, 3)  # same size: the resize leaves values alone
    np.testing.assert_allclose(images[0, 0, :, 0], np.arange(2, 8) * 25 / 255 * 2 - 1, atol=1e-6)
    np.testing.assert_allclose(images[..., 1], -1.0)  # 0 -> -1
    plain = holdc.preprocess(holdc.HoldCConfig(num_layers=18, crop_size=6, zero_centering=False),
                             jnp.full((2, 6, 6, 3), 255, jnp.uint8))
    np.testing.assert_allclose(plain, 1.0)  # [0, 1] without centring
    odd = central_crop(jnp.arange(5 * 8).reshape(1, 5, 8, 1))
    np.testing.assert_array_equal(odd[0, 0, :, 0], np.arange(1, 6))  # margin 3 -> 1 left
    tall = central_crop(jnp.arange(2 * 7 * 3).reshape(2, 7, 3, 1))  # any leading axes
    assert tall.shape == (2, 3, 3, 1)
    np.testing.assert_array_equal(tall[0, :, 0, 0], [6, 9, 12])  # rows 2-4 of 7


def test_bilinear_resize_to_crop_size():
    frames = np.zeros((2, 2, 2, 3), np.uint8)
    frames[:, :, 1] = 255  # left column 0, right column 1
    cfg = holdc.HoldCConfig(num_layers=18, crop_size=4, zero_centering=False)
    images = holdc.preprocess(cfg, jnp.asarray(frames))
    assert images.shape == (2, 4, 4, 3)
    # Half-pixel centres: output columns sample x = -0.25, 0.25, 0.75, 1.25 (edges clamp).
    np.testing.assert_allclose(images[0, 0, :, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    big = holdc.preprocess(holdc.HoldCConfig(num_layers=18, crop_size=SIZE),
                           jnp.full((1, 40, 48, 3), 51, jnp.uint8))
    assert big.shape == (1, SIZE, SIZE, 3)
    np.testing.assert_allclose(big, 51 / 255 * 2 - 1, atol=1e-6)


def test_distance_types_against_hand_computed_values():
    a, b = jnp.array([[3.0, 4.0]]), jnp.array([[0.0, 0.0], [3.0, 4.0], [3.0, 5.0]])
    expect = {
        ("eucl", ()): [5.0, 0.0, 1.0],
        ("sq_eucl", ()): [25.0, 0.0, 1.0],
        ("sq_eucl_huber", (0.5, 2.0, 11.0)): [
            0.5 * 25 + 2 * 6, 2 * np.sqrt(11), 0.5 + 2 * np.sqrt(12)],
    }
    for (kind, params), want in expect.items():
        cfg = holdc.HoldCConfig(distance_type=kind, distance_params=params)
        np.testing.assert_allclose(holdc.embedding_distance(cfg, a, b), [want], rtol=1e-6)
    with pytest.raises(ValueError, match="takes 3 distance_params"):
        holdc.HoldCConfig(distance_type="sq_eucl_huber")
    with pytest.raises(ValueError, match="unknown distance_type"):
        holdc.HoldCConfig(distance_type="cosine")


def test_goal_embeddings_computed_once_give_the_same_distance():
    cfg = config(18)
    model = holdc.HoldCDistance(cfg, holdc.random_variables(cfg, seed=5))
    rng = np.random.default_rng(2)
    frames = jnp.asarray(rng.integers(0, 256, (4, 40, 48, 3), dtype=np.uint8))
    goals = jnp.asarray(rng.integers(0, 256, (2, 40, 48, 3), dtype=np.uint8))
    both = model(frames, goals)
    assert both.shape == (4, 2)
    np.testing.assert_allclose(model.to_goals(goals)(frames), both, rtol=1e-6)
    emb_f, emb_g = model.embed(frames), model.embed(goals)
    np.testing.assert_allclose(both, np.linalg.norm(emb_f[:, None] - emb_g[None], axis=-1),
                               rtol=1e-5)
    np.testing.assert_allclose(jnp.diagonal(model(goals, goals)), 0.0, atol=1e-6)
