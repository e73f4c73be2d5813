"""SAC networks with the reference's architecture, and the tanh-squashed Gaussian policy.

Kernels use Glorot-uniform initialisation and biases zeros, the Keras defaults the reference
was trained with (flax defaults to LeCun-normal).
"""

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from holdjax.sac.augment import ShiftedImages
from holdjax.sac.pallas_conv import pallas_banded_conv_relu_pool, pallas_conv_relu_pool

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0

glorot_uniform = nn.initializers.xavier_uniform()


class Encoder(nn.Module):
    """[conv SAME, ReLU, 2x2 max-pool] per entry of `filters`, then flatten; no dense layer.

    Each layer is a `ConvReluPool`; ``conv`` picks how its convolution is computed (same
    parameters and values; `ENCODER_CONVS`). ``dtype`` is the convolutions' compute type
    (parameters stay float32; features come out float32 for the MLPs). Images may be
    `ShiftedImages` (`_encoder_input`).
    """

    filters: Sequence[int] = (8, 8)
    kernel_size: int = 5
    conv: str = "auto"
    dtype: str = "float32"

    @nn.compact
    def __call__(self, images: jax.Array | ShiftedImages) -> jax.Array:
        conv = resolve_encoder_conv(self.conv)
        x = _encoder_input(images, conv, self.dtype)
        for i, num_filters in enumerate(self.filters):
            x = ConvReluPool(num_filters, self.kernel_size, conv, self.dtype,
                             name=f"Conv_{i}")(x)
        return x.reshape(x.shape[0], -1).astype(jnp.float32)


def _encoder_input(images: jax.Array | ShiftedImages, conv: str, dtype: str
                   ) -> jax.Array | ShiftedImages:
    """The first layer's input: images in ``dtype``; `ShiftedImages` as they are for a Pallas
    computation (its first layer reads them through their shifts), else shifted and
    converted here."""
    if isinstance(images, ShiftedImages):
        if conv in PALLAS_CONVS:
            return images
        images = images.to_float()
    chex.assert_rank(images, 4)
    return images.astype(dtype)


class ConvReluPool(nn.Module):
    """`nn.Conv` (stride 1, SAME, Glorot-uniform kernel, zero bias), ReLU, `max_pool_2x2`.
    Parameters ("kernel" (k, k, Cin, F), "bias" (F,)) and their initial values are those of
    the `nn.Conv` it replaces; ``conv`` names the computation in `CONV_RELU_POOL` (`Encoder`
    resolves ``"auto"`` before building its layers)."""

    features: int
    kernel_size: int
    conv: str = "canonical"
    dtype: str = "float32"  # compute type; parameters are float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        size = (self.kernel_size, self.kernel_size)
        kernel = self.param("kernel", glorot_uniform, (*size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return CONV_RELU_POOL[self.conv](x, kernel, bias, self.dtype)


def conv_relu_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array, dtype: str) -> jax.Array:
    """`ConvReluPool` with `conv_same`'s canonical convolutions (``conv="canonical"``, the
    default): fast inside `lax.scan` on XLA:CPU (17-44x) and on an H200 (801 against 694
    updates/s; benchmarks/NOTES.md). On even-sized inputs the convolution comes out as 2x2
    blocks (`conv_same_blocked`), so the pool is a max over one axis, with no transposes. The
    bias and ReLU come after the pool, as in `pool_bias_relu`."""
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=dtype)
    if x.shape[1] % 2 or x.shape[2] % 2:
        return pool_bias_relu(conv_same(x, kernel), bias)
    return bias_relu(conv_same_blocked(x, kernel).max(axis=3), bias)


def bias_relu(y: jax.Array, bias: jax.Array) -> jax.Array:
    """relu(y + bias) in y's dtype, with the addition in float32: the bias's gradient is then
    a float32 sum over the batch and positions. In bf16 that sum stops growing at 256 (8-bit
    significand), which is what bf16 encoders' bias gradients were before 2026-11-28
    (benchmarks/NOTES.md)."""
    return nn.relu(y.astype(jnp.float32) + bias.astype(jnp.float32)).astype(y.dtype)


