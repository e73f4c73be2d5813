"""Device-resident replay buffer that stores each observation once; a plain pytree, so it lives
inside jit/scan/vmap.

The fused step inserts one *row* of N transitions (one per world) per step, and every task's
episodes have one fixed length with all worlds in step. So a row's next observations are the
next row's observations, except on an episode's last step. The buffer keeps one frame row per
transition row (its observations; the next row's frames are its next observations) and, apart,
the last next observations of the episodes it holds: about half the memory of storing obs and
next obs apiece (a 400k-transition 48x48 pixel buffer is 2.8 GB a seed instead of 5.5). Rows
form a ring; writing a row writes its next observations into the following frame row, where
the oldest row's observations were, so at most R - 1 of the R rows are valid (sampled).

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

    `done` is 1.0 only for true terminations, so time-limit truncations still bootstrap
    (unless the run reproduces the reference's quirk, ``timeouts_as_terminal``).
    """

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    done: jax.Array


@flax.struct.dataclass
class ReplayBuffer:
    """A ring of R rows of N transitions; rows [cursor - size, cursor) (mod R) are valid, and
    `cursor` is the next row to write. The properties read the shapes of one buffer, not of a
    stack of them (seeds)."""

    frames: jax.Array  # (R, N, *obs_shape) each row's observations
    last_frames: jax.Array  # (S, N, *obs_shape) next observations of episodes' last rows
    action: jax.Array  # (R, N, action_dim)
    reward: jax.Array  # (R, N)
    done: jax.Array  # (R, N)
    last_slot: jax.Array  # (R,) int32 a last row's slot in last_frames; -1 for other rows
    cursor: jax.Array  # () int32
    size: jax.Array  # () int32 valid rows, at most R - 1
    episodes: jax.Array  # () int32 last rows written, which picks their slots in turn

    @property
    def rows(self) -> int:
        return self.reward.shape[0]

    @property
    def num_envs(self) -> int:
        return self.reward.shape[1]

    @property
    def capacity(self) -> int:
        """The most transitions held (valid) at once."""
        return held_transitions(self.rows, self.num_envs)


def held_transitions(rows: int, num_envs: int) -> int:
    """The most transitions R rows hold at once: R - 1 valid rows of ``num_envs``."""
    return (rows - 1) * num_envs


