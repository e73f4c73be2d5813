"""Conv-ReLU-pool layers as Pallas kernels (``encoder_conv="pallas"``), written for GPUs.

The XLA formulations of an encoder layer (`networks.conv_relu_pool`, `rows_conv_relu_pool`)
cost several kernels and the padded, stacked or space-to-depth copies between them, forward and
backward, and an update runs 6 encoder passes: on an H100 the encoders are most of an update
(benchmarks/NOTES.md). Here a layer's forward pass is one kernel and its backward pass two, or
three where its input is differentiated:

- forward: each program takes `BLOCK` pooled output positions; for each of the 2x2 pooled
  pixels and each kernel row i it gathers the kw Cin consecutive input values that row reads
  (a (BLOCK, K) tile; zeros outside the image, so no padded copy) and multiplies them by
  kernel row i as a (K, N) matrix on tensor cores (K = kw Cin and N = Cout padded to powers of
  two >= 16, gathered from the float32 kernel in the program); max over the 2x2 pixels, bias,
  ReLU, stored as (B, H/2, W/2, Cout). Only the input, the parameters and the pooled output
  touch memory.
- backward: one kernel recomputes the four convolutions, routes the cotangent through ReLU
  and the max (split evenly among ties, as `lax.reduce_max`'s gradient does), and writes each
  program's partial sums of the kernel's and bias's gradients (one XLA reduction sums them).
  Where the layer's input is differentiated (not for the images: the custom VJP sees which
  inputs are perturbed), it also writes the convolution's cotangent (B, H, W, Cout), which the
  forward kernel (no pool, no bias; the kernel read flipped and transposed) turns into the
  input's gradient.

On the CPU the kernels run in Pallas's interpreter (`lax.platform_dependent`), slowly: that is
for the tests. Same parameters and values as the other computations (`CONV_RELU_POOL`).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

BLOCK = 128  # output positions per program
NUM_WARPS = 4


class Geometry(NamedTuple):
    """A stride-1 "SAME" convolution of an NHWC input, optionally 2x2 max-pooled. With
    ``transposed`` the kernel (kh, kw, Cout, Cin) is read flipped with its channel axes
    swapped: the convolution that gives a "SAME" convolution's input gradient."""

    batch: int
    height: int  # input and convolution rows
    width: int
    cin: int
    cout: int
    kh: int
    kw: int
    pad_top: int
    pad_left: int
    pool: bool
    transposed: bool

    @property
    def out_h(self) -> int:
        return self.height // 2 if self.pool else self.height

    @property
    def out_w(self) -> int:
        return self.width // 2 if self.pool else self.width

    @property
    def positions(self) -> int:
        return self.batch * self.out_h * self.out_w

    @property
    def k_pad(self) -> int:  # one kernel row's inputs, kw Cin, padded for tensor cores
        return max(16, pl.next_power_of_2(self.kw * self.cin))

    @property
    def n_pad(self) -> int:
        return max(16, pl.next_power_of_2(self.cout))

    @property
    def programs(self) -> int:
        return pl.cdiv(self.positions, BLOCK)

    @property
    def pixels(self) -> tuple[tuple[int, int], ...]:  # the conv pixels of an output position
        return ((0, 0), (0, 1), (1, 0), (1, 1)) if self.pool else ((0, 0),)

    @property
    def partial_rows(self) -> int:  # a program's partial gradient sums: kernel rows, then bias
        return self.kh * self.k_pad + 1


def _positions(geometry: Geometry) -> tuple[jax.Array, ...]:
    """Which of this program's `BLOCK` slots hold output positions, and each slot's (image,
    row, column) (the last position's for slots past the end)."""
    slot = pl.program_id(0) * BLOCK + lax.iota(jnp.int32, BLOCK)
    valid = slot < geometry.positions
    n = jnp.minimum(slot, geometry.positions - 1)
    per_image = geometry.out_h * geometry.out_w
    image, within = lax.div(n, per_image), lax.rem(n, per_image)
    return valid, image, lax.div(within, geometry.out_w), lax.rem(within, geometry.out_w)


def _gather(ref, index: jax.Array, mask: jax.Array) -> jax.Array:
    """ref's flat elements at ``index`` where ``mask``, zeros elsewhere (Triton reads only the
    masked lanes; the interpreter clamps the others' indices, and then zeros them)."""
    return plt.load(ref.at[index], mask=mask, other=0)


def _scatter(ref, index: jax.Array, values: jax.Array, mask: jax.Array):
    """Stores ``values`` at ref's flat ``index`` where ``mask``. Other lanes point past the end:
    Triton skips them, and the interpreter's scatter drops them (instead of writing back what
    it read, which could land on a real lane's element)."""
    size = ref.shape[0]
    plt.store(ref.at[jnp.where(mask, index, size)], values.astype(ref.dtype), mask=mask)


