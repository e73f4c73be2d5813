"""Device-resident circular replay buffer, a plain pytree so it lives inside jit/scan/vmap.

Why not `brax.training.replay_buffers.UniformSamplingQueue`: it ravels every transition into one
flat array of a single dtype, so uint8 images would be promoted to float32 (4x the memory, and a
400k-step pixel buffer is already gigabytes); once full it makes room with `jnp.roll` of the
whole buffer on every insert (a full copy per environment step); it tracks its size in a Python
attribute (`check_can_insert`), so `insert`/`sample` cannot be traced end to end or vmapped over
seeds; and its batch size is fixed at construction. Here each field keeps its own dtype and
shape, inserts are one scatter of N rows, and the fill level is a traced counter.
"""

import functools

import chex
import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Transition:
    """One environment step; fields carry a leading batch (or capacity) axis.

    `done` is 1.0 only for true terminations, so time-limit truncations still bootstrap.
    """

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    done: jax.Array


@flax.struct.dataclass
class ReplayBuffer:
    """Fixed-capacity ring of transitions: slots [0, size) are filled; `cursor` is the next slot."""

    data: Transition
    cursor: jax.Array
    size: jax.Array

    @property
    def capacity(self) -> int:
        return self.data.reward.shape[0]


def is_image_shape(obs_shape: tuple[int, ...]) -> bool:
    """Observations of rank 3 (H, W, C) are images; rank 1 are state vectors."""
    return len(obs_shape) == 3


def pixels_to_uint8(images: jax.Array) -> jax.Array:
    """Quantise float images in [0, 1] for storage (a quarter of float32's memory)."""
    return jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def stored_obs_to_float(obs: jax.Array) -> jax.Array:
    """Back to the networks' float input: uint8 images to [0, 1], state vectors unchanged."""
    if obs.dtype == jnp.uint8:
        return obs.astype(jnp.float32) / 255.0
    return obs.astype(jnp.float32)


def init_replay(capacity: int, obs_shape: tuple[int, ...], action_dim: int) -> ReplayBuffer:
    """Empty buffer; image observations are stored as uint8, state vectors as float32."""
    obs_dtype = jnp.uint8 if is_image_shape(obs_shape) else jnp.float32
    obs = jnp.zeros((capacity, *obs_shape), obs_dtype)
    data = Transition(
        obs=obs,
        action=jnp.zeros((capacity, action_dim), jnp.float32),
        reward=jnp.zeros((capacity,), jnp.float32),
        next_obs=obs,
        done=jnp.zeros((capacity,), jnp.float32),
    )
    return ReplayBuffer(data=data, cursor=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32))


def replay_nbytes(capacity: int, obs_shape: tuple[int, ...], action_dim: int) -> int:
    """Bytes of an `init_replay` buffer, computed from its shapes without allocating it."""
    shapes = jax.eval_shape(functools.partial(init_replay, capacity, obs_shape, action_dim))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def insert(buffer: ReplayBuffer, transitions: Transition) -> ReplayBuffer:
    """Write N transitions at the cursor, wrapping around and overwriting the oldest."""
    num_new = transitions.reward.shape[0]
    if num_new > buffer.capacity:
        raise ValueError(f"inserting {num_new} transitions into a buffer of {buffer.capacity}")
    chex.assert_trees_all_equal_structs(buffer.data, transitions)
    chex.assert_trees_all_equal_dtypes(buffer.data, transitions)
    chex.assert_trees_all_equal_shapes(
        jax.tree.map(lambda x: x[0], buffer.data), jax.tree.map(lambda x: x[0], transitions)
    )
    slots = (buffer.cursor + jnp.arange(num_new)) % buffer.capacity
    data = jax.tree.map(lambda stored, new: stored.at[slots].set(new), buffer.data, transitions)
    return ReplayBuffer(
        data=data,
        cursor=(buffer.cursor + num_new) % buffer.capacity,
        size=jnp.minimum(buffer.size + num_new, buffer.capacity),
    )


def sample(buffer: ReplayBuffer, key: jax.Array, batch_size: int) -> Transition:
    """Uniform draw with replacement from the filled slots; call only once size > 0."""
    slots = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree.map(lambda stored: stored[slots], buffer.data)
