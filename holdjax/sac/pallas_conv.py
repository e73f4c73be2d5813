"""Conv-ReLU-pool layers as Pallas kernels (``encoder_conv="pallas"``), written for GPUs.

The XLA formulations of an encoder layer (`networks.conv_relu_pool`, `rows_conv_relu_pool`)
cost several kernels and the padded, stacked or space-to-depth copies between them, forward and
backward, and an update runs 6 encoder passes: on an H100 the encoders are most of an update
(benchmarks/NOTES.md). Here a layer's forward pass is one kernel and its backward pass two, or
three where its input is differentiated:

- forward: each program takes a block of pooled output positions (`Tiling.block`); for each
  of the 2x2 pooled pixels and each kernel row i it multiplies the kw Cin consecutive input
  values that row reads (a (block, K) window; zeros outside the image, so no padded copy) by
  kernel row i as a (K, N) matrix on tensor cores (K = kw Cin and N = Cout padded to powers
  of two >= 16, gathered from the float32 kernel in the program). The 20 (pixel, row) pairs
  share 12 windows, each gathered once (`Geometry.taps`; ``pallas_banded``: 6, one per input row,
  times two banded kernel rows). Max over the 2x2 pixels, bias, ReLU, stored as
  (B, H/2, W/2, Cout), or, for several kernels of one shape applied to the same input in one
  call (`Geometry.groups`: two encoders' first layers), as (groups, B, H/2, W/2, Cout). Only
  the input, the parameters and the pooled output touch memory.
- backward: one kernel routes the cotangent through ReLU and the max (split evenly among
  ties, as `lax.reduce_max`'s gradient does) and writes each program's partial sums of the
  kernel's and bias's gradients (one XLA reduction sums them), from products of the windows
  and the cotangent, or, in the first layer, of patches: a pixel's five windows side by side
  (`Tiling.patches`), one product for all kernel rows; a program can loop over
  several blocks of positions (`Tiling.backward_programs`), to write fewer partial sums. The
  routes come from the forward pass, which then also stores, per pooled output, which of its
  pixels tie for the max and whether ReLU passes (`Tiling.saved_routes`: 4 bits a value, in
  an int8), or the kernel recomputes the four convolutions to find them.
  Where the layer's input is differentiated (not for the images: the custom VJP sees which
  inputs are perturbed), it also writes the convolution's cotangent (B, H, W, Cout), which the
  forward kernel (no pool, no bias; the kernel read flipped and transposed) turns into the
  input's gradient.

The first layer can read `augment.ShiftedImages` (``SACConfig.lazy_augmentation``): the stored
uint8 images, each pixel through its image's random shift (a clamped index) and scaled to
[0, 1] in the kernel, so that no shifted float copy of the batch is written and read back.

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

from holdjax.sac.augment import ShiftedImages


class Tiling(NamedTuple):
    """Output positions per block (a program's work in the forward kernels, one step of its
    loop in the backward ones), warps per program of the forward and backward kernels,
    whether a recomputing backward pass gathers its windows again for the kernel's gradient
    (`_windows`), the fewest backward programs (each loops over blocks, writing one set of
    partial sums; 0: one block each), whether the forward pass saves the max's and ReLU's
    routes for the backward (else the backward recomputes the convolutions), and whether the
    backward pass multiplies a pixel's kh windows side by side as one patch where they fit in
    128 columns (`Geometry.patched`: the first layer), else each window by itself. Chosen by
    the registers, spills and shared memory that Triton reports for an H100
    (`benchmarks/triton_resources.py`, NOTES.md): at 128 positions and 4 warps, recomputing
    without regathering (the first GPU timing) the backward kernels spill and layer 2's holds
    one program per SM; at 64 positions and 8 warps none spill and the forward kernels keep
    32 warps per SM instead of 8. Saved routes halve the backward's products and drop its
    convolution accumulators and kernel rows. The first layer's (16 x 64) x (64 x 16)
    products of single windows held 184 registers (each of 8 warps kept every pixel's whole
    cotangent); its patches' (128 x 64) x (64 x 16) products need 109, or ~80 at 16 warps,
    where looping over 4 blocks (576 backward programs for its 2,304 blocks; the second
    layer's 576 take one each) quarters its partial sums without spilling (at 288 programs
    the second layer's loop spills). Written
    ``block:forward_warps:backward_warps:regather:backward_programs:saved_routes:patches``."""

    block: int = 64
    forward_warps: int = 8
    backward_warps: int = 16
    regather: bool = True
    backward_programs: int = 576
    saved_routes: bool = True
    patches: bool = True

    @classmethod
    def parse(cls, text: str) -> "Tiling":
        """``"64:8:8:1:264:1:0"`` -> Tiling(64, 8, 8, True, 264, True, False)."""
        try:
            block, forward_warps, backward_warps, regather, programs, saved, patches = map(
                int, text.split(":"))
        except ValueError:
            raise ValueError(f"a tiling is block:forward_warps:backward_warps:regather:"
                             f"backward_programs:saved_routes:patches (seven integers, e.g. "
                             f"{TILING}); got {text!r}") from None
        if (block < 16 or block & (block - 1) or regather not in (0, 1) or programs < 0
                or saved not in (0, 1) or patches not in (0, 1)):
            raise ValueError(f"tiling {text!r}: block a power of two >= 16 (tensor-core "
                             "products), regather 0 or 1, backward_programs >= 0, "
                             "saved_routes 0 or 1, patches 0 or 1")
        return cls(block, forward_warps, backward_warps, bool(regather), programs, bool(saved),
                   bool(patches))

    def __str__(self) -> str:
        return (f"{self.block}:{self.forward_warps}:{self.backward_warps}:{int(self.regather)}:"
                f"{self.backward_programs}:{int(self.saved_routes)}:{int(self.patches)}")

    def blocks_per_program(self, blocks: int) -> int:
        """Blocks each backward program loops over, for a layer of ``blocks`` blocks."""
        return max(1, blocks // self.backward_programs) if self.backward_programs else 1


TILING = Tiling()
# pallas_banded's tiling: its windows are never patched (`Geometry.patched`), and at TILING its
# first layer's backward spills (benchmarks/NOTES.md); 8 backward warps, one block each.
BANDED_TILING = Tiling(backward_warps=8, backward_programs=0)
# Each computation's default, by its `networks.CONV_RELU_POOL` name.
DEFAULT_TILINGS = {"pallas": TILING, "pallas_banded": BANDED_TILING}
# Software-pipelining stages of the backward kernels' loop over blocks (Triton's default on
# CUDA is 3): each stage would buffer a block's gathered windows in shared memory, which at
# 64 positions a block is more than an H100 SM has in layer 2 (benchmarks/NOTES.md).
PIPELINE_STAGES = 1


class Geometry(NamedTuple):
    """A stride-1 "SAME" convolution of an NHWC input, optionally 2x2 max-pooled. With
    ``transposed`` the kernel (kh, kw, Cout, Cin) is read flipped with its channel axes
    swapped: the convolution that gives a "SAME" convolution's input gradient. With ``banded``
    (pooled only) a window spans kw + 1 columns, both pooled columns' inputs, and each kernel
    row is two banded matrices, one per pooled column (``conv="pallas_banded"``)."""

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
    banded: bool
    block: int  # output positions per block
    blocks_per_program: int
    groups: int = 1  # kernels side by side (cout in all), their outputs stored group-major
    patches: bool = False  # `Tiling.patches`: see `patched`
    # The products' (and outputs') type: the input's, or, for `shifted` input, the type its
    # pixels are converted to.
    dtype: str = "float32"
    # The input is `ShiftedImages`: uint8 pixels read through each image's (dy, dx) shift
    # (`_window`) and scaled to [0, 1] in the kernel.
    shifted: bool = False

    @property
    def group_cout(self) -> int:
        return self.cout // self.groups

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
    def span(self) -> int:  # input columns in one window
        return self.kw + 1 if self.banded else self.kw

    @property
    def k(self) -> int:  # a window's values: span Cin (the products' real K)
        return self.span * self.cin

    @property
    def k_pad(self) -> int:  # a window's values, padded for tensor cores
        return max(16, pl.next_power_of_2(self.k))

    @property
    def rows_pad(self) -> int:  # kernel rows, padded to a power of two for `_side_by_side`
        return pl.next_power_of_2(self.kh)

    @property
    def patched(self) -> bool:
        """Whether the backward pass puts each pixel's kh windows side by side, one (block,
        rows_pad k_pad) patch, for one (rows_pad k_pad, block) x (block, n_pad) product of all
        kernel rows' gradients: where that fits in 128 columns (the first layer: 5 rows of 15
        values in 8 x 16). Single windows' (k_pad, block) x (block, n_pad) products of a
        first layer leave most of 8 warps' tensor-core tiles idle and have each warp hold
        every pixel's whole cotangent."""
        return self.patches and not self.banded and self.rows_pad * self.k_pad <= 128

    @property
    def n_pad(self) -> int:
        return max(16, pl.next_power_of_2(self.cout))

    @property
    def programs(self) -> int:
        return pl.cdiv(pl.cdiv(self.positions, self.block), self.blocks_per_program)

    @property
    def pixels(self) -> tuple[tuple[int, int], ...]:  # the conv pixels of an output position
        return ((0, 0), (0, 1), (1, 0), (1, 1)) if self.pool else ((0, 0),)

    @property
    def shifts(self) -> tuple[int, ...]:  # the kernel's column offsets inside a window
        return (0, 1) if self.banded else (0,)

    @property
    def partial_rows(self) -> int:  # a program's partial gradient sums: kernel rows (k real
        # rows each, not k_pad), then bias; Cout wide (not n_pad)
        return self.kh * len(self.shifts) * self.k + 1

    def taps(self):
        """(window row t, window column, kernel row i, kernel shift, pixel) of every product:
        pixel (p, q) takes window row p + i; its window starts at column q, or, banded, at 0
        with the kernel shifted by q. Grouped by window, so each is gathered once."""
        rows = self.kh + 1 if self.pool else self.kh
        columns = (0, 1) if self.pool and not self.banded else (0,)
        for t in range(rows):
            for column in columns:
                for p, q in self.pixels:
                    if 0 <= t - p < self.kh and (self.banded or q == column):
                        yield t, column, t - p, q if self.banded else 0, (p, q)