def _kernel_rows(w_ref, geometry: Geometry, dtype) -> list[jax.Array]:
    """Kernel row i as a (k_pad, n_pad) matrix [(j, c), o] in ``dtype``, zero-padded."""
    g = geometry
    k = lax.iota(jnp.int32, g.k_pad)[:, None]
    o = lax.iota(jnp.int32, g.n_pad)[None, :]
    j, c = lax.div(k, g.cin), lax.rem(k, g.cin)
    mask = (k < g.kw * g.cin) & (o < g.cout)
    rows = []
    for i in range(g.kh):
        if g.transposed:  # w[kh-1-i, kw-1-j, o, c] of a (kh, kw, cout, cin) kernel
            index = (((g.kh - 1 - i) * g.kw + g.kw - 1 - j) * g.cout + o) * g.cin + c
        else:  # w[i, j, c, o]
            index = ((i * g.kw + j) * g.cin + c) * g.cout + o
        rows.append(_gather(w_ref, index, mask).astype(dtype))
    return rows


def _window_row(x_ref, geometry: Geometry, image, row, col, pixel, i) -> jax.Array:
    """(BLOCK, k_pad): the kw Cin input values kernel row i reads for each position's conv
    pixel (zero outside the image and in the padding columns)."""
    g = geometry
    stride = 2 if g.pool else 1
    in_row = stride * row + pixel[0] + i - g.pad_top  # per position: (BLOCK,)
    first_col = stride * col + pixel[1] - g.pad_left
    start = ((image * g.height + in_row) * g.width + first_col) * g.cin
    k = lax.iota(jnp.int32, g.k_pad)[None, :]  # the window's values are consecutive: start + k
    j = lax.div(k, g.cin)  # in column first_col + j
    mask = ((k < g.kw * g.cin) & ((in_row >= 0) & (in_row < g.height))[:, None]
            & (j >= -first_col[:, None]) & (j < (g.width - first_col)[:, None]))
    return _gather(x_ref, start[:, None] + k, mask)


def _conv_pixels(x_ref, weights, geometry: Geometry, image, row, col) -> list[jax.Array]:
    """float32 (BLOCK, n_pad) convolution outputs, one per pixel of the output positions."""
    outputs = []
    for pixel in geometry.pixels:
        acc = jnp.zeros((BLOCK, geometry.n_pad), jnp.float32)
        for i, weight in enumerate(weights):
            window = _window_row(x_ref, geometry, image, row, col, pixel, i)
            acc += jnp.dot(window, weight, preferred_element_type=jnp.float32)
        outputs.append(acc)
    return outputs


def _channel_index(geometry: Geometry, valid, position) -> tuple[jax.Array, jax.Array]:
    """Flat indices of ``position`` x channel in an (..., Cout) array, and the real lanes."""
    c = lax.iota(jnp.int32, geometry.n_pad)[None, :]
    return position[:, None] * geometry.cout + c, valid[:, None] & (c < geometry.cout)


def _forward_kernel(x_ref, w_ref, b_ref, out_ref, *, geometry: Geometry, bias_relu: bool):
    g = geometry
    valid, image, row, col = _positions(g)
    weights = _kernel_rows(w_ref, g, x_ref.dtype)
    conv = functools.reduce(jnp.maximum, _conv_pixels(x_ref, weights, g, image, row, col))
    if bias_relu:
        bias = _gather(b_ref, lax.iota(jnp.int32, g.n_pad), lax.iota(jnp.int32, g.n_pad) < g.cout)
        conv = jnp.maximum(conv + bias.astype(jnp.float32)[None, :], 0.0)
    index, mask = _channel_index(g, valid, (image * g.out_h + row) * g.out_w + col)
    _scatter(out_ref, index, conv, mask)


def _backward_kernel(x_ref, w_ref, b_ref, g_ref, partials_ref, *dy_ref, geometry: Geometry):
    g = geometry
    valid, image, row, col = _positions(g)
    weights = _kernel_rows(w_ref, g, x_ref.dtype)
    convs = _conv_pixels(x_ref, weights, g, image, row, col)
    pooled = functools.reduce(jnp.maximum, convs)
    c = lax.iota(jnp.int32, g.n_pad)
    bias = _gather(b_ref, c, c < g.cout).astype(jnp.float32)
    index, mask = _channel_index(g, valid, (image * g.out_h + row) * g.out_w + col)
    cotangent = _gather(g_ref, index, mask).astype(jnp.float32)  # zero past the end
    d = jnp.where(pooled + bias[None, :] > 0.0, cotangent, 0.0)
    ties = [(conv == pooled).astype(jnp.float32) for conv in convs]
    share = d / functools.reduce(jnp.add, ties)
    dconvs = [share * tie for tie in ties]

    start = pl.program_id(0) * g.partial_rows * g.n_pad
    k = lax.iota(jnp.int32, g.k_pad)[:, None]
    everywhere = jnp.ones((g.k_pad, g.n_pad), jnp.bool_)
    for i in range(g.kh):
        dw = jnp.zeros((g.k_pad, g.n_pad), jnp.float32)
        for pixel, dconv in zip(g.pixels, dconvs, strict=True):
            window = _window_row(x_ref, g, image, row, col, pixel, i)
            dw += jnp.dot(window.T, dconv.astype(window.dtype),
                          preferred_element_type=jnp.float32)
        _scatter(partials_ref, start + (i * g.k_pad + k) * g.n_pad + c[None, :], dw, everywhere)
    _scatter(partials_ref, start + g.kh * g.k_pad * g.n_pad + c, d.sum(axis=0), c >= 0)

    if dy_ref:  # the convolution's cotangent, (B, H, W, Cout)
        for (p, q), dconv in zip(g.pixels, dconvs, strict=True):
            pixel = (image * g.height + 2 * row + p) * g.width + 2 * col + q
            _scatter(dy_ref[0], pixel[:, None] * g.cout + c[None, :], dconv, mask)


