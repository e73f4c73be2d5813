"""Random-shift image augmentation (pad, then crop back at a random offset), per sample.

The reference pads with zeros and `tf.image.random_crop`s the whole batch at one offset; here
padding replicates the edge pixels (no black borders the policy could key on) and every sample
gets its own shift, the DrQ form of the same augmentation.
"""

import chex
import jax
import jax.numpy as jnp


def shift_images(images: jax.Array, shifts: jax.Array, pad: int) -> jax.Array:
    """Output pixel (i, j) of sample b is input (i + dy_b, j + dx_b), with edges replicated.

    `shifts` holds integer (dy, dx) per sample in [-pad, pad]; zero shifts give the input back.
    Works on any dtype, so uint8 images can be augmented before conversion to float.
    """
    chex.assert_rank(images, 4)
    chex.assert_shape(shifts, (images.shape[0], 2))
    _, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")

    def crop(padded_image: jax.Array, shift: jax.Array) -> jax.Array:
        start = (pad + shift[0], pad + shift[1], 0)
        return jax.lax.dynamic_slice(padded_image, start, (height, width, channels))

    return jax.vmap(crop)(padded, shifts.astype(jnp.int32))


def random_shift(key: jax.Array, images: jax.Array, pad: int) -> jax.Array:
    """Shift each image by an independent uniform integer offset in [-pad, pad] on both axes."""
    shifts = jax.random.randint(key, (images.shape[0], 2), -pad, pad + 1)
    return shift_images(images, shifts, pad)
