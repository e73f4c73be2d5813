"""The Pallas conv-ReLU-pool layer (run by Pallas's interpreter on the CPU) against lax."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from holdjax.sac import networks, pallas_conv
from holdjax.sac.augment import ShiftedImages


def lax_layer(x, kernel, bias):
    return networks.lax_conv_relu_pool(x, kernel, bias, "float32")


LAYERS = {"pallas": pallas_conv.pallas_conv_relu_pool,
          "pallas_banded": pallas_conv.pallas_banded_conv_relu_pool}
layers = pytest.mark.parametrize("name", list(LAYERS))


def pallas_layer(name, dtype="float32"):
    return lambda x, kernel, bias: LAYERS[name](x, kernel, bias, dtype)


def values_and_grads(layer, x, kernel, bias, cotangent):
    y, vjp = jax.vjp(layer, x, kernel, bias)
    return (y, *vjp(cotangent))


def random_layer(seed, batch, height, width, cin, cout, size):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, height, width, cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(size, size, cin, cout)) / size, jnp.float32)
    bias = jnp.asarray(rng.normal(size=(cout,)) * 0.3, jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(batch, height // 2, width // 2, cout)), jnp.float32)
    return x, kernel, bias, cotangent


def assert_close(actual, expected, rtol=1e-5):
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * float(jnp.abs(e).max()))


# (batch, H, W, Cin, Cout, kernel): 5x16x12 spans two programs with a tail; an even kernel
# pads asymmetrically; 16 x 5 x 5 inputs a row pads K to 128 (patches, which pallas_banded
# never takes: `Geometry.patched`), 20 outputs pad N to 32.
SHAPES = [(3, 8, 8, 3, 8, 5), (5, 16, 12, 8, 8, 5), (2, 6, 10, 3, 8, 4), (2, 4, 12, 8, 20, 3),
          (1, 8, 6, 16, 4, 5)]


@pytest.mark.parametrize(("name", "shape"), [("pallas", shape) for shape in SHAPES]
                         + [("pallas_banded", shape) for shape in SHAPES[1:4]])
def test_layer_and_its_gradients_match_lax(shape, name):
    x, kernel, bias, cotangent = random_layer(sum(shape), *shape)
    expected = values_and_grads(lax_layer, x, kernel, bias, cotangent)
    actual = jax.jit(functools.partial(values_and_grads, pallas_layer(name)))(
        x, kernel, bias, cotangent)
    assert_close(actual, expected)
    assert float(jnp.abs(actual[0]).min()) == 0.0 and float(actual[0].max()) > 0  # ReLU active


@pytest.mark.parametrize("saved_routes", [True, False])
@layers
def test_gradient_splits_evenly_among_tied_pixels(name, saved_routes):
    """A constant image gives equal convolutions inside each window away from the border: the
    max's gradient goes to the tied pixels in equal shares, as lax.reduce_max's does, whether
    the forward pass saved the ties or the backward recomputes them."""
    x = jnp.ones((2, 8, 8, 3))
    _, kernel, bias, cotangent = random_layer(0, 2, 8, 8, 3, 8, 3)
    expected = values_and_grads(lax_layer, x, kernel, bias, cotangent)
    layer = functools.partial(LAYERS[name], dtype="float32",
                              tiling=pallas_conv.TILING._replace(saved_routes=saved_routes))
    assert_close(jax.jit(functools.partial(values_and_grads, layer))(x, kernel, bias, cotangent),
                 expected)


def test_saved_routes_name_the_tied_pixels_where_relu_passes():
    """The forward pass's routes: bit k for each pixel k (row-major in its 2x2 window) that
    ties for the max, 0 where the pooled value plus bias is not positive."""
    x = jnp.asarray([[1.0, 3.0, 2.0, 2.0], [3.0, 0.0, 2.0, 2.0],
                     [-1.0, -2.0, 4.0, 0.0], [-3.0, -1.0, 0.0, 5.0]])[None, :, :, None]
    kernel = jnp.ones((1, 1, 1, 1))  # the convolution is the image
    bias = jnp.asarray([-2.5])
    y, routes = pallas_conv._conv(x, (kernel,), (bias,), pallas_conv.TILING, pool=True,
                                 routes=True)
    assert routes.dtype == jnp.int8
    np.testing.assert_array_equal(routes[0, :, :, 0], [[0b0110, 0], [0, 0b1000]])
    np.testing.assert_allclose(y[0, :, :, 0], [[0.5, 0.0], [0.0, 2.5]])


@layers
def test_input_gradient_only_when_the_input_is_differentiated(name):
    """Images are not differentiated: the backward pass then runs one kernel (kernel and bias
    gradients), not three (and the input-gradient convolution)."""
    x, kernel, bias, _ = random_layer(1, 2, 8, 8, 3, 8, 5)

    def loss(x, kernel, bias):
        return jnp.sum(pallas_layer(name)(x, kernel, bias) ** 2)

    params_only = str(jax.make_jaxpr(jax.grad(loss, (1, 2)))(x, kernel, bias))
    with_input = str(jax.make_jaxpr(jax.grad(loss, (0, 1, 2)))(x, kernel, bias))
    # Each call appears twice: the CPU's interpreted and the GPU's Triton branch.
    assert params_only.count("pallas_call[") == 2 * 2  # forward, backward
    assert with_input.count("pallas_call[") == 2 * 3  # and the input-gradient convolution
    grads = jax.grad(loss, (1, 2))(x, kernel, bias)
    assert_close(grads, jax.grad(lambda *a: jnp.sum(lax_layer(*a) ** 2), (1, 2))(x, kernel, bias))


@layers
def test_vmapped_over_seeds_equals_each_seed(name):
    x, kernel, bias, cotangent = random_layer(2, 2, 8, 8, 3, 8, 5)
    kernels = jnp.stack([kernel, -kernel])
    biases = jnp.stack([bias, bias + 0.1])
    xs = jnp.stack([x, x[::-1]])
    batched = jax.jit(jax.vmap(functools.partial(values_and_grads, pallas_layer(name)),
                               in_axes=(0, 0, 0, None)))(xs, kernels, biases, cotangent)
    for seed in range(2):
        expected = values_and_grads(lax_layer, xs[seed], kernels[seed], biases[seed], cotangent)
        assert_close([leaf[seed] for leaf in batched], expected)


@pytest.mark.parametrize("saved_routes", [True, False])
@layers
def test_grouped_kernels_equal_each_kernel_alone(name, saved_routes):
    """Two kernels (and biases) on one input in one layer: the outputs stacked by group, each
    that kernel's own layer, and every gradient the two layers' (the input's summed), with
    routes saved or recomputed from both kernels."""
    x, kernel, bias, cotangent = random_layer(6, 3, 8, 8, 3, 8, 5)
    kernels, biases = (kernel, -0.5 * kernel[..., ::-1]), (bias, bias + 0.2)
    cotangents = (cotangent, cotangent[::-1])

    def grouped(x, kernels, biases):
        return LAYERS[name](x, kernels, biases, "float32",
                            tiling=pallas_conv.TILING._replace(saved_routes=saved_routes))

    y, vjp = jax.jit(lambda *a: jax.vjp(grouped, *a))(x, kernels, biases)
    dx, dkernels, dbiases = vjp(jnp.stack(cotangents))
    expected = [values_and_grads(lax_layer, x, k, b, c)
                for k, b, c in zip(kernels, biases, cotangents, strict=True)]
    assert y.shape == (2, 3, 4, 4, 8)
    for group, (y_e, _, dk_e, db_e) in enumerate(expected):
        assert_close((y[group], dkernels[group], dbiases[group]), (y_e, dk_e, db_e))
    assert_close((dx,), (expected[0][1] + expected[1][1],))


@layers
def test_bfloat16_layer_is_close_to_float32(name):
    x, kernel, bias, cotangent = random_layer(3, 2, 8, 8, 8, 8, 5)
    y = pallas_layer(name, "bfloat16")(x, kernel, bias)
    assert y.dtype == jnp.bfloat16
    expected = lax_layer(x, kernel, bias)
    np.testing.assert_allclose(y.astype(jnp.float32), expected,
                               atol=2e-2 * float(jnp.abs(expected).max()))


def test_odd_sizes_are_refused_with_the_alternatives():
    x, kernel, bias, _ = random_layer(4, 1, 7, 8, 3, 8, 5)
    with pytest.raises(ValueError, match="even sizes only; got 7x8.*'canonical' or 'rows'"):
        pallas_layer("pallas")(x, kernel, bias)


@pytest.mark.parametrize("tiling", [pallas_conv.Tiling(16, 2, 4, False, 2, True),
                                    pallas_conv.Tiling(32, 8, 2, True, 0, False),
                                    pallas_conv.Tiling(16, 2, 4, True, 2, True, False)])
@pytest.mark.parametrize(("name", "cin"), [("pallas", 3), ("pallas", 8), ("pallas_banded", 8)])
def test_every_tiling_computes_the_same_layer(name, tiling, cin):
    """Positions per block, warps, regathering, backward programs, saved routes and patches
    change how the work is split, not what it computes (saved routes are also run both ways
    by the two tests before, so one tiling each here). 5x16x12 gives 240 positions: 15
    blocks of 16, which 2 backward programs' worth take 7 at a time (3 programs, the last
    with one real block, a tail, and 6 past the end), or 8 blocks of 32, one per program (the
    last a tail). 3 input channels: the first layer's patches, 8: windows; `pallas_banded`
    never patches (`Geometry.patched`), so it takes windows at either width: one width."""
    x, kernel, bias, cotangent = random_layer(5, 5, 16, 12, cin, 8, 5)
    expected = values_and_grads(lax_layer, x, kernel, bias, cotangent)
    tiled = functools.partial(LAYERS[name], dtype="float32", tiling=tiling)
    assert_close(jax.jit(functools.partial(values_and_grads, tiled))(x, kernel, bias, cotangent),
                 expected)


def test_tiling_reads_and_writes_its_text_form():
    tiling = pallas_conv.Tiling.parse("32:4:8:0:16:0:1")
    assert tiling == pallas_conv.Tiling(32, 4, 8, False, 16, False, True)
    assert str(tiling) == "32:4:8:0:16:0:1"
    assert pallas_conv.Tiling.parse(str(pallas_conv.TILING)) == pallas_conv.TILING
    with pytest.raises(ValueError, match="seven integers"):
        pallas_conv.Tiling.parse("64:8:8:1:0:1")
    with pytest.raises(ValueError, match="power of two >= 16"):
        pallas_conv.Tiling.parse("48:8:8:1:0:1:1")
    with pytest.raises(ValueError, match="regather 0 or 1"):
        pallas_conv.Tiling.parse("64:8:8:2:0:1:1")
    with pytest.raises(ValueError, match="saved_routes 0 or 1"):
        pallas_conv.Tiling.parse("64:8:8:1:0:2:1")


def test_backward_programs_loop_over_blocks():
    """Each backward program takes blocks // backward_programs blocks (at least one), so the
    partial sums shrink with it; 0 keeps one block a program."""
    tiling = pallas_conv.Tiling(64, 8, 8, True, 264)
    assert [tiling.blocks_per_program(b) for b in (100, 264, 600, 2304)] == [1, 1, 2, 8]
    assert pallas_conv.Tiling(64, 8, 8, True, 0).blocks_per_program(2304) == 1


@pytest.mark.parametrize(("cin", "size", "banded", "patches", "expected"), [
    (3, 5, False, True, True),     # the first layer: 5 rows of 15 values in 8 x 16 columns
    (8, 5, False, True, False),    # the second: 5 rows of 40 values would need 8 x 64
    (8, 3, False, True, True),     # 3 rows of 24 values in 4 x 32
    (3, 5, True, True, False),     # banded windows take each row's two shifted kernels
    (3, 5, False, False, False)])  # Tiling.patches off
def test_patches_where_a_pixels_windows_fit_in_128_columns(cin, size, banded, patches, expected):
    x = jnp.zeros((2, 8, 8, cin))
    kernel = jnp.zeros((size, size, cin, 8))
    tiling = pallas_conv.TILING._replace(patches=patches)
    geometry = pallas_conv._geometry(x, (kernel,), tiling, pool=True, banded=banded,
                                     backward=True)
    assert geometry.patched == expected


def test_side_by_side_puts_window_w_value_e_in_column_e_n_plus_w():
    windows = [jnp.full((2, 4), 10 * w) + jnp.arange(4) for w in range(8)]
    patch = pallas_conv._side_by_side(windows)
    expected = np.array([[10 * w + e for e in range(4) for w in range(8)]] * 2)
    np.testing.assert_array_equal(patch, expected)


def shifted_images(seed, batch, height, width, channels, pad=4):
    """Random uint8 images and shifts, including the extremes -pad and pad."""
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.integers(0, 256, (batch, height, width, channels)), jnp.uint8)
    shifts = rng.integers(-pad, pad + 1, (batch, 2))
    shifts[0], shifts[-1] = (pad, -pad), (-pad, pad)
    return ShiftedImages(images, jnp.asarray(shifts, jnp.int32), pad)


@pytest.mark.parametrize(("dtype", "tiling"), [
    ("float32", None), ("bfloat16", pallas_conv.Tiling(16, 2, 4, False, 2, False, False))])
@layers
def test_shifted_images_give_the_layer_of_the_shifted_float_images(name, dtype, tiling):
    """The first layer reading uint8 pixels through each image's shift computes exactly the
    layer (values, kernel and bias gradients) of `ShiftedImages.to_float`, with two encoders'
    kernels grouped as `encode_pair` runs them; routes saved (the default) or recomputed. The
    dtype only casts the gathered pixels (`_window`) and the tiling only splits the work (the
    shifted and the converted layer alike), so each dtype and each tiling is run once, paired."""
    x = shifted_images(7, 5, 16, 12, 3)
    _, kernel, bias, cotangent = random_layer(7, 5, 16, 12, 3, 8, 5)
    kernels, biases = (kernel, -kernel[..., ::-1]), (bias, bias - 0.2)
    cotangent = jnp.stack([cotangent, cotangent[::-1]]).astype(dtype)
    tiled = {} if tiling is None else {"tiling": tiling}

    def layer(x, kernels, biases):
        return LAYERS[name](x, kernels, biases, dtype, **tiled)

    def values_and_param_grads(x):
        y, vjp = jax.vjp(lambda k, b: layer(x, k, b), kernels, biases)
        return y, vjp(cotangent)

    shifted = jax.jit(values_and_param_grads)(x)
    converted = jax.jit(values_and_param_grads)(x.to_float())
    assert shifted[0].dtype == jnp.dtype(dtype) and shifted[0].shape == (2, 5, 8, 6, 8)
    jax.tree.map(np.testing.assert_array_equal, shifted, converted)
    assert float(jnp.abs(shifted[0]).max()) > 0


def test_shifted_images_vmapped_over_seeds_equal_each_seed():
    """Seeds' own images, shifts and kernels (the batching rule adds a grid axis)."""
    xs = [shifted_images(seed, 2, 8, 8, 3) for seed in (1, 2)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *xs)
    _, kernel, bias, _ = random_layer(3, 2, 8, 8, 3, 8, 5)
    kernels, biases = jnp.stack([kernel, -kernel]), jnp.stack([bias, bias + 0.1])

    def loss(kernel, bias, x):
        return jnp.sum(jnp.sin(pallas_conv.pallas_conv_relu_pool(x, kernel, bias, "float32")))

    batched = jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1))))(kernels, biases, stacked)
    for seed in range(2):
        expected = jax.value_and_grad(loss, (0, 1))(kernels[seed], biases[seed],
                                                    xs[seed].to_float())
        assert_close([leaf[seed] for leaf in jax.tree.leaves(batched)],
                     jax.tree.leaves(expected))


def test_shifted_images_must_be_uint8():
    x = shifted_images(0, 2, 8, 8, 3)
    _, kernel, bias, _ = random_layer(0, 2, 8, 8, 3, 8, 5)
    with pytest.raises(ValueError, match="uint8 frames, got float32.*plain array"):
        pallas_conv.pallas_conv_relu_pool(x.replace(images=x.images.astype(jnp.float32)),
                                          kernel, bias, "float32")
