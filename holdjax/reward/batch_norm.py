"""Convolutions with batch norm for the ResNet reward models (HOLD-C, R3M), and the batch norms
folded into their convolutions for scoring frames.

At inference a batch norm is an affine map per channel, y = (x - mean) * s + bias with
s = scale / sqrt(var + eps), so conv-then-norm equals one convolution with its kernel scaled
by s per output channel and a bias of bias - mean * s. On a GPU, XLA then runs each
convolution with its bias, ReLU and residual sum as one cuDNN kernel instead of a
convolution and an elementwise pass over its whole output (HOLD-C's ResNet-50 at 256 px: 219
kernels and 62 GB per 512 frames become 65 and 39 GB; `benchmarks/NOTES.md`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def conv_norm(parent: nn.Module, x: jax.Array, features: int, kernel: int, strides: int,
              conv_name: str, norm_name: str, epsilon: float, train: bool = False,
              **norm_kwargs) -> jax.Array:
    """``parent``'s convolution (symmetric padding kernel // 2, no bias) and batch norm, or,
    with ``parent.folded``, the convolution with the bias `fold_batch_norms` made of them."""
    pad = (kernel // 2, kernel // 2)
    y = nn.Conv(features, (kernel, kernel), (strides, strides), padding=(pad, pad),
                use_bias=parent.folded, dtype=parent.dtype, parent=parent, name=conv_name)(x)
    if parent.folded:
        if train:
            raise ValueError("folded batch norms are for inference; train the checkpoint's form")
        return y
    return nn.BatchNorm(use_running_average=not train, epsilon=epsilon, dtype=parent.dtype,
                        parent=parent, name=norm_name, **norm_kwargs)(y)


def is_folded(variables: dict) -> bool:
    """Whether ``variables`` are `fold_batch_norms`'s (no batch statistics) or a checkpoint's."""
    return "batch_stats" not in variables


def for_scoring(fold, config, variables: dict) -> dict:
    """``variables`` folded by ``fold(config, variables)`` (jitted), unless they already are:
    what a distance model keeps to score frames with."""
    if is_folded(variables):
        return variables
    return jax.jit(fold, static_argnums=0)(config, variables)


class FoldedDistance:
    """A ResNet embedding model bound to its variables, callable as ``distance(frames, goals)``
    (uint8 (N, H, W, 3) and (G, H', W', 3) -> (N, G)); it scores with the batch norms folded.
    A model's subclass names its module's ``fold(config, variables)``,
    ``embed_frames(config, variables, frames)`` and
    ``distances(config, variables, frames, goal_embeddings)``."""

    fold: Callable[[Any, dict], dict]
    embed_frames: Callable[[Any, dict, jax.Array], jax.Array]
    distances: Callable[..., jax.Array]

    def __init__(self, config, variables: dict):
        self.config = config
        self.variables = for_scoring(self.fold, config, variables)

    def __call__(self, frames: jax.Array, goals: jax.Array) -> jax.Array:
        return self.to_goals(goals)(frames)

    def embed(self, frames: jax.Array) -> jax.Array:
        return self.embed_frames(self.config, self.variables, frames)

    def to_goals(self, goals: jax.Array) -> Callable[[jax.Array], jax.Array]:
        """frames -> (N, G) distances to ``goals``, whose embeddings are computed only here:
        the goals never change during a run, so a step need not embed them again."""
        return functools.partial(self.distances, self.config, self.variables,
                                 goal_embeddings=self.embed(goals))


def fold_batch_norms(variables: dict, conv_norms: dict[str, str], epsilon: float,
                     dtype) -> dict:
    """A checkpoint's {'params', 'batch_stats'} as the folded network's {'params'}: in every
    module, each convolution named in ``conv_norms`` takes in the batch norm named there, and
    every parameter is cast to the compute ``dtype`` once, here, rather than at each call."""
    norms = set(conv_norms.values())

    def fold(params: dict, stats: dict) -> dict:
        out = {}
        for name, value in params.items():
            if name in norms:
                continue
            if name in conv_norms:
                norm, moments = params[conv_norms[name]], stats[conv_norms[name]]
                s = norm["scale"] / jnp.sqrt(moments["var"] + epsilon)
                out[name] = {"kernel": (value["kernel"] * s).astype(dtype),
                             "bias": (norm["bias"] - moments["mean"] * s).astype(dtype)}
            elif not any(isinstance(leaf, Mapping) for leaf in value.values()):  # a layer
                out[name] = {k: leaf.astype(dtype) for k, leaf in value.items()}
            else:
                out[name] = fold(value, stats.get(name, {}))
        return out

    return {"params": fold(variables["params"], variables["batch_stats"])}
