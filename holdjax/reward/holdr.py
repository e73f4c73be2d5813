"""HOLD-R: the reference's learned distance, a ViViT factorised-encoder regressor.

The model reads a clip of ``num_frames`` frames (the last ``num_frames - 1`` observations,
oldest first, then the goal image) and regresses the time left to reach the goal. Module and
parameter names follow scenic's layout (``scenic/projects/vivit/model.py``: ``SpaceTimeViViT``
as subclassed by hold-rewards' ``MultiOutputSpaceTimeViViT``), so that a released scenic
checkpoint maps onto :class:`HoldR` leaf for leaf through :func:`variables_from_scenic`::

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

from holdjax.envs.base import image_to_float


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
    dtype: Any = jnp.float32  # activations; parameters stay float32

    @property
    def history_length(self) -> int:
        return self.num_frames - 1

    @property
    def tokens_per_frame(self) -> int:
        fh, fw, _ = self.patch_size
        return (self.crop_size // fh) * (self.crop_size // fw)


# --- preprocessing and frame history ---------------------------------------------------------


def preprocess(frames: jax.Array, crop_size: int, zero_centering: bool = True) -> jax.Array:
    """uint8 frames (..., H, W, 3) -> float32 (..., crop, crop, 3), as the reference feeds its
    model: central square crop, bilinear resize (jax's, antialiased), then [0, 1] -> [-1, 1]."""
    chex.assert_axis_dimension(frames, -1, 3)
    h, w = frames.shape[-3:-1]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = image_to_float(frames)[..., top:top + side, left:left + side, :]
    x = jax.image.resize(x, (*x.shape[:-3], crop_size, crop_size, 3), method="bilinear")
    return x * 2.0 - 1.0 if zero_centering else x


def init_history(first_frames: jax.Array, length: int) -> jax.Array:
    """(N, H, W, 3) -> (N, length, H, W, 3): the reset frame repeated, as the reference pads
    its history at an episode's start."""
    chex.assert_rank(first_frames, 4)
    return jnp.repeat(first_frames[:, None], length, axis=1)


def push_history(history: jax.Array, frames: jax.Array) -> jax.Array:
    """Drops each world's oldest frame and appends its newest (N, H, W, 3); oldest first."""
    chex.assert_rank([history, frames], [5, 4])
    chex.assert_equal_shape([history[:, 0], frames])
    return jnp.concatenate([history[:, 1:], frames[:, None]], axis=1)


def reset_history(history: jax.Array, frames: jax.Array, reset: jax.Array) -> jax.Array:
    """Re-pads the worlds where ``reset`` (N,) holds with their new first frame; keeps the
    rest. For auto-resetting batches, where worlds start episodes at different steps."""
    chex.assert_rank([history, frames, reset], [5, 4, 1])
    fresh = init_history(frames, history.shape[1])
    return jnp.where(reset[:, None, None, None, None], fresh, history)


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


class EncoderBlock(nn.Module):
    """Pre-norm transformer block (scenic vivit ``EncoderBlock``)."""

    mlp_dim: int
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_0")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
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

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        chex.assert_rank(x, 3)
        x = AddPositionEmbs(name="posembed_input")(x)
        for i in range(self.num_layers):
            x = EncoderBlock(self.mlp_dim, self.num_heads, self.dtype,
                             name=f"encoderblock_{i}")(x)
        return nn.LayerNorm(name="encoder_norm")(x)


def _with_cls(module: nn.Module, name: str, x: jax.Array) -> jax.Array:
    """Prepends the zero-initialised class token ``cls_<name>`` to tokens (B, L, D)."""
    cls = module.param(f"cls_{name}", nn.initializers.zeros, (1, 1, x.shape[-1]), jnp.float32)
    cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    return jnp.concatenate([cls, x], axis=1)


class HoldR(nn.Module):
    """ViViT factorised encoder: a spatial transformer per frame (its class token is the
    frame's summary), a temporal transformer over those, a linear head on its class token."""

    config: HoldRConfig

    @nn.compact
    def __call__(self, clip: jax.Array) -> jax.Array:
        """Preprocessed clip (N, T, S, S, 3) -> (N, num_outputs) float32."""
        cfg = self.config
        chex.assert_rank(clip, 5)
        fh, fw, ft = cfg.patch_size
        x = nn.Conv(cfg.hidden_size, (ft, fh, fw), strides=(ft, fh, fw), padding="VALID",
                    dtype=cfg.dtype, name="embedding")(clip.astype(cfg.dtype))
        n, t, h, w, d = x.shape
        x = _with_cls(self, "SpatialTransformer", x.reshape(n * t, h * w, d))
        x = Encoder(cfg.spatial_layers, cfg.spatial_mlp_dim, cfg.spatial_heads, cfg.dtype,
                    name="SpatialTransformer")(x)[:, 0]
        x = _with_cls(self, "TemporalTransformer", x.reshape(n, t, d))
        x = Encoder(cfg.temporal_layers, cfg.temporal_mlp_dim, cfg.temporal_heads, cfg.dtype,
                    name="TemporalTransformer")(x)[:, 0]
        return nn.Dense(cfg.num_outputs, kernel_init=nn.initializers.zeros,
                        name="output_projection")(x)


def _dummy_clip(config: HoldRConfig) -> jax.Array:
    return jnp.zeros((1, config.num_frames, config.crop_size, config.crop_size, 3), jnp.float32)


def init_variables(key: jax.Array, config: HoldRConfig) -> dict:
    """Freshly initialised variables (scenic's initialisers), for tests and smoke runs."""
    return HoldR(config).init(key, _dummy_clip(config))


def variable_shapes(config: HoldRConfig) -> dict:
    """The variables' shapes and dtypes, without allocating them."""
    return jax.eval_shape(HoldR(config).init, jax.random.key(0), _dummy_clip(config))


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


# --- loading scenic checkpoints --------------------------------------------------------------


def _path(keys: tuple) -> str:
    return "/".join(str(k) for k in keys)


def variables_from_scenic(tree: Any, config: HoldRConfig) -> dict:
    """Maps scenic's parameter tree (``train_state.optimizer.target``, a nested dict) onto
    :class:`HoldR`'s variables ``{'params': ...}``. Raises ValueError naming every missing,
    extra or mis-shaped leaf: a silent partial load would give a plausible-looking but wrong
    reward."""
    expected = flax.traverse_util.flatten_dict(variable_shapes(config)["params"])
    given = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))
    problems = [f"missing leaf {_path(k)} {expected[k].shape}"
                for k in sorted(expected.keys() - given.keys())]
    problems += [f"unexpected leaf {_path(k)} {np.shape(given[k])}"
                 for k in sorted(given.keys() - expected.keys())]
    problems += [f"leaf {_path(k)} has shape {np.shape(given[k])}, expected {expected[k].shape}"
                 for k in sorted(expected.keys() & given.keys())
                 if tuple(np.shape(given[k])) != tuple(expected[k].shape)]
    if problems:
        raise ValueError("scenic tree does not match HOLD-R's layout for this config: "
                         + "; ".join(problems))
    params = {k: jnp.asarray(given[k], expected[k].dtype) for k in expected}
    return {"params": flax.traverse_util.unflatten_dict(params)}
