"""Device-resident replay buffer that stores each observation once; a plain pytree, so it lives
inside jit/scan/vmap.

The fused step inserts one *row* of N transitions (one per world) per step, and every task's
episodes have one fixed length L with all worlds in step. So a row's next observations are the
next row's observations, except on an episode's last step. The buffer keeps L + 1 frames per
world and episode (the L observations and the last next observation) instead of 2L: half the
memory of storing obs and next obs apiece (a 400k-transition 48x48 pixel buffer is 2.8 GB a
seed instead of 5.5). Rows form a ring of R = E x L slots, E episodes: row r, step t = r mod L
of episode slot e = r // L, reads frame e (L + 1) + t and the one after it. Writing a row
writes both its frames, so a row is complete once written; the newest row's next frame may
overwrite the obs frame of the oldest, so at most R - 1 rows are valid (sampled).

Why not `brax.training.replay_buffers.UniformSamplingQueue`: it ravels every transition into one
flat array of a single dtype, so uint8 images would be promoted to float32 (4x the memory, and a
400k-step pixel buffer is already gigabytes); once full it makes room with `jnp.roll` of the
whole buffer on every insert (a full copy per environment step); it tracks its size in a Python
attribute (`check_can_insert`), so `insert`/`sample` cannot be traced end to end or vmapped over
seeds; its batch size is fixed at construction; and it stores every observation twice. Here each
field keeps its own dtype and shape, an insert is one scatter of a row, and the fill level is a
traced counter.
"""

import functools

import chex
import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Transition:
    """One environment step; fields carry a leading batch axis.

    `done` is 1.0 only for true terminations, so time-limit truncations still bootstrap.
    """

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    done: jax.Array


@flax.struct.dataclass
class ReplayBuffer:
    """A ring of R rows of N transitions over E = R / L episodes' frames; rows
    [cursor - size, cursor) (mod R) are valid, and `cursor` is the next row to write. The
    properties read the shapes of one buffer, not of a stack of them (seeds)."""

    frames: jax.Array  # (E (L + 1), N, *obs_shape)
    action: jax.Array  # (R, N, action_dim)
    reward: jax.Array  # (R, N)
    done: jax.Array  # (R, N)
    cursor: jax.Array  # () int32
    size: jax.Array  # () int32 valid rows, at most R - 1

    @property
    def rows(self) -> int:
        return self.reward.shape[0]

    @property
    def num_envs(self) -> int:
        return self.reward.shape[1]

    @property
    def episode_length(self) -> int:
        return self.rows // (self.frames.shape[0] - self.rows)  # E (L + 1) - E L = E

    @property
    def capacity(self) -> int:
        """The most transitions held (valid) at once."""
        return (self.rows - 1) * self.num_envs


def replay_rows(capacity: int, num_envs: int, episode_length: int) -> int:
    """Rows R, a multiple of the episode length, whose R - 1 valid rows of ``num_envs``
    transitions hold at least ``capacity`` transitions."""
    rows = -(-capacity // num_envs) + 1
    return -(-rows // episode_length) * episode_length


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


def init_replay(capacity: int, obs_shape: tuple[int, ...], action_dim: int, num_envs: int,
                episode_length: int) -> ReplayBuffer:
    """Empty buffer for at least ``capacity`` transitions inserted ``num_envs`` at a time from
    episodes of ``episode_length`` steps; images are stored as uint8, state vectors as float32."""
    rows = replay_rows(capacity, num_envs, episode_length)
    episodes = rows // episode_length
    obs_dtype = jnp.uint8 if is_image_shape(obs_shape) else jnp.float32
    return ReplayBuffer(
        frames=jnp.zeros((episodes * (episode_length + 1), num_envs, *obs_shape), obs_dtype),
        action=jnp.zeros((rows, num_envs, action_dim), jnp.float32),
        reward=jnp.zeros((rows, num_envs), jnp.float32),
        done=jnp.zeros((rows, num_envs), jnp.float32),
        cursor=jnp.zeros((), jnp.int32),
        size=jnp.zeros((), jnp.int32),
    )


def replay_nbytes(capacity: int, obs_shape: tuple[int, ...], action_dim: int, num_envs: int,
                  episode_length: int) -> int:
    """Bytes of an `init_replay` buffer, computed from its shapes without allocating it."""
    shapes = jax.eval_shape(functools.partial(
        init_replay, capacity, obs_shape, action_dim, num_envs, episode_length))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def _frame_index(buffer: ReplayBuffer, row: jax.Array) -> jax.Array:
    """The frame holding row ``row``'s observations (its next observations: the one after)."""
    length = buffer.episode_length
    return row // length * (length + 1) + row % length


def insert(buffer: ReplayBuffer, transitions: Transition, step: jax.Array) -> ReplayBuffer:
    """Writes one row: the N worlds' transitions of step ``step`` (0-based) of their episodes.
    Rows follow the episodes' steps; an empty buffer starts at the row of ``step`` (a run
    resumed without its buffer refills it from the middle of an episode)."""
    chex.assert_shape(transitions.reward, (buffer.num_envs,))
    chex.assert_trees_all_equal_shapes_and_dtypes(
        (transitions.obs, transitions.next_obs), (buffer.frames[0], buffer.frames[0]))
    chex.assert_shape(transitions.action, buffer.action.shape[1:])
    row = jnp.where(buffer.size == 0, step % buffer.episode_length, buffer.cursor)
    frame = _frame_index(buffer, row)
    return ReplayBuffer(
        frames=buffer.frames.at[frame].set(transitions.obs).at[frame + 1].set(
            transitions.next_obs),
        action=buffer.action.at[row].set(transitions.action),
        reward=buffer.reward.at[row].set(transitions.reward),
        done=buffer.done.at[row].set(transitions.done),
        cursor=(row + 1) % buffer.rows,
        size=jnp.minimum(buffer.size + 1, buffer.rows - 1),
    )


def sample(buffer: ReplayBuffer, key: jax.Array, batch_size: int) -> Transition:
    """Uniform draw with replacement from the valid transitions; call only once size > 0."""
    row_key, world_key = jax.random.split(key)
    offset = jax.random.randint(row_key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    row = (buffer.cursor - buffer.size + offset) % buffer.rows
    world = jax.random.randint(world_key, (batch_size,), 0, buffer.num_envs)
    frame = _frame_index(buffer, row)
    return Transition(
        obs=buffer.frames[frame, world],
        action=buffer.action[row, world],
        reward=buffer.reward[row, world],
        next_obs=buffer.frames[frame + 1, world],
        done=buffer.done[row, world],
    )