def _positions(geometry: Geometry, block) -> tuple[jax.Array, ...]:
    """Which of ``block``'s `Geometry.block` slots hold output positions, and each slot's
    (image, row, column) (the last position's for slots past the end)."""
    slot = block * geometry.block + lax.iota(jnp.int32, geometry.block)
    valid = slot < geometry.positions
    n = jnp.minimum(slot, geometry.positions - 1)
    per_image = geometry.out_h * geometry.out_w
    image, within = lax.div(n, per_image), lax.rem(n, per_image)
    return valid, image, lax.div(within, geometry.out_w), lax.rem(within, geometry.out_w)


def _gather(ref, index: jax.Array, mask: jax.Array, eviction_policy: str | None = None
            ) -> jax.Array:
    """ref's flat elements at ``index`` where ``mask``, zeros elsewhere (Triton reads only the
    masked lanes; the interpreter clamps the others' indices, and then zeros them)."""
    return plt.load(ref.at[index], mask=mask, other=0, eviction_policy=eviction_policy)


def _scatter(ref, index: jax.Array, values: jax.Array, mask: jax.Array | None = None):
    """Stores ``values`` at ref's flat ``index`` (where ``mask``, if given). Masked-out lanes
    point past the end: Triton skips them, and the interpreter's scatter drops them (instead
    of writing back what it read, which could land on a real lane's element)."""
    if mask is None:
        plt.store(ref.at[index], values.astype(ref.dtype))
    else:
        size = ref.shape[0]
        plt.store(ref.at[jnp.where(mask, index, size)], values.astype(ref.dtype), mask=mask)