def _pallas(kernel, out_shape, geometry: Geometry, *args):
    """``kernel`` over the geometry's programs: Triton on a GPU, the interpreter on the CPU."""
    def call(interpret: bool):
        params = {} if interpret else {"compiler_params": plt.CompilerParams(num_warps=NUM_WARPS)}
        return pl.pallas_call(kernel, out_shape=out_shape, grid=(geometry.programs,),
                              interpret=interpret, **params)(*args)

    return lax.platform_dependent(cpu=lambda: call(True), default=lambda: call(False))


def _geometry(x: jax.Array, kernel: jax.Array, pool: bool, transposed: bool = False) -> Geometry:
    b, h, w, cin = x.shape
    kh, kw, kernel_in, kernel_out = kernel.shape
    if transposed:
        kernel_in, kernel_out = kernel_out, kernel_in
    if kernel_in != cin:
        raise ValueError(f"kernel {kernel.shape} does not take {cin} input channels")
    if pool and (h % 2 or w % 2):
        raise ValueError(f"encoder_conv='pallas' pools even sizes only; got {h}x{w} (use "
                         "encoder_conv='canonical' or 'rows')")
    # "SAME" pads (size - 1) // 2 before; its input gradient's convolution pads size // 2
    pad_top, pad_left = (kh // 2, kw // 2) if transposed else ((kh - 1) // 2, (kw - 1) // 2)
    return Geometry(b, h, w, cin, kernel_out, kh, kw, pad_top, pad_left, pool, transposed)


def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, pool: bool,
          transposed: bool = False) -> jax.Array:
    """"SAME" stride-1 convolution of NHWC x (with the `Geometry.transposed` kernel if so),
    then, with ``pool``, 2x2 max-pool, bias and ReLU (``bias`` is not read without); in x's
    dtype."""
    g = _geometry(x, kernel, pool, transposed)
    out = _pallas(functools.partial(_forward_kernel, geometry=g, bias_relu=pool),
                  jax.ShapeDtypeStruct((g.positions * g.cout,), x.dtype), g,
                  x.reshape(-1), kernel.reshape(-1), bias)
    return out.reshape(g.batch, g.out_h, g.out_w, g.cout)


@jax.custom_vjp
def _conv_relu_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    return _conv(x, kernel, bias, pool=True)


def _conv_relu_pool_fwd(x, kernel, bias):
    """With symbolic zeros, so the residuals can say whether x is differentiated: ``()`` as
    their last entry if so, ``None`` if not (two pytree structures, seen by the backward)."""
    residuals = (x.value, kernel.value, bias.value, () if x.perturbed else None)
    return _conv(x.value, kernel.value, bias.value, pool=True), residuals


def _conv_relu_pool_bwd(residuals, cotangent):
    x, kernel, bias, input_grad = residuals
    if isinstance(cotangent, SymbolicZero):  # the output is not differentiated
        return None, jnp.zeros_like(kernel), jnp.zeros_like(bias)
    g = _geometry(x, kernel, pool=True)
    out_shape = [jax.ShapeDtypeStruct((g.programs * g.partial_rows * g.n_pad,), jnp.float32)]
    if input_grad is not None:
        out_shape.append(jax.ShapeDtypeStruct((x.size // g.cin * g.cout,), x.dtype))
    outputs = _pallas(functools.partial(_backward_kernel, geometry=g), out_shape, g,
                      x.reshape(-1), kernel.reshape(-1), bias, cotangent.reshape(-1))
    sums = outputs[0].reshape(g.programs, g.partial_rows, g.n_pad).sum(axis=0)
    dkernel = sums[:-1].reshape(g.kh, g.k_pad, g.n_pad)[:, :g.kw * g.cin, :g.cout]
    dkernel = dkernel.reshape(kernel.shape).astype(kernel.dtype)
    dbias = sums[-1, :g.cout].astype(bias.dtype)
    if input_grad is None:
        return None, dkernel, dbias
    dconv = outputs[1].reshape(*x.shape[:3], g.cout)
    return _conv(dconv, kernel, bias, pool=False, transposed=True), dkernel, dbias


_conv_relu_pool.defvjp(_conv_relu_pool_fwd, _conv_relu_pool_bwd, symbolic_zeros=True)


def pallas_conv_relu_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array,
                          dtype: str) -> jax.Array:
    """`ConvReluPool` as Pallas kernels (``conv="pallas"``; see the module docstring): x in
    ``dtype``, the products in ``dtype`` with float32 sums, the parameters read as they are
    (float32) and cast in the kernels. Even H and W only."""
    return _conv_relu_pool(x.astype(dtype), kernel, bias)
