"""HOLD-R (ViViT factorised encoder) against a scenic-layout tree written out by hand and a
numpy forward pass written from the architecture, not from the module."""

import dataclasses
import functools
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from holdjax.reward import holdr, scenic_checkpoint

HIDDEN, HEADS, PATCH, CROP, FRAMES = 32, 2, 8, 32, 4
SPATIAL_MLP, TEMPORAL_MLP = 64, 48
CONFIG = holdr.HoldRConfig(
    hidden_size=HIDDEN, patch_size=(PATCH, PATCH, 1), spatial_layers=2, spatial_heads=HEADS,
    spatial_mlp_dim=SPATIAL_MLP, temporal_layers=1, temporal_heads=HEADS,
    temporal_mlp_dim=TEMPORAL_MLP, num_frames=FRAMES, crop_size=CROP)


def scenic_layout() -> dict:
    """Leaf shapes of scenic's SpaceTimeViViT (factorised encoder, 'token' classifier,
    3d_conv tubelets, one regression output) for CONFIG, written from scenic's source."""
    d, hd = HIDDEN, HIDDEN // HEADS
    norm = {"scale": (d,), "bias": (d,)}

    def block(mlp):
        qkv = {"kernel": (d, HEADS, hd), "bias": (HEADS, hd)}
        return {
            "LayerNorm_0": norm,
            "MultiHeadDotProductAttention_0": {
                "query": qkv, "key": qkv, "value": qkv,
                "out": {"kernel": (HEADS, hd, d), "bias": (d,)}},
            "LayerNorm_1": norm,
            "MlpBlock_0": {"Dense_0": {"kernel": (d, mlp), "bias": (mlp,)},
                           "Dense_1": {"kernel": (mlp, d), "bias": (d,)}},
        }

    tokens = (CROP // PATCH) ** 2
    return {
        "embedding": {"kernel": (1, PATCH, PATCH, 3, d), "bias": (d,)},
        "cls_SpatialTransformer": (1, 1, d),
        "SpatialTransformer": {
            "posembed_input": {"pos_embedding": (1, 1 + tokens, d)},
            "encoderblock_0": block(SPATIAL_MLP),
            "encoderblock_1": block(SPATIAL_MLP),
            "encoder_norm": norm},
        "cls_TemporalTransformer": (1, 1, d),
        "TemporalTransformer": {
            "posembed_input": {"pos_embedding": (1, 1 + FRAMES, d)},
            "encoderblock_0": block(TEMPORAL_MLP),
            "encoder_norm": norm},
        "output_projection": {"kernel": (d, 1), "bias": (1,)},
    }


def _is_shape(x):
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


@functools.cache
def scenic_tree() -> dict:
    """The layout filled with random values (LayerNorm scales near 1, as trained ones are)."""
    rng = np.random.default_rng(0)

    def fill(path, shape):
        scale = 1.0 if path[-1].key == "scale" else 0.0
        return (scale + 0.3 * rng.standard_normal(shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, scenic_layout(), is_leaf=_is_shape)


# --- numpy reference, float64 ---------------------------------------------------------------


def _layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _attention(x, p):
    q, k, v = (np.einsum("blc,chd->blhd", x, p[n]["kernel"]) + p[n]["bias"]
               for n in ("query", "key", "value"))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", w, v)
    return np.einsum("bqhd,hdc->bqc", out, p["out"]["kernel"]) + p["out"]["bias"]


def _encoder(x, cls, p, num_layers):
    x = np.concatenate([np.broadcast_to(cls, (len(x), 1, x.shape[-1])), x], axis=1)
    x = x + p["posembed_input"]["pos_embedding"]
    for i in range(num_layers):
        b = p[f"encoderblock_{i}"]
        x = x + _attention(_layer_norm(x, b["LayerNorm_0"]), b["MultiHeadDotProductAttention_0"])
        m = b["MlpBlock_0"]
        y = _gelu(_layer_norm(x, b["LayerNorm_1"]) @ m["Dense_0"]["kernel"] + m["Dense_0"]["bias"])
        x = x + y @ m["Dense_1"]["kernel"] + m["Dense_1"]["bias"]
    return _layer_norm(x, p["encoder_norm"])


def _patch_tokens(clip, p):
    """(N, T, S, S, 3) -> (N*T, g*g, D): non-overlapping patches, row-major, times the
    embedding kernel."""
    n, t, s, _, c = clip.shape
    g = s // PATCH
    patches = clip.reshape(n * t, g, PATCH, g, PATCH, c).transpose(0, 1, 3, 2, 4, 5)
    kernel = p["embedding"]["kernel"][0]  # one-frame tubelets
    tokens = np.einsum("bijyxc,yxcd->bijd", patches, kernel) + p["embedding"]["bias"]
    return tokens.reshape(n * t, g * g, -1)


def numpy_forward(clip, p):
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
    n, t = clip.shape[:2]
    x = _encoder(_patch_tokens(clip, p), p["cls_SpatialTransformer"], p["SpatialTransformer"], 2)
    x = x[:, 0].reshape(n, t, -1)
    x = _encoder(x, p["cls_TemporalTransformer"], p["TemporalTransformer"], 1)[:, 0]
    return x @ p["output_projection"]["kernel"] + p["output_projection"]["bias"]


# --- tests ------------------------------------------------------------------------------------


def _frames(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def test_output_shape_and_jit():
    variables = holdr.random_variables(CONFIG)
    history, goal = _frames(1, (3, FRAMES - 1, 40, 48, 3)), _frames(2, (40, 48, 3))
    predict = jax.jit(holdr.predict_time_to_goal, static_argnames="config")
    out = predict(variables, history, goal, config=CONFIG)
    assert out.shape == (3,) and out.dtype == jnp.float32
    per_world = predict(variables, history, jnp.broadcast_to(goal, (3, 40, 48, 3)), config=CONFIG)
    np.testing.assert_allclose(per_world, out)
    assert holdr.baseline_time_to_goal(variables, history[:, 0], CONFIG).shape == (3,)


def test_released_size_shapes():
    """ViViT-Large factorised encoder at crop 256: shapes only (eval_shape, no compute)."""
    config = holdr.HoldRConfig()
    shapes = holdr.variable_shapes(config)["params"]
    assert shapes["embedding"]["kernel"].shape == (1, 16, 16, 3, 1024)
    assert shapes["SpatialTransformer"]["posembed_input"]["pos_embedding"].shape == (1, 257, 1024)
    assert shapes["TemporalTransformer"]["posembed_input"]["pos_embedding"].shape == (1, 5, 1024)
    assert len([k for k in shapes["SpatialTransformer"] if k.startswith("encoderblock")]) == 24
    out = jax.eval_shape(
        functools.partial(holdr.predict_time_to_goal, config=config), {"params": shapes},
        jax.ShapeDtypeStruct((2, 3, 120, 180, 3), jnp.uint8),
        jax.ShapeDtypeStruct((120, 180, 3), jnp.uint8))
    assert out.shape == (2,)


def test_scenic_tree_maps_leaf_for_leaf():
    tree = scenic_tree()
    variables = scenic_checkpoint.holdr_variables(tree, CONFIG)
    got = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    want = dict(jax.tree_util.tree_flatten_with_path(tree)[0])
    assert len(got) == len(want)
    for path, value in got:
        np.testing.assert_array_equal(value, want[path], err_msg=jax.tree_util.keystr(path))


def test_patch_and_position_embedding_match_hand_computation():
    p = scenic_tree()
    variables = scenic_checkpoint.holdr_variables(p, CONFIG)
    clip = np.random.default_rng(3).uniform(-1, 1, (2, FRAMES, CROP, CROP, 3)).astype(np.float32)
    _, state = holdr.HoldR(CONFIG).apply(variables, clip, capture_intermediates=True)
    embedded = state["intermediates"]["SpatialTransformer"]["posembed_input"]["__call__"][0]
    tokens = _patch_tokens(clip.astype(np.float64), p)
    cls = np.broadcast_to(p["cls_SpatialTransformer"], (len(tokens), 1, HIDDEN))
    want = np.concatenate([cls, tokens], 1) + p["SpatialTransformer"]["posembed_input"][
        "pos_embedding"]
    np.testing.assert_allclose(embedded, want, rtol=1e-4, atol=1e-4)


def test_forward_matches_numpy_reference():
    p = scenic_tree()
    variables = scenic_checkpoint.holdr_variables(p, CONFIG)
    history, goal = _frames(4, (2, FRAMES - 1, 32, 40, 3)), _frames(5, (32, 40, 3))
    out = holdr.predict_time_to_goal(variables, history, goal, CONFIG)
    # The reference's input: centre crop (32x40 -> 32x32, 4 columns off each side), a resize
    # that is the identity at this size, then [0, 255] -> [-1, 1]; goal last.
    clip = np.concatenate([np.asarray(history), np.broadcast_to(goal, (2, 1, 32, 40, 3))], 1)
    clip = clip[:, :, :, 4:36].astype(np.float64) / 255.0 * 2 - 1
    np.testing.assert_allclose(out, numpy_forward(clip, p)[:, 0], rtol=1e-4, atol=1e-4)


def test_bfloat16_close_to_float32():
    variables = scenic_checkpoint.holdr_variables(scenic_tree(), CONFIG)
    history, goal = _frames(6, (2, FRAMES - 1, 32, 32, 3)), _frames(7, (32, 32, 3))
    full = holdr.predict_time_to_goal(variables, history, goal, CONFIG)
    half = holdr.predict_time_to_goal(variables, history, goal,
                                      holdr.HoldRConfig(**{**vars(CONFIG),
                                                           "dtype": jnp.bfloat16}))
    assert half.dtype == jnp.float32
    np.testing.assert_allclose(half, full, rtol=0.1, atol=0.1)


def test_attention_settings():
    """flax's attention on the CPU whatever the setting asks; "cudnn" asked for where there is
    no cuDNN fails at trace time, saying so; an unknown name fails at once."""
    bf16 = holdr.HoldRConfig(**{**vars(CONFIG), "dtype": jnp.bfloat16})
    assert holdr.attention_function("auto", jnp.bfloat16) is flax.linen.dot_product_attention
    assert holdr.attention_function("flax", jnp.bfloat16) is flax.linen.dot_product_attention
    variables = scenic_checkpoint.holdr_variables(scenic_tree(), CONFIG)
    frames = _frames(9, (2, 32, 32, 3))
    with pytest.raises(RuntimeError, match="cuDNN"):
        holdr.frame_features(dataclasses.replace(bf16, attention="cudnn"), variables, frames)
    with pytest.raises(ValueError, match="unknown attention 'flash'; valid: auto, flax, cudnn"):
        holdr.HoldRConfig(attention="flash")


def test_auto_attention_falls_back_to_flax_where_cudnn_refuses(monkeypatch):
    """On a GPU "auto" asks cuDNN for bf16 attention and takes flax's where cuDNN refuses the
    call: here a CPU taken for a GPU, whose cuDNN call fails, gives flax's features."""
    bf16 = holdr.HoldRConfig(**{**vars(CONFIG), "dtype": jnp.bfloat16})
    variables = scenic_checkpoint.holdr_variables(scenic_tree(), CONFIG)
    frames = _frames(9, (2, 32, 32, 3))
    flax_features = holdr.frame_features(dataclasses.replace(bf16, attention="flax"),
                                         variables, frames)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert holdr.attention_function("auto", jnp.bfloat16) is not flax.linen.dot_product_attention
    auto_features = holdr.frame_features(dataclasses.replace(bf16, attention="auto"),
                                         variables, frames)
    np.testing.assert_array_equal(np.asarray(auto_features), np.asarray(flax_features))


def test_scoring_variables_cast_the_blocks_once_and_keep_float32_norms_and_head():
    bf16 = holdr.HoldRConfig(**{**vars(CONFIG), "dtype": jnp.bfloat16})
    variables = scenic_checkpoint.holdr_variables(scenic_tree(), CONFIG)
    model = holdr.HoldRDistance(bf16, variables)
    flat = flax.traverse_util.flatten_dict(model.variables["params"], sep="/")
    for path, leaf in flat.items():
        in_blocks = path.startswith("embedding/") or "/encoderblock_" in path
        assert leaf.dtype == (jnp.bfloat16 if in_blocks else jnp.float32), path
    assert sum(p.startswith("embedding/") or "/encoderblock_" in p for p in flat) > 10
    frames = _frames(10, (3, 32, 32, 3))
    np.testing.assert_allclose(model.features(frames),
                               holdr.frame_features(bf16, variables, frames), rtol=0.05,
                               atol=0.05)
    same = holdr.HoldRDistance(CONFIG, variables).variables  # float32: nothing to cast
    jax.tree.map(np.testing.assert_array_equal, same, variables)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN's attention needs a GPU")
def test_cudnn_attention_is_close_to_flax_attention_on_a_gpu():
    """Run by the GPU session (not in CI): the same clip through both attentions in bf16."""
    bf16 = holdr.HoldRConfig(**{**vars(CONFIG), "dtype": jnp.bfloat16})
    variables = scenic_checkpoint.holdr_variables(scenic_tree(), CONFIG)
    frames = _frames(9, (4, 32, 32, 3))
    flax_out = holdr.frame_features(dataclasses.replace(bf16, attention="flax"), variables,
                                    frames)
    cudnn_out = holdr.frame_features(dataclasses.replace(bf16, attention="cudnn"), variables,
                                     frames)
    np.testing.assert_allclose(cudnn_out, flax_out, rtol=0.05, atol=0.05)


def test_preprocess_crops_centre_and_zero_centres():
    frames = _frames(8, (2, 30, 40, 3))
    out = holdr.preprocess(frames, crop_size=30)
    want = np.asarray(frames)[:, :, 5:35].astype(np.float32) / 255.0 * 2 - 1
    np.testing.assert_allclose(out, want, atol=1e-6)
    # Upsampling keeps a constant image constant; without zero-centring it stays in [0, 1].
    flat = holdr.preprocess(jnp.full((20, 12, 3), 51, jnp.uint8), 24, zero_centering=False)
    assert flat.shape == (24, 24, 3)
    np.testing.assert_allclose(flat, 0.2, atol=1e-6)


def test_history_init_repeats_and_push_shifts():
    first = _frames(9, (2, 4, 4, 3))
    history = holdr.init_history(first, 3)
    assert history.shape == (2, 3, 4, 4, 3)
    for i in range(3):
        np.testing.assert_array_equal(history[:, i], first)
    new = [_frames(10 + i, (2, 4, 4, 3)) for i in range(2)]
    push = jax.jit(holdr.push_history)
    history = push(push(history, new[0]), new[1])
    for got, want in zip(np.moveaxis(np.asarray(history), 1, 0), [first, *new], strict=True):
        np.testing.assert_array_equal(got, want)  # oldest first, newest last
    features = jnp.arange(6.0).reshape(2, 3)  # per-frame features shift the same way
    kept = push(holdr.init_history(features, 3), features + 10)
    np.testing.assert_array_equal(kept[:, 0], features)
    np.testing.assert_array_equal(kept[:, 2], features + 10)


def _without(tree, *keys):
    tree = jax.tree_util.tree_map(lambda x: x, tree)  # a copy of the nested dicts
    node = tree
    for k in keys[:-1]:
        node = node[k]
    del node[keys[-1]]
    return tree


@pytest.mark.parametrize("mutate, leaf", [
    (lambda t: _without(t, "SpatialTransformer", "encoderblock_1", "MlpBlock_0", "Dense_1",
                        "bias"),
     "missing leaf params/SpatialTransformer/encoderblock_1/MlpBlock_0/Dense_1/bias"),
    (lambda t: {**t, "pre_logits": {"kernel": np.zeros((HIDDEN, HIDDEN))}},
     "extra leaf params/pre_logits/kernel"),
    (lambda t: {**t, "TemporalTransformer": {
        **t["TemporalTransformer"],
        "posembed_input": {"pos_embedding": np.zeros((1, FRAMES, HIDDEN))}}},
     "mis-shaped leaf params/TemporalTransformer/posembed_input/pos_embedding: checkpoint "
     "(1, 4, 32)"),
])
def test_mismatched_tree_names_the_leaf(mutate, leaf):
    with pytest.raises(ValueError, match=leaf.replace("(", r"\(").replace(")", r"\)")):
        scenic_checkpoint.holdr_variables(mutate(scenic_tree()), CONFIG)


def test_config_read_from_parameter_shapes():
    assert holdr.HoldRConfig.from_params(scenic_tree()) == CONFIG
    released = holdr.variable_shapes(holdr.HoldRConfig())["params"]
    assert holdr.HoldRConfig.from_params(released) == holdr.HoldRConfig()
    assert holdr.HoldRConfig.from_params(released, dtype=jnp.bfloat16).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="no leaf TemporalTransformer/posembed_input"):
        holdr.HoldRConfig.from_params({k: v for k, v in scenic_tree().items()
                                       if k != "TemporalTransformer"})


def test_frame_features_path_equals_whole_clip():
    """Encoding each frame once and regressing from kept features gives the clip's value."""
    variables = scenic_checkpoint.holdr_variables(scenic_tree(), CONFIG)
    model = holdr.HoldRDistance(CONFIG, variables)
    history, goals = _frames(8, (3, FRAMES - 1, 36, 44, 3)), _frames(9, (2, 36, 44, 3))
    features = model.features(history.reshape(-1, 36, 44, 3)).reshape(3, FRAMES - 1, HIDDEN)
    got = model.to_goals(goals)(features)
    assert got.shape == (3, 2)
    for g in range(2):
        want = holdr.predict_time_to_goal(variables, history, goals[g], CONFIG)
        np.testing.assert_allclose(got[:, g], want, rtol=1e-4, atol=1e-5)


def test_tubelets_spanning_frames_are_refused_per_frame():
    config = holdr.HoldRConfig(**{**vars(CONFIG), "patch_size": (PATCH, PATCH, 2)})
    with pytest.raises(ValueError, match="one-frame tubelets"):
        holdr.HoldRDistance(config, {})


def test_random_variables_match_the_model_and_give_finite_output():
    variables = holdr.random_variables(CONFIG, seed=1)
    shapes = holdr.variable_shapes(CONFIG)
    assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda s: s.shape, shapes)
    out = holdr.predict_time_to_goal(variables, _frames(10, (2, FRAMES - 1, 32, 32, 3)),
                                     _frames(11, (32, 32, 3)), CONFIG)
    assert np.all(np.isfinite(out)) and float(jnp.abs(out).max()) > 0


# --- the released checkpoint's file, and HOLD-R as the reward --------------------------------


def released_state(params: dict) -> dict:
    """A train state dict as hold-rewards' HOLD-R (flax.optim era) saves it; ViViT has no
    batch statistics, so its model state is empty."""
    return {"global_step": 3,
            "optimizer": {"target": params, "state": {"step": 3}},
            "model_state": {}, "rng": np.array([0, 42], np.uint32)}


def write_released_checkpoint(path, params) -> str:
    from flax import serialization

    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize(released_state(params)))
    return str(path)