def _kernel_rows(w_refs, geometry: Geometry) -> dict[tuple[int, int], jax.Array]:
    """{(i, shift): kernel row i as a (k_pad, n_pad) matrix [(u, c), o] = w[i, u - shift, c,
    o] where 0 <= u - shift < kw, zero elsewhere}, in the products' type (`Geometry.dtype`);
    output column o reads group o // group_cout's kernel (one ref each)."""
    g = geometry
    k = lax.iota(jnp.int32, g.k_pad)[:, None]
    o = lax.iota(jnp.int32, g.n_pad)[None, :]
    u, c = lax.div(k, g.cin), lax.rem(k, g.cin)
    n = g.group_cout
    rows = {}
    for i in range(g.kh):
        for shift in g.shifts:
            j = u - shift
            mask = (k < g.k) & (j >= 0) & (j < g.kw)
            row = jnp.zeros((g.k_pad, g.n_pad), g.dtype)
            for group, w_ref in enumerate(w_refs):
                og = o - group * n  # the column in this group's kernel
                if g.transposed:  # w[kh-1-i, kw-1-j, o, c] of a (kh, kw, cout, cin) kernel
                    index = (((g.kh - 1 - i) * g.kw + g.kw - 1 - j) * n + og) * g.cin + c
                else:  # w[i, j, c, o]
                    index = ((i * g.kw + j) * g.cin + c) * n + og
                row += _gather(w_ref, index, mask & (og >= 0) & (og < n)).astype(g.dtype)
            rows[i, shift] = row
    return rows


def _image_shifts(shifts_ref, image: jax.Array) -> tuple[jax.Array, jax.Array] | None:
    """Each position's image's (dy, dx) (`Geometry.shifted`), or None without shifts."""
    if shifts_ref is None:
        return None
    every = image >= 0
    return _gather(shifts_ref, 2 * image, every), _gather(shifts_ref, 2 * image + 1, every)