def pool_bias_relu(y: jax.Array, bias: jax.Array) -> jax.Array:
    """relu(max_pool_2x2(y) + bias) (`bias_relu`): the same values as
    max_pool_2x2(relu(y + bias)) (adding a per-channel constant and ReLU are monotone, in
    floating point too) from a quarter of the additions. On a GPU, the bias added before the
    pool became a full-size broadcast that cuDNN read as a side input
    (`benchmarks/gpu_census.py`)."""
    return bias_relu(max_pool_2x2(y), bias)


def lax_conv_relu_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array,
                       dtype: str) -> jax.Array:
    """`ConvReluPool` as `nn.Conv` computes it (``conv="lax"``): `lax.conv_general_dilated`
    and its autodiff, kept to compare against (~30x slower inside `lax.scan` on XLA:CPU); the
    bias added in float32, as everywhere here (`bias_relu`)."""
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=dtype)
    y = lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NHWC)
    return max_pool_2x2(bias_relu(y, bias))


ROW_TILE = 16  # most output columns per banded matrix product in `rows_conv_relu_pool`


def _row_tile(width: int) -> int:
    """The largest divisor of ``width`` that is at most `ROW_TILE`."""
    return max(d for d in range(1, min(width, ROW_TILE) + 1) if width % d == 0)


def banded_kernel(kernel: jax.Array, tile: int) -> jax.Array:
    """(kh, (tile + kw - 1) Cin, tile Cout): for each kernel row i, the matrix that maps
    ``tile + kw - 1`` consecutive (padded) input columns, channels last, to ``tile`` output
    columns: banded[i, (v, c), (w, o)] = kernel[i, v - w, c, o] where 0 <= v - w < kw."""
    kh, kw, cin, cout = kernel.shape
    offset = np.arange(tile + kw - 1)[:, None, None] - np.arange(tile)[None, :, None]
    select = (offset == np.arange(kw)).astype(np.float32)  # [v, w, j]
    banded = jnp.einsum("ijco,vwj->ivcwo", kernel, select.astype(kernel.dtype))
    return banded.reshape(kh, (tile + kw - 1) * cin, tile * cout)