def replay_rows(capacity: int, num_envs: int) -> int:
    """Rows R whose R - 1 valid rows of ``num_envs`` transitions hold ``capacity`` transitions
    (rounded up to whole rows)."""
    return -(-capacity // num_envs) + 1


def _last_frame_slots(rows: int, episode_length: int) -> int:
    """Slots for episodes' last next observations: more than the last rows that R - 1 valid rows
    can hold, so that the slot written next never belongs to a valid row."""
    return (rows - 1) // episode_length + 2


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
    """Empty buffer for ``capacity`` transitions inserted ``num_envs`` at a time from episodes
    of ``episode_length`` steps; images are stored as uint8, state vectors as float32."""
    rows = replay_rows(capacity, num_envs)
    obs_dtype = jnp.uint8 if is_image_shape(obs_shape) else jnp.float32
    slots = _last_frame_slots(rows, episode_length)
    return ReplayBuffer(
        frames=jnp.zeros((rows, num_envs, *obs_shape), obs_dtype),
        last_frames=jnp.zeros((slots, num_envs, *obs_shape), obs_dtype),
        action=jnp.zeros((rows, num_envs, action_dim), jnp.float32),
        reward=jnp.zeros((rows, num_envs), jnp.float32),
        done=jnp.zeros((rows, num_envs), jnp.float32),
        last_slot=jnp.full((rows,), -1, jnp.int32),
        cursor=jnp.zeros((), jnp.int32),
        size=jnp.zeros((), jnp.int32),
        episodes=jnp.zeros((), jnp.int32),
    )


def replay_nbytes(capacity: int, obs_shape: tuple[int, ...], action_dim: int, num_envs: int,
                  episode_length: int) -> int:
    """Bytes of an `init_replay` buffer, computed from its shapes without allocating it."""
    shapes = jax.eval_shape(functools.partial(
        init_replay, capacity, obs_shape, action_dim, num_envs, episode_length))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def insert(buffer: ReplayBuffer, transitions: Transition, episode_end: jax.Array) -> ReplayBuffer:
    """Writes one row: the N worlds' transitions of one step; ``episode_end`` (a bool scalar)
    says the step ended their episodes, so their next observations are not the next row's."""
    chex.assert_shape(transitions.reward, (buffer.num_envs,))
    chex.assert_trees_all_equal_shapes_and_dtypes(
        (transitions.obs, transitions.next_obs), (buffer.frames[0], buffer.frames[0]))
    chex.assert_shape(transitions.action, buffer.action.shape[1:])
    row, slot = buffer.cursor, buffer.episodes % buffer.last_frames.shape[0]
    # The next observations go to the next frame row in any case (a new episode's first
    # observations overwrite them) and to the slot the next last row will take (free, see
    # `_last_frame_slots`), kept only when this row is one.
    return ReplayBuffer(
        frames=buffer.frames.at[row].set(transitions.obs).at[(row + 1) % buffer.rows].set(
            transitions.next_obs),
        last_frames=buffer.last_frames.at[slot].set(transitions.next_obs),
        action=buffer.action.at[row].set(transitions.action),
        reward=buffer.reward.at[row].set(transitions.reward),
        done=buffer.done.at[row].set(transitions.done),
        last_slot=buffer.last_slot.at[row].set(jnp.where(episode_end, slot, -1)),
        cursor=(row + 1) % buffer.rows,
        size=jnp.minimum(buffer.size + 1, buffer.rows - 1),
        episodes=buffer.episodes + episode_end.astype(jnp.int32),
    )


def sample_indices(buffer: ReplayBuffer, key: jax.Array, shape: tuple[int, ...],
                   num_worlds: int | None = None) -> tuple[jax.Array, jax.Array]:
    """(row, world) of ``shape`` uniform draws with replacement from the valid transitions,
    for `gather`. Drawing a whole iteration's batches at once keeps the random-number
    kernels out of the loop of updates (on a GPU, ~3 kernels an update; NOTES.md).
    ``num_worlds``: the worlds drawn from (default the buffer's own; all the devices' for a
    buffer split by worlds, `gather_split`)."""
    row_key, world_key = jax.random.split(key)
    offset = jax.random.randint(row_key, shape, 0, jnp.maximum(buffer.size, 1))
    row = (buffer.cursor - buffer.size + offset) % buffer.rows
    return row, jax.random.randint(world_key, shape, 0, num_worlds or buffer.num_envs)


def gather(buffer: ReplayBuffer, row: jax.Array, world: jax.Array) -> Transition:
    """The transitions at (row, world) (`sample_indices`)."""
    slot = buffer.last_slot[row]
    is_last = (slot >= 0).reshape(-1, *(1,) * (buffer.frames.ndim - 2))
    next_obs = jnp.where(is_last, buffer.last_frames[jnp.maximum(slot, 0), world],
                         buffer.frames[(row + 1) % buffer.rows, world])
    return Transition(
        obs=buffer.frames[row, world],
        action=buffer.action[row, world],
        reward=buffer.reward[row, world],
        next_obs=next_obs,
        done=buffer.done[row, world],
    )


def gather_split(buffer: ReplayBuffer, row: jax.Array, world: jax.Array, axis: str
                 ) -> Transition:
    """`gather` inside ``shard_map`` where ``buffer`` is this device's share of the worlds
    (split evenly, in order, over mesh axis ``axis``) and ``world`` indexes all of them:
    each device takes the transitions it holds, zeros for the others, and a sum over the
    devices gives every one of them the whole batch, the one an unsplit buffer gives."""
    local = world - jax.lax.axis_index(axis) * buffer.num_envs
    held = (local >= 0) & (local < buffer.num_envs)
    batch = gather(buffer, row, jnp.clip(local, 0, buffer.num_envs - 1))
    batch = jax.tree.map(
        lambda x: jnp.where(held.reshape(-1, *(1,) * (x.ndim - 1)), x, jnp.zeros_like(x)), batch)
    return jax.lax.psum(batch, axis)