def _window(x_ref, geometry: Geometry, image, row, col, t, column,
            eviction_policy: str | None = None, shifts=None) -> jax.Array:
    """(block, k_pad): the span Cin consecutive input values of window row t starting at
    window column ``column``, for each position (zero outside the image and past the span).
    Shifted images (``shifts``: `_image_shifts`) read pixel (y, x) at (y + dy, x + dx) clamped
    to the image, which is `augment.shift_images` with its replicated edges."""
    g = geometry
    stride = 2 if g.pool else 1
    in_row = stride * row + t - g.pad_top  # per position: (block,)
    first_col = stride * col + column - g.pad_left
    k = lax.iota(jnp.int32, g.k_pad)[None, :]  # the window's k-th value
    u = lax.div(k, g.cin)  # in column first_col + u
    mask = ((k < g.k) & ((in_row >= 0) & (in_row < g.height))[:, None]
            & (u >= -first_col[:, None]) & (u < (g.width - first_col)[:, None]))
    if shifts is None:  # the window's values are consecutive: start + k
        start = ((image * g.height + in_row) * g.width + first_col) * g.cin
        return _gather(x_ref, start[:, None] + k, mask, eviction_policy)
    dy, dx = shifts
    source_row = jnp.clip(in_row + dy, 0, g.height - 1)
    source_col = jnp.clip(first_col[:, None] + u + dx[:, None], 0, g.width - 1)
    index = ((image * g.height + source_row)[:, None] * g.width + source_col) * g.cin + (
        k - u * g.cin)
    pixels = _gather(x_ref, index, mask, eviction_policy)
    return (pixels.astype(jnp.float32) / 255.0).astype(g.dtype)


def _windows(x_ref, geometry: Geometry, image, row, col, eviction_policy: str | None = None,
             shifts=None):
    """`Geometry.taps` with each window gathered once: (window, kernel key, pixel). With
    `Tiling.regather` the backward pass gathers them again for the kernel's gradient with
    another ``eviction_policy``: identical loads are merged by Triton's compiler, which then
    keeps all 12 windows from the recomputation to the gradient (in shared memory: 196 KB in
    layer 2 at 128 positions a program, one program per SM)."""
    window, last = None, None
    for t, column, i, shift, pixel in geometry.taps():
        if (t, column) != last:
            window = _window(x_ref, geometry, image, row, col, t, column, eviction_policy,
                             shifts)
            last = (t, column)
        yield window, (i, shift), pixel


def _side_by_side(windows: list[jax.Array]) -> jax.Array:
    """(block, n k) from n (a power of two) (block, k) windows, window w's value e in column
    e n + w: Triton joins two tensors along a new minor axis, so each level pairs window w
    with window w + n/2."""
    while len(windows) > 1:
        half = len(windows) // 2
        windows = [jnp.stack([a, b], axis=-1).reshape(a.shape[0], -1)
                   for a, b in zip(windows[:half], windows[half:], strict=True)]
    return windows[0]


def _patches(x_ref, geometry: Geometry, image, row, col, eviction_policy: str | None,
             shifts=None) -> dict[tuple[int, int], jax.Array]:
    """{pixel: (block, rows_pad k_pad) patch}: the pixel's windows of kernel rows 0..kh-1
    `_side_by_side`, zeros for the padding rows (`Geometry.patched`)."""
    g = geometry
    zero = jnp.zeros((g.block, g.k_pad), g.dtype)
    rows = {pixel: [zero] * g.rows_pad for pixel in g.pixels}
    for window, (i, _), pixel in _windows(x_ref, g, image, row, col, eviction_policy, shifts):
        rows[pixel][i] = window
    return {pixel: _side_by_side(windows) for pixel, windows in rows.items()}


def _conv_pixels(x_ref, weights, geometry: Geometry, image, row, col, shifts=None
                 ) -> list[jax.Array]:
    """float32 (block, n_pad) convolution outputs, one per pixel of the output positions."""
    outputs = {pixel: jnp.zeros((geometry.block, geometry.n_pad), jnp.float32)
               for pixel in geometry.pixels}
    for window, key, pixel in _windows(x_ref, geometry, image, row, col, shifts=shifts):
        outputs[pixel] += jnp.dot(window, weights[key], preferred_element_type=jnp.float32)
    return [outputs[pixel] for pixel in geometry.pixels]


def _bias(b_refs, geometry: Geometry) -> jax.Array:
    """float32 (n_pad,): the groups' biases side by side, zero-padded."""
    c, n = lax.iota(jnp.int32, geometry.n_pad), geometry.group_cout
    return sum(_gather(b_ref, c - group * n, (c >= group * n) & (c < (group + 1) * n))
               for group, b_ref in enumerate(b_refs)).astype(jnp.float32)


