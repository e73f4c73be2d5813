"""HOLD-C: a time-contrastive ResNet embedding whose distances to the goal's embedding score
frames (the reference's ``ScenicDistanceModel`` with ``resnet_holdc`` from hold-rewards).

The network reproduces the parameter tree of scenic's ``projects/baselines`` ResNet, so the
released scenic checkpoint maps onto it leaf for leaf (see ``scenic_checkpoint``):

    params/stem_conv/kernel (7, 7, 3, F)          params/init_bn/{scale, bias} (F,)
    params/ResidualBlock_<k>/{conv1, conv2, conv3, proj_conv}/kernel
    params/ResidualBlock_<k>/{bn1, bn2, bn3, proj_bn}/{scale, bias}
    params/output_projection/{kernel (C, E), bias (E,)}
    batch_stats/<each batch norm above>/{mean, var}

Blocks are numbered 0.. across all stages. Batch norm uses the running statistics unless
training (holdjax's demo-trained model, ``holdjax.reward.train``). For scoring frames,
`fold_batch_norm` folds each batch norm into the convolution before it (a kernel scaled per
output channel and a bias), so that on a GPU each convolution, its bias, the ReLU and the
residual sum run as one cuDNN kernel instead of a convolution and an elementwise pass over
its output (`benchmarks/NOTES.md`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from holdjax.envs.base import crop_for_model
from holdjax.reward import batch_norm

# Depth -> (blocks per stage, bottleneck blocks), as in scenic's ResNet.
BLOCK_SIZES = {
    5: ((1,), True),
    8: ((1, 1), True),
    9: ((1, 1, 1, 1), False),
    11: ((1, 1, 1), True),
    14: ((1, 1, 1, 1), True),
    18: ((2, 2, 2, 2), False),
    26: ((2, 2, 2, 2), True),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
    200: ((3, 24, 36, 3), True),
}
# The reference's names (hold-policies ``distance_type``) and their parameter counts.
DISTANCE_TYPES = {"eucl": 0, "sq_eucl": 0, "sq_eucl_huber": 3}
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5


def check_distance(distance_type: str, distance_params: tuple[float, ...]) -> None:
    """Raises on an unknown ``distance_type`` or the wrong number of its ``distance_params``."""
    if distance_type not in DISTANCE_TYPES:
        raise ValueError(f"unknown distance_type {distance_type!r}; valid: "
                         f"{', '.join(DISTANCE_TYPES)}")
    if len(distance_params) != DISTANCE_TYPES[distance_type]:
        raise ValueError(f"distance_type {distance_type!r} takes {DISTANCE_TYPES[distance_type]} "
                         f"distance_params, got {distance_params!r}")


@dataclasses.dataclass(frozen=True)
class HoldCConfig:
    """The HOLD-C model and its distance; defaults are hold-rewards' ``holdc/resnet50.py``."""

    num_layers: int = 50
    num_filters: int = 64
    embedding_size: int = 32
    crop_size: int = 256
    zero_centering: bool = True
    distance_type: str = "eucl"
    distance_params: tuple[float, ...] = ()
    # compute dtype ("bfloat16" for speed); the scoring (folded) parameters are cast to it once
    dtype: str = "float32"

    def __post_init__(self):
        if self.num_layers not in BLOCK_SIZES:
            raise ValueError(f"num_layers {self.num_layers} not in {sorted(BLOCK_SIZES)}")
        check_distance(self.distance_type, self.distance_params)
        # Hashable even when given a list (the config is a static jit argument).
        object.__setattr__(self, "distance_params", tuple(float(p) for p in self.distance_params))
        jnp.dtype(self.dtype)  # fails early on a bad dtype name


# Each convolution's batch norm, by the names in scenic's tree.
CONV_NORMS = {"stem_conv": "init_bn", "conv1": "bn1", "conv2": "bn2", "conv3": "bn3",
              "proj_conv": "proj_bn"}


def conv_norm(parent: nn.Module, x: jax.Array, features: int, kernel: int, strides: int,
              conv_name: str, train: bool, **norm_kwargs) -> jax.Array:
    return batch_norm.conv_norm(parent, x, features, kernel, strides, conv_name,
                                CONV_NORMS[conv_name], BN_EPSILON, train,
                                momentum=BN_MOMENTUM, **norm_kwargs)


class ResidualBlock(nn.Module):
    """One residual block; the class name gives scenic's ``ResidualBlock_<k>`` scopes."""

    filters: int
    strides: int = 1
    bottleneck: bool = True
    dtype: Any = jnp.float32
    folded: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        out_channels = self.filters * 4 if self.bottleneck else self.filters
        # scenic tests ``channels != 4 * filters`` even for basic blocks, so every basic block
        # has a projection shortcut; its checkpoints hold proj_conv/proj_bn there too.
        shortcut = x
        if x.shape[-1] != self.filters * 4 or self.strides != 1:
            shortcut = conv_norm(self, x, out_channels, 1, self.strides, "proj_conv", train)
        y = x
        if self.bottleneck:
            y = nn.relu(conv_norm(self, y, self.filters, 1, 1, "conv1", train))
        y = nn.relu(conv_norm(self, y, self.filters, 3, self.strides, "conv2", train))
        y = conv_norm(self, y, out_channels, 1 if self.bottleneck else 3, 1, "conv3", train,
                      scale_init=nn.initializers.zeros)
        return nn.relu(shortcut + y)