def test_load_released_checkpoint_reads_architecture_and_converts_once(tmp_path):
    from holdjax.reward import scenic_checkpoint as sc

    write_released_checkpoint(tmp_path / "checkpoint_3", scenic_tree())
    model = sc.load_holdr(str(tmp_path))
    assert model.config == CONFIG and model.history_length == FRAMES - 1
    assert os.path.isdir(tmp_path / "checkpoint_3.orbax")
    (tmp_path / "checkpoint_3").write_bytes(b"not msgpack")  # the copy alone can answer now
    again = sc.load_holdr(str(tmp_path))  # from the orbax copy
    for a, b in ((model.variables, scenic_tree()), (again.variables, scenic_tree())):
        jax.tree.map(np.testing.assert_array_equal, a["params"], b)
    (tmp_path / "other").mkdir()
    write_released_checkpoint(tmp_path / "other" / "checkpoint_1", _without(
        scenic_tree(), "SpatialTransformer", "encoderblock_1", "MlpBlock_0"))
    with pytest.raises(sc.CheckpointMismatchError,
                       match="missing leaf params/SpatialTransformer/encoderblock_1/MlpBlock_0"):
        sc.load_holdr(str(tmp_path / "other"))


def test_reward_scores_each_worlds_last_frames_against_the_goal():
    """HOLD-R as a training reward: the history starts as the reset frame repeated, each step
    pushes the new frame, and the reward is the shaped regression of exactly those frames."""
    from types import SimpleNamespace

    from holdjax.reward.base import FrameHistory, RewardFunction
    from holdjax.reward.shaping import ShapingConfig

    variables = scenic_checkpoint.holdr_variables(scenic_tree(), CONFIG)
    model = holdr.HoldRDistance(CONFIG, variables)
    goals = _frames(30, (1, 32, 32, 3))
    fn = RewardFunction("holdr", ShapingConfig(normalizer=5.0, env_weight=0.0), goals,
                        model.to_goals(goals), FrameHistory(model.features, FRAMES - 1))
    baseline = holdr.baseline_time_to_goal(variables, goals, CONFIG)
    np.testing.assert_allclose(fn.baselines, baseline, rtol=1e-4, atol=1e-5)
    frames = [_frames(31 + t, (2, 32, 32, 3)) for t in range(4)]
    state = fn.init(SimpleNamespace(obs=frames[0], reward=jnp.zeros(2)))
    assert state.history.shape == (2, FRAMES - 1, HIDDEN)
    seen = [frames[0]] * (FRAMES - 1)
    for t in range(1, 4):
        reward, state = fn(SimpleNamespace(obs=frames[t], reward=jnp.zeros(2)), state)
        seen = [*seen[1:], frames[t]]
        time = holdr.predict_time_to_goal(variables, jnp.stack(seen, 1), goals[0], CONFIG)
        # The model's output on the kept history is its prediction from exactly those frames
        # (checked before the shaping, whose clipping at 0 would hide a wrong history).
        np.testing.assert_allclose(fn.distance(state.history)[:, 0], time, rtol=1e-4,
                                   atol=1e-5)
        newest_only = holdr.predict_time_to_goal(
            variables, jnp.stack([frames[t]] * (FRAMES - 1), 1), goals[0], CONFIG)
        assert np.abs(np.asarray(newest_only - time)).max() > 1e-3  # the check can tell
        want = -jnp.maximum(0.0, time - baseline[0]) / 5.0
        np.testing.assert_allclose(reward, want, rtol=1e-4, atol=1e-5)