def _channel_index(geometry: Geometry, valid, position) -> tuple[jax.Array, jax.Array]:
    """Flat indices of ``position`` x channel in an (..., Cout) array, or with groups in a
    (groups, ..., group_cout) one, and the real lanes."""
    g = geometry
    c = lax.iota(jnp.int32, g.n_pad)[None, :]
    real = valid[:, None] & (c < g.cout)
    if g.groups == 1:
        return position[:, None] * g.cout + c, real
    group, channel = lax.div(c, g.group_cout), lax.rem(c, g.group_cout)
    return (group * g.positions + position[:, None]) * g.group_cout + channel, real


def _forward_kernel(x_ref, *refs, geometry: Geometry, bias_relu: bool):
    """Inputs x (and shifts, `Geometry.shifted`), each group's kernel, each group's bias;
    outputs y and, if asked, routes."""
    g = geometry
    shifts_ref, refs = (refs[0], refs[1:]) if g.shifted else (None, refs)
    w_refs, b_refs = refs[:g.groups], refs[g.groups:2 * g.groups]
    out_ref, *routes_ref = refs[2 * g.groups:]
    valid, image, row, col = _positions(g, pl.program_id(0))
    weights = _kernel_rows(w_refs, g)
    convs = _conv_pixels(x_ref, weights, g, image, row, col, _image_shifts(shifts_ref, image))
    pooled = functools.reduce(jnp.maximum, convs)
    index, mask = _channel_index(g, valid, (image * g.out_h + row) * g.out_w + col)
    out = pooled
    if bias_relu:
        out = pooled + _bias(b_refs, g)[None, :]
        if routes_ref:  # bit k: pixel k ties for the max; 0 where ReLU stops the gradient
            ties = [jnp.where(conv == pooled, 1 << k, 0) for k, conv in enumerate(convs)]
            routes = jnp.where(out > 0.0, functools.reduce(jnp.bitwise_or, ties), 0)
            _scatter(routes_ref[0], index, routes, mask)
        out = jnp.maximum(out, 0.0)
    _scatter(out_ref, index, out, mask)


PATCH = "patch"  # the key of a patched backward pass's one accumulator


def _partial_rows(geometry: Geometry, key) -> tuple[jax.Array, jax.Array]:
    """(rows, 1) indices into a program's partial sums (`Geometry.partial_rows`) of the rows of
    the accumulator of ``key``, a (kernel row, shift) or `PATCH`, and which rows are real."""
    g = geometry
    if key == PATCH:  # row r: kernel row r % rows_pad, window value r // rows_pad
        r = lax.iota(jnp.int32, g.rows_pad * g.k_pad)[:, None]
        i, e = lax.rem(r, g.rows_pad), lax.div(r, g.rows_pad)
        return i * g.k + e, (i < g.kh) & (e < g.k)
    i, shift = key
    k = lax.iota(jnp.int32, g.k_pad)[:, None]
    return (i * len(g.shifts) + shift) * g.k + k, k < g.k