class ResNet(nn.Module):
    """scenic's baselines ResNet with its ``output_projection`` head (the embedding)."""

    num_outputs: int = 32
    num_filters: int = 64
    num_layers: int = 50
    dtype: Any = jnp.float32
    folded: bool = False  # batch norms folded into the convolutions (`fold_batch_norm`)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        block_sizes, bottleneck = BLOCK_SIZES[self.num_layers]
        x = nn.relu(conv_norm(self, x, self.num_filters, 7, 2, "stem_conv", train))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, num_blocks in enumerate(block_sizes):
            for j in range(num_blocks):
                x = ResidualBlock(self.num_filters * 2**stage,
                                  strides=2 if stage > 0 and j == 0 else 1,
                                  bottleneck=bottleneck, dtype=self.dtype,
                                  folded=self.folded)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_outputs, dtype=self.dtype, name="output_projection")(x)


def build_model(config: HoldCConfig, folded: bool = False) -> ResNet:
    return ResNet(num_outputs=config.embedding_size, num_filters=config.num_filters,
                  num_layers=config.num_layers, dtype=jnp.dtype(config.dtype), folded=folded)


def fold_batch_norm(config: HoldCConfig, variables: dict) -> dict:
    """A checkpoint's {'params', 'batch_stats'} as the inference parameters of
    `build_model(config, folded=True)` (`batch_norm.fold_batch_norms`)."""
    return batch_norm.fold_batch_norms(variables, CONV_NORMS, BN_EPSILON,
                                       jnp.dtype(config.dtype))


def abstract_variables(config: HoldCConfig) -> dict:
    """Shapes and dtypes of the model's variables {'params', 'batch_stats'}, computing none."""
    images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    return dict(jax.eval_shape(build_model(config).init, jax.random.key(0), images))


def random_variables(config: HoldCConfig, seed: int = 0) -> dict:
    """A random stand-in for checkpoint variables (tests, benchmarks): kernels with variance
    1 / fan-in, identity batch norms. Drawn with numpy, since compiling flax's init costs
    seconds per model on the CPU."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(0.0, fan_in**-0.5, leaf.shape).astype(leaf.dtype)
        return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract_variables(config))


def preprocess(config: HoldCConfig, frames: jax.Array) -> jax.Array:
    """uint8 (N, H, W, 3) -> float32 (N, S, S, 3) as the model was trained to see frames:
    central square crop, bilinear resize to the crop size, [0, 1] or (zero-centred) [-1, 1]."""
    chex.assert_rank(frames, 4)
    chex.assert_type(frames, jnp.uint8)
    chex.assert_axis_dimension(frames, 3, 3)
    return crop_for_model(frames, config.crop_size, config.zero_centering)


@functools.partial(jax.jit, static_argnums=0)
def embed(config: HoldCConfig, variables: dict, frames: jax.Array) -> jax.Array:
    """Embeddings (N, E) float32 of uint8 frames (N, H, W, 3); ``variables`` a checkpoint's or
    `fold_batch_norm`'s."""
    images = preprocess(config, frames)
    model = build_model(config, folded=batch_norm.is_folded(variables))
    out = model.apply(variables, images.astype(jnp.dtype(config.dtype)))
    chex.assert_shape(out, (frames.shape[0], config.embedding_size))
    return out.astype(jnp.float32)


def embedding_distance(config: HoldCConfig, a: jax.Array, b: jax.Array) -> jax.Array:
    """Pairwise distances (N, G) between embeddings a (N, E) and b (G, E): Euclidean,
    squared, or the reference's Huber-like ``alpha * sq + beta * sqrt(gamma + sq)``."""
    chex.assert_rank([a, b], 2)
    chex.assert_equal_shape_suffix([a, b], 1)
    sq = jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)
    if config.distance_type == "eucl":
        return jnp.sqrt(sq)
    if config.distance_type == "sq_eucl":
        return sq
    alpha, beta, gamma = config.distance_params
    return alpha * sq + beta * jnp.sqrt(gamma + sq)


@functools.partial(jax.jit, static_argnums=0)
def distance_to_embeddings(config: HoldCConfig, variables: dict, frames: jax.Array,
                           goal_embeddings: jax.Array) -> jax.Array:
    """Distances (N, G) of frames to goals embedded once beforehand with :func:`embed`."""
    chex.assert_shape(goal_embeddings, (None, config.embedding_size))
    return embedding_distance(config, embed(config, variables, frames), goal_embeddings)


class HoldCDistance(batch_norm.FoldedDistance):
    """A HOLD-C model bound to its variables, callable as ``distance(frames, goals)``."""

    fold = staticmethod(fold_batch_norm)
    embed_frames = staticmethod(embed)
    distances = staticmethod(distance_to_embeddings)