def rows_conv_relu_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array,
                        dtype: str) -> jax.Array:
    """`ConvReluPool` as one matrix product (``conv="rows"``), for GPUs: each output row of
    up to `ROW_TILE` columns is kh stacked input rows (kh (tile + kw - 1) Cin values) times
    a banded matrix (`banded_kernel`). A 3- or 8-channel convolution becomes a GEMM of a few
    hundred on each side, shaped for tensor cores, at ~3.6x the FLOPs of the direct
    convolution; forward and backward are plain `dot_general`s (no cuDNN layout conversions).
    """
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=dtype)
    b, h, w, c = x.shape
    kh, kw, _, features = kernel.shape
    tile = _row_tile(w)
    x = jnp.pad(x, ((0, 0), _same_padding(kh), _same_padding(kw), (0, 0)))
    rows = jnp.stack([x[:, i:i + h] for i in range(kh)], axis=2)  # (B, H, kh, W + kw - 1, C)
    windows = jnp.stack([rows[:, :, :, t:t + tile + kw - 1] for t in range(0, w, tile)], axis=2)
    windows = windows.reshape(b, h, w // tile, kh, (tile + kw - 1) * c)
    y = jnp.einsum("bhtiv,ivw->bhtw", windows, banded_kernel(kernel, tile))
    return pool_bias_relu(y.reshape(b, h, w, features), bias)


CONV_RELU_POOL = {
    "canonical": conv_relu_pool,
    "lax": lax_conv_relu_pool,
    "rows": rows_conv_relu_pool,
    "pallas": pallas_conv_relu_pool,  # PALLAS_CONVS: for GPUs
    "pallas_banded": pallas_banded_conv_relu_pool,
}
ENCODER_CONVS = tuple(CONV_RELU_POOL)
PALLAS_CONVS = ("pallas", "pallas_banded")  # Pallas kernels: interpreted on the CPU


def check_encoder_conv(conv: str) -> None:
    """Raises, naming the valid ones, for an encoder computation that does not exist
    (``"auto"`` picks one per backend: `resolve_encoder_conv`)."""
    if conv != "auto" and conv not in CONV_RELU_POOL:
        raise ValueError(f"unknown encoder conv {conv!r}; valid: auto, {', '.join(ENCODER_CONVS)}")


def resolve_encoder_conv(conv: str) -> str:
    """``conv``, with ``"auto"`` made ``"rows"`` on an accelerator (1.31x the canonical
    convolutions' updates/s in float32 and 1.21x in bf16 on an H200, benchmarks/NOTES.md) and
    ``"canonical"`` on the CPU (where rows' ~3.6x FLOPs make it 1.3-1.8x slower)."""
    check_encoder_conv(conv)
    if conv != "auto":
        return conv
    return "canonical" if jax.default_backend() == "cpu" else "rows"


def encode_pair(first: chex.ArrayTree, second: chex.ArrayTree,
                images: jax.Array | ShiftedImages, dtype: str = "float32", conv: str = "auto"
                ) -> tuple[jax.Array, jax.Array]:
    """The features of two `Encoder`s (parameters ``first`` and ``second``, as under
    a module's "encoder") of the same images, computed as one encoder of twice the width:
    the first layer's kernels side by side (a pallas layer takes them as a pair and returns
    its two outputs stacked, with no concatenated kernel or split output to copy); each later
    layer's kernel block-diagonal, or, with ``conv="rows"`` or a pallas one, the two
    encoders' later layers as one batched call (vmapped: no block of zeros to multiply). Same
    values as applying each; half the layer calls, each twice as wide, meant for GPU kernels
    tiled for wider outputs than 8 (on XLA:CPU it is slower; benchmarks/NOTES.md).
    """
    conv = resolve_encoder_conv(conv)
    x = _encoder_input(images, conv, dtype)
    if conv in PALLAS_CONVS:
        a, b = first["Conv_0"], second["Conv_0"]
        stacked = CONV_RELU_POOL[conv](x, (a["kernel"], b["kernel"]), (a["bias"], b["bias"]),
                                       dtype)
    else:
        for i in range(1 if conv == "rows" else len(first)):
            a, b = first[f"Conv_{i}"], second[f"Conv_{i}"]
            if i == 0:
                kernel = jnp.concatenate([a["kernel"], b["kernel"]], axis=-1)
            else:
                *size, cin_a, cout_a = a["kernel"].shape
                cin_b, cout_b = b["kernel"].shape[-2:]
                kernel = jnp.concatenate([
                    jnp.concatenate([a["kernel"], jnp.zeros((*size, cin_a, cout_b))], axis=-1),
                    jnp.concatenate([jnp.zeros((*size, cin_b, cout_a)), b["kernel"]], axis=-1),
                ], axis=-2)
            x = CONV_RELU_POOL[conv](x, kernel, jnp.concatenate([a["bias"], b["bias"]]), dtype)
        split = first["Conv_0"]["bias"].shape[0]
        halves = (x[..., :split], x[..., split:])
        if conv != "rows":  # every layer done, block-diagonal
            return tuple(f.reshape(f.shape[0], -1).astype(jnp.float32) for f in halves)
        stacked = jnp.stack(halves)
    later = [f"Conv_{i}" for i in range(1, len(first))]
    if later:
        pair = jax.tree.map(lambda a, b: jnp.stack([a, b]), {k: first[k] for k in later},
                            {k: second[k] for k in later})

        def later_layers(x: jax.Array, params: chex.ArrayTree) -> jax.Array:
            for name in later:
                x = CONV_RELU_POOL[conv](x, params[name]["kernel"], params[name]["bias"], dtype)
            return x

        stacked = jax.vmap(later_layers)(stacked, pair)
    return tuple(f.reshape(f.shape[0], -1).astype(jnp.float32) for f in stacked)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 stride-2 max-pool (VALID) as a reshape + max: same values as ``nn.max_pool``,
    but its gradient is a cheap compare instead of XLA's slow select-and-scatter."""
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


# Canonical convolutions (written for XLA:CPU, also faster on a GPU) ---------------------------
#
# XLA:CPU only has fast convolution kernels (YNNPACK, Eigen) for "canonical" convolutions:
# NHWC input, HWIO kernel, NHWC output, no window reversal. JAX writes a convolution's input and
# kernel gradients as convolutions with permuted dimension numbers, which XLA:CPU's
# ConvCanonicalization pass turns back into canonical ones with transposes, but only in the
# entry computation: inside a while loop (`lax.scan`) they stay non-canonical and fall to a
# naive loop nest, 10-50x slower. `conv_same` states every convolution of its forward and
# backward pass canonically. It also rewrites the convolution on 2x2 space-to-depth blocks
# (4x the channels), which YNNPACK takes (it declines convolutions with <= 16 channels in and
# out) and which is several times faster than the Eigen kernel for these narrow layers.
# Under `jax.vmap` (seeds) a convolution whose input and kernel are both batched would become a
# grouped convolution, which XLA:CPU runs ~10x slower than the separate ones, so the batching
# rule of `_canonical_conv` unrolls over the vmapped axis instead.

NHWC = ("NHWC", "HWIO", "NHWC")
MAX_UNROLLED_VMAP = 16  # larger vmapped axes loop (lax.map) over their convolutions instead
Padding = tuple[tuple[int, int], tuple[int, int]]


@functools.cache
def _canonical_conv(padding: Padding) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Stride-1 NHWC/HWIO `lax.conv_general_dilated` with this padding, vmapped by unrolling
    (input and kernel batched) or by folding the vmapped axis into the input's batch or the
    kernel's output features (only one of them batched), never as a grouped convolution."""

    @jax.custom_batching.custom_vmap
    def conv(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(lhs, rhs, (1, 1), padding, dimension_numbers=NHWC)

    @conv.def_vmap
    def conv_vmap(
        axis_size: int, in_batched: Sequence[bool], lhs: jax.Array, rhs: jax.Array
    ) -> tuple[jax.Array, bool]:
        lhs_batched, rhs_batched = in_batched
        if lhs_batched and rhs_batched:
            if axis_size <= MAX_UNROLLED_VMAP:
                return jnp.stack([conv(lhs[i], rhs[i]) for i in range(axis_size)]), True
            return lax.map(lambda pair: conv(*pair), (lhs, rhs)), True
        if lhs_batched:
            y = conv(lhs.reshape(-1, *lhs.shape[2:]), rhs)
            return y.reshape(axis_size, -1, *y.shape[1:]), True
        if rhs_batched:
            _, kh, kw, cin, cout = rhs.shape
            y = conv(lhs, rhs.transpose(1, 2, 3, 0, 4).reshape(kh, kw, cin, axis_size * cout))
            return y.reshape(*y.shape[:3], axis_size, cout).transpose(3, 0, 1, 2, 4), True
        return conv(lhs, rhs), False

    return conv


def _same_padding(size: int) -> tuple[int, int]:
    """(low, high) zero padding of `lax`'s "SAME" for a stride-1 window of `size`."""
    return (size - 1) // 2, size // 2


def _space_to_depth(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H/2, W/2, 4C): each 2x2 block's pixels, row-major, on the channels."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // 2, w // 2, 4 * c)


def _depth_to_space(x: jax.Array) -> jax.Array:
    """Inverse of `_space_to_depth`."""
    b, h, w, c4 = x.shape
    x = x.reshape(b, h, w, 2, 2, c4 // 4).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, 2 * h, 2 * w, c4 // 4)


def _block_taps(size: int, low: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Which kernel tap links input-block offset I, input sub-pixel p, output sub-pixel q.

    Output pixel 2Y + q reads input pixels 2Y + q - low + i, i in [0, size), i.e. input
    blocks Y + first .. Y + last. Returns taps[I, p, q] = i (or `size` where no tap applies,
    an index into a zero slice) and the block-level (low, high) padding (-first, last).
    """
    first, last = (-low) // 2, (size - low) // 2
    taps = np.full((last - first + 1, 2, 2), size, np.int32)
    for block in range(last - first + 1):
        for p in range(2):
            for q in range(2):
                i = 2 * (block + first) + p - q + low
                if 0 <= i < size:
                    taps[block, p, q] = i
    return taps, (-first, last)


def _block_kernel(kernel: jax.Array, padding: Padding) -> tuple[jax.Array, Padding]:
    """The (4 Cin, 4 Cout) kernel, and its padding, of the same convolution on 2x2 blocks."""
    kh, kw, cin, cout = kernel.shape
    taps_h, pad_h = _block_taps(kh, padding[0][0])
    taps_w, pad_w = _block_taps(kw, padding[1][0])
    zero_padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
    # [I, J, p_h, p_w, q_h, q_w, Cin, Cout] -> [I, J, (p_h, p_w, Cin), (q_h, q_w, Cout)]
    blocks = zero_padded[taps_h[:, None, :, None, :, None], taps_w[None, :, None, :, None, :]]
    blocks = blocks.transpose(0, 1, 2, 3, 6, 4, 5, 7)
    return blocks.reshape(len(taps_h), len(taps_w), 4 * cin, 4 * cout), (pad_h, pad_w)


def _conv_on_blocks(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    """Stride-1 NHWC/HWIO convolution keeping the (even) spatial size, computed on 2x2
    space-to-depth blocks; returns (B, H/2, W/2, 4 Cout), i.e. `_space_to_depth` of it."""
    blocks, block_padding = _block_kernel(kernel, padding)
    return _canonical_conv(block_padding)(_space_to_depth(x), blocks)


def _conv(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    """Stride-1 NHWC/HWIO convolution that keeps the spatial size (low + high = size - 1):
    on 2x2 blocks when the size is even, else plain."""
    if x.shape[1] % 2 or x.shape[2] % 2:
        return _canonical_conv(padding)(x, kernel)
    return _depth_to_space(_conv_on_blocks(x, kernel, padding))


def _conv_same_grads(x: jax.Array, kernel: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Input and kernel gradients of `conv_same` for the output cotangent g (NHWC)."""
    padding = tuple(map(_same_padding, kernel.shape[:2]))
    # dx: correlate g with the flipped kernel, in/out features swapped, padding mirrored.
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dx = _conv(g, flipped, tuple((high, low) for low, high in padding))
    # dkernel[i, j, c, o] = sum_{b,y,x} x_padded[b, y + i, x + j, c] g[b, y, x, o]: a
    # convolution of x (C, H, W, B) with g (H, W, B, O) as the kernel, contracting the batch.
    dkernel = _canonical_conv(padding)(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3))
    return dx, dkernel.transpose(1, 2, 0, 3)


@jax.custom_vjp
def conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`lax.conv_general_dilated(x, kernel, (1, 1), "SAME")` for NHWC x and HWIO kernel, with
    every convolution of the forward and backward pass canonical (see above)."""
    chex.assert_rank([x, kernel], 4)
    return _conv(x, kernel, tuple(map(_same_padding, kernel.shape[:2])))


conv_same.defvjp(
    lambda x, kernel: (conv_same(x, kernel), (x, kernel)),
    lambda residuals, g: _conv_same_grads(*residuals, g),
)


@jax.custom_vjp
def conv_same_blocked(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`conv_same` for even H and W with each 2x2 block of output pixels on one axis:
    out[b, Y, X, 2p + q, o] = conv_same(x, kernel)[b, 2Y + p, 2X + q, o], (B, H/2, W/2, 4, O).
    """
    chex.assert_rank([x, kernel], 4)
    y = _conv_on_blocks(x, kernel, tuple(map(_same_padding, kernel.shape[:2])))
    return y.reshape(*y.shape[:3], 4, kernel.shape[-1])


def _conv_same_blocked_bwd(residuals: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _conv_same_grads(*residuals, _depth_to_space(g.reshape(*g.shape[:3], -1)))


conv_same_blocked.defvjp(
    lambda x, kernel: (conv_same_blocked(x, kernel), (x, kernel)), _conv_same_blocked_bwd
)


class MLP(nn.Module):
    """ReLU hidden layers, linear output; layers named so tests can read the weights."""

    hidden_sizes: Sequence[int]
    output_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, size in enumerate(self.hidden_sizes):
            x = nn.relu(nn.Dense(size, kernel_init=glorot_uniform, name=f"hidden_{i}")(x))
        return nn.Dense(self.output_size, kernel_init=glorot_uniform, name="output")(x)


class Critic(nn.Module):
    """Two Q heads on one shared encoder (as in the reference); returns Q values shaped (2, B).
    The heads keep their own parameters (``q1``, ``q2``); ``batched_heads`` runs them as one
    batched MLP (same values; `benchmarks/gpu_census.py`: 136 -> 120 kernels in an H100
    update, but ~10% slower for state observations on XLA:CPU).

    With ``encoder=None`` observations are state vectors fed straight to the heads.
    `encode` and `q_values` are the two halves, for updates that encode separately.
    """

    hidden_sizes: Sequence[int] = (256, 256)
    encoder: Encoder | None = None
    batched_heads: bool = False

    def setup(self):
        self.q1 = MLP(self.hidden_sizes, 1)
        self.q2 = MLP(self.hidden_sizes, 1)

    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        return self.q_values(self.encode(obs), action)

    def encode(self, obs: jax.Array) -> jax.Array:
        return obs if self.encoder is None else self.encoder(obs)

    def q_values(self, features: jax.Array, action: jax.Array) -> jax.Array:
        chex.assert_rank(action, 2)
        chex.assert_equal_shape_prefix((features, action), 1)
        features_and_action = jnp.concatenate([features, action], axis=-1)
        if self.is_initializing() or not self.batched_heads:  # init creates each head's params
            q_values = jnp.stack([q(features_and_action)[:, 0] for q in (self.q1, self.q2)])
        else:  # one batched MLP over the stacked heads
            heads = jax.tree.map(lambda a, b: jnp.stack([a, b]), self.q1.variables["params"],
                                 self.q2.variables["params"])
            head = MLP(self.hidden_sizes, 1, parent=None)
            q_values = jax.vmap(
                lambda params: head.apply({"params": params}, features_and_action)[:, 0])(heads)
        chex.assert_shape(q_values, (2, features.shape[0]))
        return q_values


class Actor(nn.Module):
    """Own encoder + MLP giving the pre-tanh Gaussian's mean and log-std clipped to [-20, 2].

    With ``encoder=None`` observations are state vectors. `encode` and `distribution` are the
    two halves, for updates that encode separately.
    """

    action_dim: int
    hidden_sizes: Sequence[int] = (256, 256)
    encoder: Encoder | None = None

    def setup(self):
        self.torso = MLP(self.hidden_sizes, 2 * self.action_dim)

    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.distribution(self.encode(obs))

    def encode(self, obs: jax.Array) -> jax.Array:
        return obs if self.encoder is None else self.encoder(obs)

    def distribution(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        chex.assert_rank(features, 2)
        mean, log_std = jnp.split(self.torso(features), 2, axis=-1)
        return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


class SACNetworks(NamedTuple):
    """The two stateless module definitions; parameters live in the training state."""

    actor: Actor
    critic: Critic


def make_networks(
    action_dim: int,
    from_pixels: bool,
    hidden_sizes: Sequence[int] = (256, 256),
    encoder_filters: Sequence[int] = (8, 8),
    encoder_kernel_size: int = 5,
    encoder_conv: str = "auto",
    encoder_dtype: str = "float32",
    batched_q_heads: bool = False,
) -> SACNetworks:
    """Actor and critic of one architecture description, each with its own encoder (none
    for state observations)."""
    def encoder() -> Encoder | None:
        if not from_pixels:
            return None
        return Encoder(tuple(encoder_filters), encoder_kernel_size,
                       resolve_encoder_conv(encoder_conv), encoder_dtype)

    hidden_sizes = tuple(hidden_sizes)
    return SACNetworks(actor=Actor(action_dim, hidden_sizes, encoder()),
                       critic=Critic(hidden_sizes, encoder(), batched_q_heads))


def _tanh_log_det_jacobian(pre_tanh: jax.Array) -> jax.Array:
    """log(1 - tanh(u)^2) written as 2 (log 2 - u - softplus(-2u)), finite for large |u|."""
    return 2.0 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh))


def sample_tanh_gaussian(
    mean: jax.Array, log_std: jax.Array, noise: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Reparameterised action tanh(mean + std * noise) and its log-density, summed over dims.

    Takes the standard-normal `noise` rather than a key so callers (and tests) control it.
    """
    chex.assert_equal_shape((mean, log_std, noise))
    pre_tanh = mean + jnp.exp(log_std) * noise
    gaussian_log_prob = -0.5 * noise**2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi)
    log_prob = jnp.sum(gaussian_log_prob - _tanh_log_det_jacobian(pre_tanh), axis=-1)
    return jnp.tanh(pre_tanh), log_prob


def sample_action(
    actor: Actor, actor_params: chex.ArrayTree, obs: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Stochastic policy action in [-1, 1] and its log-probability (exploration, losses)."""
    mean, log_std = actor.apply(actor_params, obs)
    return sample_tanh_gaussian(mean, log_std, jax.random.normal(key, mean.shape))


def deterministic_action(actor: Actor, actor_params: chex.ArrayTree, obs: jax.Array) -> jax.Array:
    """tanh of the Gaussian mean: the action used in evaluation episodes."""
    mean, _ = actor.apply(actor_params, obs)
    return jnp.tanh(mean)