def _backward_kernel(x_ref, *refs, geometry: Geometry, regather: bool, saved_routes: bool):
    """Inputs x (and shifts, `Geometry.shifted`), then the forward's routes
    (`Tiling.saved_routes`) or the groups' kernels and biases to recompute them, then the
    cotangent; outputs the partial sums and, where the input is differentiated, the
    convolution's cotangent (all groups side by side)."""
    g = geometry
    shifts_ref, refs = (refs[0], refs[1:]) if g.shifted else (None, refs)
    if saved_routes:
        routes_ref, g_ref, partials_ref, *dy_ref = refs
    else:
        w_refs, b_refs = refs[:g.groups], refs[g.groups:2 * g.groups]
        g_ref, partials_ref, *dy_ref = refs[2 * g.groups:]
        weights = _kernel_rows(w_refs, g)
        bias = _bias(b_refs, g)[None, :]
    c = lax.iota(jnp.int32, g.n_pad)
    # the program id is read outside the loop: the interpreter substitutes it only there
    first_block = pl.program_id(0) * g.blocks_per_program

    def block_gradients(step, sums):
        """Adds one block's kernel and bias gradients to ``sums`` (and writes its positions'
        convolution cotangent)."""
        dweights, dbias = sums
        valid, image, row, col = _positions(g, first_block + step)
        shifts = _image_shifts(shifts_ref, image)
        index, mask = _channel_index(g, valid, (image * g.out_h + row) * g.out_w + col)
        if saved_routes:
            routes = _gather(routes_ref, index, mask).astype(jnp.int32)  # zero past the end
            active = routes != 0
            ties = [((routes >> k) & 1).astype(jnp.float32) for k in range(len(g.pixels))]
        else:
            convs = _conv_pixels(x_ref, weights, g, image, row, col, shifts)
            pooled = functools.reduce(jnp.maximum, convs)
            active = pooled + bias > 0.0
            ties = [(conv == pooled).astype(jnp.float32) for conv in convs]
        cotangent = _gather(g_ref, index, mask).astype(jnp.float32)  # zero past the end
        d = jnp.where(active, cotangent, 0.0)
        share = d / jnp.maximum(functools.reduce(jnp.add, ties), 1.0)  # saved: 0 ties if off
        dconvs = {pixel: share * tie for pixel, tie in zip(g.pixels, ties, strict=True)}
        dweights = dict(dweights)
        policy = "evict_first" if regather and not saved_routes else None
        if g.patched:
            products = ((patch, PATCH, pixel) for pixel, patch in
                        _patches(x_ref, g, image, row, col, policy, shifts).items())
        else:
            products = _windows(x_ref, g, image, row, col, policy, shifts)
        for values, key, pixel in products:
            dweights[key] += jnp.dot(values.T, dconvs[pixel].astype(values.dtype),
                                     preferred_element_type=jnp.float32)
        if dy_ref:  # the convolution's cotangent, (B, H, W, Cout)
            for (p, q), dconv in dconvs.items():
                pixel = (image * g.height + 2 * row + p) * g.width + 2 * col + q
                _scatter(dy_ref[0], pixel[:, None] * g.cout + c[None, :], dconv, mask)
        return dweights, dbias + d.sum(axis=0)

    if g.patched:
        accumulators = {PATCH: jnp.zeros((g.rows_pad * g.k_pad, g.n_pad), jnp.float32)}
    else:
        accumulators = {(i, shift): jnp.zeros((g.k_pad, g.n_pad), jnp.float32)
                        for i in range(g.kh) for shift in g.shifts}
    zeros = (accumulators, jnp.zeros((g.n_pad,), jnp.float32))
    if g.blocks_per_program == 1:
        dweights, dbias = block_gradients(0, zeros)
    else:
        dweights, dbias = lax.fori_loop(0, g.blocks_per_program, block_gradients, zeros)
    # only the real entries (span Cin rows, Cout columns): the partial sums are written and
    # read back whole, the bytes these kernels move most of
    start = pl.program_id(0) * g.partial_rows * g.cout
    for key, dw in dweights.items():
        rows, real = _partial_rows(g, key)
        _scatter(partials_ref, start + rows * g.cout + c[None, :], dw,
                 real & (c[None, :] < g.cout))
    _scatter(partials_ref, start + (g.partial_rows - 1) * g.cout + c, dbias, c < g.cout)


def _pallas(kernel, out_shape, geometry: Geometry, warps: int, *args):
    """``kernel`` over the geometry's programs: Triton on a GPU with ``warps`` warps a program,
    the interpreter on the CPU."""
    def call(interpret: bool):
        params = {} if interpret else {"compiler_params": plt.CompilerParams(
            num_warps=warps, num_stages=PIPELINE_STAGES)}
        return pl.pallas_call(kernel, out_shape=out_shape, grid=(geometry.programs,),
                              interpret=interpret, **params)(*args)

    return lax.platform_dependent(cpu=lambda: call(True), default=lambda: call(False))


Input = jax.Array | ShiftedImages


def _input_operands(x: Input) -> tuple[jax.Array, ...]:
    """The kernels' flat input operands: x's values, or shifted images' pixels and shifts."""
    if isinstance(x, ShiftedImages):
        return x.images.reshape(-1), x.shifts.astype(jnp.int32).reshape(-1)
    return (x.reshape(-1),)


