"""HOLD-R: the reference's learned distance, a ViViT factorised-encoder regressor.

The model reads a clip of ``num_frames`` frames (the last ``num_frames - 1`` observations,
oldest first, then the goal image) and regresses the time left to reach the goal. Module and
parameter names follow scenic's layout (``scenic/projects/vivit/model.py``: ``SpaceTimeViViT``
as subclassed by hold-rewards' ``MultiOutputSpaceTimeViViT``), so that a released scenic
checkpoint maps onto :class:`HoldR` leaf for leaf
(:func:`holdjax.reward.scenic_checkpoint.holdr_variables`)::

    embedding/{kernel (t, h, w, 3, D), bias}       3-D conv tubelet embedding
    cls_SpatialTransformer (1, 1, D)               class token of the per-frame encoder
    SpatialTransformer/posembed_input/pos_embedding (1, 1 + h*w, D)
    SpatialTransformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0,
                                         LayerNorm_1, MlpBlock_0/{Dense_0, Dense_1}}
    SpatialTransformer/encoder_norm
    cls_TemporalTransformer, TemporalTransformer/...  the same over the per-frame tokens
    output_projection/{kernel (D, 1), bias (1,)}

Inference only: dropout and stochastic depth (identities at test time) are left out.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from holdjax.envs.base import crop_for_model

ATTENTIONS = ("auto", "flax", "cudnn")


def check_attention(attention: str, name: str = "attention") -> None:
    """Raises, naming the valid ones, for an attention setting (``name``: the field or flag
    that holds it) that does not exist."""
    if attention not in ATTENTIONS:
        raise ValueError(f"unknown {name} {attention!r}; valid: {', '.join(ATTENTIONS)}")


@dataclasses.dataclass(frozen=True)
class HoldRConfig:
    """Sizes of the model and its input; defaults are hold-rewards' HOLD-R config
    (``configs/holdr/vivit_large_factorized_encoder.py``: ViViT-Large factorised encoder)."""

    hidden_size: int = 1024
    patch_size: tuple[int, int, int] = (16, 16, 1)  # scenic's order: (height, width, time)
    spatial_layers: int = 24
    spatial_heads: int = 16
    spatial_mlp_dim: int = 4096
    temporal_layers: int = 4
    temporal_heads: int = 16
    temporal_mlp_dim: int = 4096
    num_frames: int = 4  # history frames + the goal frame
    crop_size: int = 256  # dataset_configs.crop_size of the HOLD-R config
    zero_centering: bool = True
    num_outputs: int = 1  # the regressed time to goal
    # activations; scoring (`scoring_variables`) casts the blocks' parameters to it once
    dtype: Any = jnp.float32
    # "flax" (flax's attention: the (heads, tokens, tokens) weights written to memory),
    # "cudnn" (cuDNN's fused flash attention; a GPU, bf16 or float16), or "auto": cuDNN where
    # it takes the shapes on a GPU in a 16-bit dtype, else flax's (benchmarks/NOTES.md)
    attention: str = "auto"

    def __post_init__(self):
        check_attention(self.attention)

    @property
    def history_length(self) -> int:
        return self.num_frames - 1

    @classmethod
    def from_params(cls, params: dict, **overrides) -> HoldRConfig:
        """The architecture a scenic-layout parameter tree describes, read from its leaf
        shapes (the released checkpoint stores no config); ``overrides`` set the rest
        (``dtype``, ``zero_centering``). Raises ValueError naming a leaf it needs but lacks;
        ``scenic_checkpoint.holdr_variables`` then checks every leaf against the result."""
        flat = {_path(k): np.shape(v) for k, v in
                flax.traverse_util.flatten_dict(flax.core.unfreeze(params)).items()}

        def shape(path):
            if path not in flat:
                raise ValueError(f"not a HOLD-R (ViViT) parameter tree: no leaf {path}")
            return flat[path]

        def layers(encoder):
            return len({k.split("/")[1] for k in flat
                        if k.startswith(f"{encoder}/encoderblock_")})

        def block(encoder, leaf):
            return shape(f"{encoder}/encoderblock_0/{leaf}")

        ft, fh, fw, _, hidden = shape("embedding/kernel")
        spatial_tokens = shape("SpatialTransformer/posembed_input/pos_embedding")[1] - 1
        temporal_tokens = shape("TemporalTransformer/posembed_input/pos_embedding")[1] - 1
        side = round(spatial_tokens ** 0.5)
        attention = "MultiHeadDotProductAttention_0/query/kernel"
        sizes = dict(
            hidden_size=hidden, patch_size=(fh, fw, ft),
            spatial_layers=layers("SpatialTransformer"),
            spatial_heads=block("SpatialTransformer", attention)[1],
            spatial_mlp_dim=block("SpatialTransformer", "MlpBlock_0/Dense_0/kernel")[1],
            temporal_layers=layers("TemporalTransformer"),
            temporal_heads=block("TemporalTransformer", attention)[1],
            temporal_mlp_dim=block("TemporalTransformer", "MlpBlock_0/Dense_0/kernel")[1],
            num_frames=temporal_tokens * ft, crop_size=side * fh,
            num_outputs=shape("output_projection/kernel")[1])
        return cls(**{**sizes, **overrides})


# --- preprocessing and frame history ---------------------------------------------------------


def preprocess(frames: jax.Array, crop_size: int, zero_centering: bool = True) -> jax.Array:
    """uint8 frames (..., H, W, 3) -> float32 (..., crop, crop, 3), as the reference feeds its
    model: central square crop, bilinear resize (jax's, antialiased), then [0, 1] -> [-1, 1]."""
    chex.assert_axis_dimension(frames, -1, 3)
    return crop_for_model(frames, crop_size, zero_centering)


def init_history(first: jax.Array, length: int) -> jax.Array:
    """(N, ...) -> (N, length, ...): each world's reset frame (or its features) repeated, as
    the reference pads its history at an episode's start."""
    chex.assert_rank(first, {2, 3, 4})
    return jnp.repeat(first[:, None], length, axis=1)


def push_history(history: jax.Array, new: jax.Array) -> jax.Array:
    """Drops each world's oldest entry and appends its newest (N, ...); oldest first."""
    chex.assert_equal_shape([history[:, 0], new])
    return jnp.concatenate([history[:, 1:], new[:, None]], axis=1)


# --- the model, in scenic's layout -----------------------------------------------------------


class AddPositionEmbs(nn.Module):
    """Learned 1-D position embedding (scenic ``vit.AddPositionEmbs``), cls slot included."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                        (1, *x.shape[1:]), jnp.float32)
        return x + pe.astype(x.dtype)


class MlpBlock(nn.Module):
    """Dense -> gelu (tanh approximation, flax's default) -> Dense, back to the input width."""

    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = functools.partial(nn.Dense, dtype=self.dtype,
                                  kernel_init=nn.initializers.xavier_uniform(),
                                  bias_init=nn.initializers.normal(stddev=1e-6))
        y = nn.gelu(dense(self.mlp_dim, name="Dense_0")(x))
        return dense(x.shape[-1], name="Dense_1")(y)


def attention_function(attention: str, dtype) -> Any:
    """The attention weights-and-sum of ``nn.MultiHeadDotProductAttention`` for an
    ``attention`` setting (`HoldRConfig.attention`): flax's own, or cuDNN's flash attention,
    which never writes the attention weights to memory. "auto" takes cuDNN's on a GPU in a
    16-bit dtype, and flax's where cuDNN refuses the call (its version, the GPU's compute
    capability or the shapes: checked as the model is traced)."""
    sixteen_bit = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    if attention == "flax" or (attention == "auto" and not (
            sixteen_bit and jax.default_backend() == "gpu")):
        return nn.dot_product_attention

    def cudnn_attention(query, key, value, **flax_arguments):  # no mask, bias or dropout here
        try:
            return jax.nn.dot_product_attention(query, key, value, implementation="cudnn")
        except (RuntimeError, ValueError, NotImplementedError):
            if attention == "cudnn":
                raise
            return nn.dot_product_attention(query, key, value, **flax_arguments)

    return cudnn_attention


class EncoderBlock(nn.Module):
    """Pre-norm transformer block (scenic vivit ``EncoderBlock``)."""

    mlp_dim: int
    num_heads: int
    dtype: Any = jnp.float32
    attention: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_0")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            attention_fn=attention_function(self.attention, self.dtype),
            name="MultiHeadDotProductAttention_0")(y, y, deterministic=True)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_1")(x)
        return x + MlpBlock(self.mlp_dim, self.dtype, name="MlpBlock_0")(y)


class Encoder(nn.Module):
    """Position embedding, blocks, final LayerNorm (scenic vivit ``Encoder``, learned_1d).
    The final norm has no dtype, as in scenic, so it computes in float32."""

    num_layers: int
    mlp_dim: int
    num_heads: int
    dtype: Any = jnp.float32
    attention: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        chex.assert_rank(x, 3)
        x = AddPositionEmbs(name="posembed_input")(x)
        for i in range(self.num_layers):
            x = EncoderBlock(self.mlp_dim, self.num_heads, self.dtype, self.attention,
                             name=f"encoderblock_{i}")(x)
        return nn.LayerNorm(name="encoder_norm")(x)


def _with_cls(cls: jax.Array, x: jax.Array) -> jax.Array:
    """Prepends the class token ``cls`` (1, 1, D) to tokens (B, L, D)."""
    cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    return jnp.concatenate([cls, x], axis=1)


class HoldR(nn.Module):
    """ViViT factorised encoder: a spatial transformer per frame (its class token is the
    frame's summary), a temporal transformer over those, a linear head on its class token.

    The two halves are also methods of their own (``frame_tokens``, ``regress``): with
    one-frame tubelets a frame's summary does not depend on the other frames, so the fused
    step encodes each new frame once and keeps the summaries of the last few as history."""

    config: HoldRConfig

    def setup(self):
        cfg = self.config
        fh, fw, ft = cfg.patch_size
        zeros = nn.initializers.zeros
        self.embedding = nn.Conv(cfg.hidden_size, (ft, fh, fw), strides=(ft, fh, fw),
                                 padding="VALID", dtype=cfg.dtype)
        self.cls_SpatialTransformer = self.param(
            "cls_SpatialTransformer", zeros, (1, 1, cfg.hidden_size), jnp.float32)
        self.SpatialTransformer = Encoder(cfg.spatial_layers, cfg.spatial_mlp_dim,
                                          cfg.spatial_heads, cfg.dtype, cfg.attention)
        self.cls_TemporalTransformer = self.param(
            "cls_TemporalTransformer", zeros, (1, 1, cfg.hidden_size), jnp.float32)
        self.TemporalTransformer = Encoder(cfg.temporal_layers, cfg.temporal_mlp_dim,
                                           cfg.temporal_heads, cfg.dtype, cfg.attention)
        self.output_projection = nn.Dense(cfg.num_outputs, kernel_init=zeros)

    def __call__(self, clip: jax.Array) -> jax.Array:
        """Preprocessed clip (N, T, S, S, 3) -> (N, num_outputs) float32."""
        return self.regress(self.frame_tokens(clip))

    def frame_tokens(self, clip: jax.Array) -> jax.Array:
        """Preprocessed clip (N, T, S, S, 3) -> the spatial class tokens (N, T / ft, D)."""
        chex.assert_rank(clip, 5)
        x = self.embedding(clip.astype(self.config.dtype))
        n, t, h, w, d = x.shape
        x = _with_cls(self.cls_SpatialTransformer, x.reshape(n * t, h * w, d))
        return self.SpatialTransformer(x)[:, 0].reshape(n, t, d)

    def regress(self, tokens: jax.Array) -> jax.Array:
        """Per-frame tokens (N, T / ft, D) -> (N, num_outputs) float32."""
        chex.assert_rank(tokens, 3)
        x = _with_cls(self.cls_TemporalTransformer, tokens.astype(self.config.dtype))
        return self.output_projection(self.TemporalTransformer(x)[:, 0])


def _dummy_clip(config: HoldRConfig) -> jax.Array:
    return jnp.zeros((1, config.num_frames, config.crop_size, config.crop_size, 3), jnp.float32)


def variable_shapes(config: HoldRConfig) -> dict:
    """The variables' shapes and dtypes, without allocating them."""
    return jax.eval_shape(HoldR(config).init, jax.random.key(0), _dummy_clip(config))


def random_variables(config: HoldRConfig, seed: int = 0) -> dict:
    """A random stand-in for checkpoint variables (benchmarks, smoke runs), drawn with numpy
    so that no init is compiled: kernels with variance 1 / fan-in, unit LayerNorm scales,
    small position embeddings, zero biases and class tokens."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            # attention's query/key/value kernels are (D, heads, head_dim): fan-in D
            qkv = len(leaf.shape) == 3 and path[-2].key != "out"
            fan_in = leaf.shape[0] if qkv else int(np.prod(leaf.shape[:-1]))
            return rng.normal(0.0, fan_in**-0.5, leaf.shape).astype(leaf.dtype)
        if name == "pos_embedding":
            return rng.normal(0.0, 0.02, leaf.shape).astype(leaf.dtype)
        return (np.ones if name == "scale" else np.zeros)(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, variable_shapes(config))


# --- inference -------------------------------------------------------------------------------


def predict_time_to_goal(variables: dict, history: jax.Array, goal: jax.Array,
                         config: HoldRConfig) -> jax.Array:
    """Regressed time to goal (N,) for each world's history (N, T-1, H, W, 3) uint8, oldest
    first, and the goal (H, W, 3) shared or (N, H, W, 3) per world, uint8. Jit with
    ``config`` static."""
    chex.assert_rank(history, 5)
    chex.assert_axis_dimension(history, 1, config.history_length)
    n = history.shape[0]
    goal = jnp.broadcast_to(goal, (n, *history.shape[2:])) if goal.ndim == 3 else goal
    chex.assert_equal_shape([history[:, 0], goal])
    clip = jnp.concatenate([history, goal[:, None]], axis=1)
    out = HoldR(config).apply(variables, preprocess(clip, config.crop_size,
                                                    config.zero_centering))
    chex.assert_shape(out, (n, config.num_outputs))
    return out[:, 0]


def baseline_time_to_goal(variables: dict, goals: jax.Array, config: HoldRConfig) -> jax.Array:
    """Each goal's distance to itself (G,): the goal repeated as history, as the reference
    computes the baseline it subtracts."""
    chex.assert_rank(goals, 4)
    history = init_history(goals, config.history_length)
    return predict_time_to_goal(variables, history, goals, config)


# --- the fused step's form: one spatial pass per new frame ------------------------------------


def _check_one_frame_tubelets(config: HoldRConfig) -> None:
    if config.patch_size[2] != 1:
        raise ValueError(
            f"per-frame features need one-frame tubelets (patch_size time 1, as the released "
            f"HOLD-R); this model's tubelets span {config.patch_size[2]} frames")


@functools.partial(jax.jit, static_argnums=0)
def frame_features(config: HoldRConfig, variables: dict, frames: jax.Array) -> jax.Array:
    """The spatial transformer's summary (N, D) float32 of each uint8 frame (N, H, W, 3):
    what a world's history keeps per frame."""
    _check_one_frame_tubelets(config)
    chex.assert_rank(frames, 4)
    clip = preprocess(frames[:, None], config.crop_size, config.zero_centering)
    tokens = HoldR(config).apply(variables, clip, method=HoldR.frame_tokens)
    return tokens[:, 0].astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _time_to_goals(config: HoldRConfig, variables: dict, history: jax.Array,
                   goal_features: jax.Array) -> jax.Array:
    """Regressed time (N, G) from each world's history of frame features (N, T-1, D), oldest
    first, to each goal (G, D): the temporal transformer and head only. Equal to
    :func:`predict_time_to_goal` on the frames themselves."""
    n, length, d = history.shape
    chex.assert_equal(length, config.history_length)
    chex.assert_shape(goal_features, (None, d))

    def to_goal(goal):
        tokens = jnp.concatenate([history, jnp.broadcast_to(goal, (n, 1, d))], axis=1)
        return HoldR(config).apply(variables, tokens, method=HoldR.regress)[:, 0]

    return jax.vmap(to_goal, out_axes=1)(goal_features).astype(jnp.float32)


def scoring_variables(config: HoldRConfig, variables: dict) -> dict:
    """``variables`` with the tubelet embedding's and the transformer blocks' parameters cast
    to the compute dtype once, here, rather than at each call (the final norms and the head
    compute in float32, as scenic's, and keep theirs). On a GPU in bf16 this also lets XLA
    fuse the biases into the matrix products (`benchmarks/NOTES.md`)."""
    def cast(path, leaf):
        names = [getattr(key, "key", "") for key in path]
        in_blocks = names[1] == "embedding" or any(n.startswith("encoderblock_") for n in names)
        return leaf.astype(config.dtype) if in_blocks else leaf

    return jax.tree_util.tree_map_with_path(cast, variables)


class HoldRDistance:
    """A HOLD-R model bound to its variables (as `scoring_variables`). The reward keeps, per
    world, the features of its last ``history_length`` frames (:meth:`features`);
    ``to_goals`` scores them."""

    def __init__(self, config: HoldRConfig, variables: dict):
        _check_one_frame_tubelets(config)
        self.config = config
        self.variables = jax.jit(scoring_variables, static_argnums=0)(config, variables)

    @property
    def history_length(self) -> int:
        return self.config.history_length

    def features(self, frames: jax.Array) -> jax.Array:
        return frame_features(self.config, self.variables, frames)

    def to_goals(self, goals: jax.Array):
        """history features (N, T-1, D) -> (N, G) time to ``goals`` (G, H, W, 3), whose
        features are computed only here."""
        return functools.partial(_time_to_goals, self.config, self.variables,
                                 goal_features=self.features(goals))


# --- loading scenic checkpoints --------------------------------------------------------------


def _path(keys: tuple) -> str:
    return "/".join(str(k) for k in keys)
