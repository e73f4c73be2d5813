"""Random-shift image augmentation (pad, then crop back at a random offset), per sample.

The reference pads with zeros and `tf.image.random_crop`s the whole batch at one offset; here
padding replicates the edge pixels (no black borders the policy could key on) and every sample
gets its own shift, the DrQ form of the same augmentation (the reference's form stays an
option, ``SACConfig.reference_augmentation``: ``fill="zeros"`` and one shift a batch). With
edges replicated, a shift is a clamp of the source pixel's coordinates, which is what lets the
Pallas encoders read the shifted images straight from the stored ones (`ShiftedImages`).
"""

import chex
import flax.struct
import jax
import jax.numpy as jnp

from holdjax.sac.replay import stored_obs_to_float

PAD_MODES = {"edge": "edge", "zeros": "constant"}


def shift_images(images: jax.Array, shifts: jax.Array, pad: int, fill: str = "edge"
                 ) -> jax.Array:
    """Output pixel (i, j) of sample b is input (i + dy_b, j + dx_b), with edges replicated
    (``fill="edge"``) or, off the image, zeros (``fill="zeros"``, the reference's padding).

    `shifts` holds integer (dy, dx) per sample in [-pad, pad]; zero shifts give the input back.
    Works on any dtype, so uint8 images can be augmented before conversion to float.
    """
    chex.assert_rank(images, 4)
    chex.assert_shape(shifts, (images.shape[0], 2))
    _, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=PAD_MODES[fill])

    def crop(padded_image: jax.Array, shift: jax.Array) -> jax.Array:
        start = (pad + shift[0], pad + shift[1], 0)
        return jax.lax.dynamic_slice(padded_image, start, (height, width, channels))

    return jax.vmap(crop)(padded, shifts.astype(jnp.int32))


def random_shifts(key: jax.Array, shape: tuple[int, ...], pad: int) -> jax.Array:
    """(*shape, 2) independent integer offsets (dy, dx) in [-pad, pad], one per image of a
    batch of ``shape``: 32 random bits modulo 2 pad + 1, uniform to within (2 pad + 1) / 2^32
    (`jax.random.randint` splits its key first: one more GPU kernel an update)."""
    bits = jax.random.bits(key, (*shape, 2), jnp.uint32)
    return (bits % (2 * pad + 1)).astype(jnp.int32) - pad


@flax.struct.dataclass
class ShiftedImages:
    """Stored uint8 images (B, H, W, C) and each one's shift (B, 2), not yet applied: the
    network input `to_float` gives. The Pallas encoders' first layer reads pixels through the
    shifts (`pallas_conv`), so no shifted, converted copy of the batch is written and read
    back (on a GPU, 5 kernels and ~50 MB per five-seed update; benchmarks/NOTES.md)."""

    images: jax.Array
    shifts: jax.Array
    pad: int = flax.struct.field(pytree_node=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.images.shape

    def to_float(self) -> jax.Array:
        """The shifted images in [0, 1], float32: `shift_images`, then `stored_obs_to_float`."""
        return stored_obs_to_float(shift_images(self.images, self.shifts, self.pad))