def _geometry(x: Input, kernels: tuple[jax.Array, ...], tiling: Tiling, pool: bool,
              transposed: bool = False, banded: bool = False, backward: bool = False,
              dtype: str | None = None) -> Geometry:
    """The geometry of x's layer; ``dtype``: the products' type for `ShiftedImages` (an
    array's own otherwise)."""
    b, h, w, cin = x.shape
    if len({kernel.shape for kernel in kernels}) != 1:
        raise ValueError(f"grouped kernels must have one shape; got "
                         f"{[kernel.shape for kernel in kernels]}")
    kh, kw, kernel_in, kernel_out = kernels[0].shape
    if transposed:
        if len(kernels) != 1:
            raise ValueError("the input-gradient convolution takes one kernel")
        kernel_in, kernel_out = kernel_out, kernel_in
    if kernel_in != cin:
        raise ValueError(f"kernel {kernels[0].shape} does not take {cin} input channels")
    if pool and (h % 2 or w % 2):
        raise ValueError(f"the pallas encoder computations pool even sizes only; got {h}x{w} (use "
                         "encoder_conv='canonical' or 'rows')")
    # "SAME" pads (size - 1) // 2 before; its input gradient's convolution pads size // 2
    pad_top, pad_left = (kh // 2, kw // 2) if transposed else ((kh - 1) // 2, (kw - 1) // 2)
    shifted = isinstance(x, ShiftedImages)
    if shifted and x.images.dtype != jnp.uint8:
        raise ValueError(f"ShiftedImages hold stored uint8 frames, got {x.images.dtype}: "
                         "pass float images as a plain array instead")
    if shifted and dtype is None:
        raise ValueError("ShiftedImages need the products' dtype (pallas_conv_relu_pool's)")
    g = Geometry(b, h, w, cin, kernel_out * len(kernels), kh, kw, pad_top, pad_left, pool,
                 transposed, banded and pool, tiling.block, blocks_per_program=1,
                 groups=len(kernels), patches=tiling.patches,
                 dtype=str(jnp.dtype(dtype if shifted else x.dtype)), shifted=shifted)
    if backward:
        blocks = pl.cdiv(g.positions, g.block)
        g = g._replace(blocks_per_program=tiling.blocks_per_program(blocks))
    return g


def _conv(x: Input, kernels: tuple[jax.Array, ...], biases: tuple[jax.Array, ...],
          tiling: Tiling, pool: bool, transposed: bool = False, banded: bool = False,
          routes: bool = False, dtype: str | None = None):
    """"SAME" stride-1 convolution of NHWC x (with the `Geometry.transposed` kernel if so),
    then, with ``pool``, 2x2 max-pool, bias and ReLU (``biases`` are not read without); in x's
    dtype (``dtype`` for `ShiftedImages`); (B, H', W', Cout), or with several kernels (groups)
    (groups, B, H', W', Cout) (each group's kernel and bias). With ``routes`` (pooled only),
    also the backward pass's routes, laid out as the output: an int8 per output value whose
    bit k says that pixel k (`Geometry.pixels`) ties for the max, 0 where ReLU is off."""
    g = _geometry(x, kernels, tiling, pool, transposed, banded, dtype=dtype)
    out_shape = [jax.ShapeDtypeStruct((g.positions * g.cout,), g.dtype)]
    if routes:
        out_shape.append(jax.ShapeDtypeStruct((g.positions * g.cout,), jnp.int8))
    outputs = _pallas(functools.partial(_forward_kernel, geometry=g, bias_relu=pool),
                      out_shape, g, tiling.forward_warps, *_input_operands(x),
                      *(kernel.reshape(-1) for kernel in kernels), *biases)
    shape = (g.batch, g.out_h, g.out_w, g.cout) if g.groups == 1 else (
        g.groups, g.batch, g.out_h, g.out_w, g.group_cout)
    shaped = [out.reshape(shape) for out in outputs]
    return shaped if routes else shaped[0]


def _conv_relu_pool_bwd(banded: bool, tiling: Tiling, dtype: str, x, kernels, biases, routes,
                        input_grad: bool, cotangent):
    """Kernels', biases' and (with ``input_grad``) input gradients of the pooled layer, from
    the forward pass's ``routes`` (None: recomputed from the kernels and biases)."""
    g = _geometry(x, kernels, tiling, pool=True, banded=banded, backward=True, dtype=dtype)
    out_shape = [jax.ShapeDtypeStruct((g.programs * g.partial_rows * g.cout,), jnp.float32)]
    if input_grad:
        out_shape.append(jax.ShapeDtypeStruct((x.size // g.cin * g.cout,), x.dtype))
    saved_routes = routes is not None
    route_inputs = (routes.reshape(-1),) if saved_routes else (
        *(kernel.reshape(-1) for kernel in kernels), *biases)
    outputs = _pallas(functools.partial(_backward_kernel, geometry=g, regather=tiling.regather,
                                        saved_routes=saved_routes),
                      out_shape, g, tiling.backward_warps, *_input_operands(x), *route_inputs,
                      cotangent.reshape(-1))
    sums = outputs[0].reshape(g.programs, g.partial_rows, g.cout).sum(axis=0)
    rows = sums[:-1].reshape(g.kh, len(g.shifts), g.k, g.cout)
    dkernel = sum(rows[:, shift, shift * g.cin:(shift + g.kw) * g.cin] for shift in g.shifts)
    dkernel = dkernel.reshape(g.kh, g.kw, g.cin, g.cout)
    dkernels = tuple(d.astype(kernel.dtype) for d, kernel in
                     zip(jnp.split(dkernel, g.groups, axis=-1), kernels, strict=True))
    dbiases = tuple(d.astype(bias.dtype) for d, bias in
                    zip(jnp.split(sums[-1], g.groups), biases, strict=True))
    if not input_grad:
        return None, dkernels, dbiases
    dconv = outputs[1].reshape(*x.shape[:3], g.cout)
    kernel = jnp.concatenate(kernels, axis=-1) if g.groups > 1 else kernels[0]
    dx = _conv(dconv, (kernel,), biases[:1], tiling, pool=False, transposed=True)
    return dx, dkernels, dbiases


@functools.cache
def _conv_relu_pool(banded: bool, tiling: Tiling, dtype: str):
    """The pooled layer (a tuple of kernels and one of biases: `_conv`'s groups) with its
    custom VJP, defined with symbolic zeros so the forward pass can tell the backward whether
    x is differentiated (the residuals' last entry: ``()`` if so, ``None`` if not, two pytree
    structures). x is an array in ``dtype`` or `ShiftedImages` (never differentiated)."""

    @jax.custom_vjp
    def layer(x: Input, kernels: tuple, biases: tuple) -> jax.Array:
        return _conv(x, kernels, biases, tiling, pool=True, banded=banded, dtype=dtype)

    def forward(x, kernels, biases):
        perturbed = any(leaf.perturbed for leaf in jax.tree.leaves(x))
        x = jax.tree.map(lambda leaf: leaf.value, x)
        kernels = tuple(kernel.value for kernel in kernels)
        biases = tuple(bias.value for bias in biases)
        if tiling.saved_routes:
            y, routes = _conv(x, kernels, biases, tiling, pool=True, banded=banded,
                              routes=True, dtype=dtype)
        else:
            y, routes = layer(x, kernels, biases), None
        residuals = (x, kernels, biases, routes, () if perturbed else None)
        return y, residuals

    def backward(residuals, cotangent):
        x, kernels, biases, routes, input_grad = residuals
        if isinstance(cotangent, SymbolicZero):  # the output is not differentiated
            return None, tuple(map(jnp.zeros_like, kernels)), tuple(map(jnp.zeros_like, biases))
        return _conv_relu_pool_bwd(banded, tiling, dtype, x, kernels, biases, routes,
                                   input_grad is not None, cotangent)

    layer.defvjp(forward, backward, symbolic_zeros=True)
    return layer


Kernels = jax.Array | tuple[jax.Array, ...]


def _apply_layer(banded: bool, x: Input, kernel: Kernels, bias: Kernels, dtype: str,
                 tiling: Tiling) -> jax.Array:
    """The custom-VJP layer, which takes tuples, on one kernel and bias or on tuples."""
    grouped = isinstance(kernel, tuple | list)
    kernels, biases = (tuple(kernel), tuple(bias)) if grouped else ((kernel,), (bias,))
    dtype = str(jnp.dtype(dtype))
    if not isinstance(x, ShiftedImages):
        x = x.astype(dtype)
    return _conv_relu_pool(banded, tiling, dtype)(x, kernels, biases)


def pallas_conv_relu_pool(x: Input, kernel: Kernels, bias: Kernels, dtype: str,
                          tiling: Tiling = TILING) -> jax.Array:
    """`ConvReluPool` as Pallas kernels (``conv="pallas"``; see the module docstring): x in
    ``dtype``, the products in ``dtype`` with float32 sums, the parameters read as they are
    (float32) and cast in the kernels. Even H and W only. A tuple of kernels (and one of
    biases) of one shape applies each to x in the same kernels, as one layer of their outputs
    side by side, returned stacked, (groups, B, H/2, W/2, Cout): two encoders' first layers
    on the same images (`networks.encode_pair`), with no copy to split them. x may be
    `ShiftedImages`: the layer of ``x.to_float()``, read from the stored images."""
    return _apply_layer(False, x, kernel, bias, dtype, tiling)


def pallas_banded_conv_relu_pool(x: Input, kernel: Kernels, bias: Kernels, dtype: str,
                                 tiling: Tiling = BANDED_TILING) -> jax.Array:
    """`pallas_conv_relu_pool` with `Geometry.banded` windows (``conv="pallas_banded"``): each
    of a pooled position's kh + 1 input rows gathered once for both its columns, as (kw + 1)
    Cin values, times two banded kernel rows (layer 2: 6 gathers of 64 lanes instead of 12,
    at twice the products' width in layer 1)."""
    return _apply_layer(True, x, kernel, bias, dtype, tiling)
