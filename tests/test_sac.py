"""SAC core: shapes, losses against independent numpy formulas, replay, augmentation, learning."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from holdjax.sac import losses, networks, replay
from holdjax.sac.augment import ShiftedImages, random_shifts, shift_images
from holdjax.sac.update import (
    SACConfig,
    batch_shifts,
    init_sac,
    lazy_augmentation,
    networks_for,
    sac_update,
    sampled_updates,
    target_entropy,
)

OBS_DIM, ACTION_DIM, BATCH = 3, 2, 5
SMALL = SACConfig(hidden_sizes=(8, 8))


# numpy reference formulas, written independently of the jax code ---------------------------


def np_mlp(layers: dict, x: np.ndarray) -> np.ndarray:
    num_hidden = len(layers) - 1
    for i in range(num_hidden):
        layer = layers[f"hidden_{i}"]
        x = np.maximum(x @ np.asarray(layer["kernel"], np.float64) + layer["bias"], 0.0)
    return x @ np.asarray(layers["output"]["kernel"], np.float64) + layers["output"]["bias"]


def np_critic(params: dict, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([obs, action], axis=-1)
    return np_mlp(params["params"]["q1"], x)[:, 0], np_mlp(params["params"]["q2"], x)[:, 0]


def np_actor(params: dict, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = np_mlp(params["params"]["torso"], obs)
    return out[:, :ACTION_DIM], np.clip(out[:, ACTION_DIM:], -20.0, 2.0)


def np_tanh_gaussian(mean, log_std, noise):
    """Density of a = tanh(u), u ~ N(mean, std): N(u) / prod(1 - a^2)."""
    std = np.exp(log_std)
    u = mean + std * noise
    action = np.tanh(u)
    normal_log_pdf = -0.5 * ((u - mean) / std) ** 2 - np.log(std * np.sqrt(2.0 * np.pi))
    return action, np.sum(normal_log_pdf - np.log(1.0 - action**2), axis=-1)


# fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_problem():
    """Initialised state-vector SAC with a target critic that differs from the critic."""
    state = init_sac(jax.random.key(0), (OBS_DIM,), ACTION_DIM, SMALL)
    perturbation_key, batch_key = jax.random.split(jax.random.key(1))
    leaves, treedef = jax.tree.flatten(state.critic_params)
    keys = jax.random.split(perturbation_key, len(leaves))
    perturbed = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    target = jax.tree.unflatten(treedef, perturbed)
    k = jax.random.split(batch_key, 5)
    batch = replay.Transition(
        obs=jax.random.normal(k[0], (BATCH, OBS_DIM)),
        action=jax.random.uniform(k[1], (BATCH, ACTION_DIM), minval=-0.9, maxval=0.9),
        reward=jax.random.normal(k[2], (BATCH,)),
        next_obs=jax.random.normal(k[3], (BATCH, OBS_DIM)),
        done=jnp.array([0.0, 1.0, 0.0, 0.0, 1.0]),
    )
    noise = jax.random.normal(k[4], (BATCH, ACTION_DIM))
    nets = networks_for(SMALL, ACTION_DIM, from_pixels=False)
    return state.replace(target_critic_params=target), batch, noise, nets


def to_np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


# networks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [3, 6])
def test_encoder_output_has_reference_width(channels):
    images = jnp.zeros((2, 48, 48, channels))
    encoder = networks.Encoder()
    features = encoder.apply(encoder.init(jax.random.key(0), images), images)
    assert features.shape == (2, 1152)


@pytest.mark.parametrize("batched", [False, True])
def test_critic_heads_keep_their_own_parameters(batched):
    """The two Q heads keep separate parameters (q1, q2) and give what each gives alone,
    run one after the other or as one batched MLP."""
    config = dataclasses.replace(SMALL, batched_q_heads=batched)
    nets = networks_for(config, ACTION_DIM, from_pixels=False)
    assert nets.critic.batched_heads == batched
    obs = jax.random.normal(jax.random.key(1), (4, OBS_DIM))
    action = jax.random.uniform(jax.random.key(2), (4, ACTION_DIM), minval=-1, maxval=1)
    params = nets.critic.init(jax.random.key(0), obs, action)
    assert set(params["params"]) == {"q1", "q2"}
    q_values = nets.critic.apply(params, obs, action)
    head = networks.MLP(SMALL.hidden_sizes, 1)
    for k, name in enumerate(("q1", "q2")):
        alone = head.apply({"params": params["params"][name]},
                           jnp.concatenate([obs, action], axis=-1))[:, 0]
        np.testing.assert_allclose(q_values[k], alone, rtol=1e-6, atol=1e-6)
    assert not np.allclose(q_values[0], q_values[1])


def test_batched_q_heads_default_by_backend(monkeypatch):
    """Batched heads save kernels on an accelerator and cost time on XLA:CPU."""
    assert not SACConfig().resolved_batched_q_heads  # this CPU
    assert SACConfig(batched_q_heads=True).resolved_batched_q_heads
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert SACConfig().resolved_batched_q_heads
    assert not SACConfig(batched_q_heads=False).resolved_batched_q_heads


def test_actor_log_std_is_clipped():
    """The torso's log-std half is clipped to exactly [-20, 2]: a hugely negative output bias
    gives -20, a hugely positive one 2, a moderate one the torso's own value; the mean half is
    never clipped."""
    nets = networks_for(SMALL, ACTION_DIM, from_pixels=False)
    obs = jax.random.normal(jax.random.key(1), (4, OBS_DIM))
    params = nets.actor.init(jax.random.key(0), obs)

    def with_output_bias(mean_bias, log_std_bias):
        bias = jnp.asarray([mean_bias] * ACTION_DIM + list(log_std_bias), jnp.float32)
        torso = params["params"]["torso"]
        return {"params": {"torso": {**torso, "output": {**torso["output"], "bias": bias}}}}

    def raw_torso(actor_params):
        return networks.MLP(SMALL.hidden_sizes, 2 * ACTION_DIM).apply(
            {"params": actor_params["params"]["torso"]}, obs)

    clipped = with_output_bias(100.0, [-1e4, 1e4])  # dim 0 far below -20, dim 1 far above 2
    mean, log_std = nets.actor.apply(clipped, obs)
    np.testing.assert_array_equal(log_std[:, 0], networks.LOG_STD_MIN)
    np.testing.assert_array_equal(log_std[:, 1], networks.LOG_STD_MAX)
    assert networks.LOG_STD_MIN == -20.0 and networks.LOG_STD_MAX == 2.0
    np.testing.assert_array_equal(mean, raw_torso(clipped)[:, :ACTION_DIM])
    assert float(mean.min()) > 90.0  # the mean's huge bias passes through unclipped

    inside = with_output_bias(0.0, [-10.0, 0.5])
    mean, log_std = nets.actor.apply(inside, obs)
    raw = raw_torso(inside)
    assert float(raw[:, ACTION_DIM:].min()) > -20.0 and float(raw[:, ACTION_DIM:].max()) < 2.0
    np.testing.assert_array_equal(log_std, raw[:, ACTION_DIM:])
    np.testing.assert_array_equal(mean, raw[:, :ACTION_DIM])


def test_tanh_gaussian_log_prob_matches_numpy():
    k = jax.random.split(jax.random.key(3), 3)
    mean = jax.random.normal(k[0], (6, 3))
    log_std = jax.random.uniform(k[1], (6, 3), minval=-1.5, maxval=0.3)
    noise = jax.random.normal(k[2], (6, 3))
    action, log_prob = networks.sample_tanh_gaussian(mean, log_std, noise)
    np_action, np_log_prob = np_tanh_gaussian(*to_np((mean, log_std, noise)))
    np.testing.assert_allclose(action, np_action, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_prob, np_log_prob, rtol=1e-4, atol=1e-4)


def test_tanh_gaussian_log_prob_finite_when_saturated():
    mean = jnp.array([[30.0, -30.0]])
    _, log_prob = networks.sample_tanh_gaussian(mean, jnp.zeros_like(mean), jnp.zeros_like(mean))
    assert np.isfinite(log_prob).all()


def test_sample_action_is_the_tanh_gaussian_of_the_actor_with_the_keys_noise(state_problem):
    """sample_action draws standard-normal noise of the mean's shape from its key and squashes
    the actor's Gaussian with it: exactly sample_tanh_gaussian of the actor's outputs."""
    state, batch, _, nets = state_problem
    key = jax.random.key(11)
    action, log_prob = networks.sample_action(nets.actor, state.actor_params, batch.obs, key)
    mean, log_std = nets.actor.apply(state.actor_params, batch.obs)
    expected = networks.sample_tanh_gaussian(mean, log_std, jax.random.normal(key, mean.shape))
    assert action.shape == (BATCH, ACTION_DIM) and log_prob.shape == (BATCH,)
    np.testing.assert_array_equal(action, expected[0])
    np.testing.assert_array_equal(log_prob, expected[1])
    assert float(jnp.abs(action).max()) < 1.0
    other, _ = networks.sample_action(nets.actor, state.actor_params, batch.obs,
                                      jax.random.key(12))
    assert not np.allclose(other, action)  # the key's noise, not the mean
    np.testing.assert_array_equal(
        networks.deterministic_action(nets.actor, state.actor_params, batch.obs), jnp.tanh(mean))


# losses -----------------------------------------------------------------------------------


def test_critic_loss_matches_numpy(state_problem):
    state, batch, noise, nets = state_problem
    log_alpha, discount = jnp.float32(0.3), 0.9
    loss, _ = losses.critic_loss(
        state.critic_params,
        state.target_critic_params,
        state.actor_params,
        log_alpha,
        batch,
        noise,
        nets,
        discount,
    )
    b = to_np(batch)
    next_mean, next_log_std = np_actor(to_np(state.actor_params), b.next_obs)
    next_action, next_log_prob = np_tanh_gaussian(next_mean, next_log_std, np.asarray(noise))
    target_q1, target_q2 = np_critic(to_np(state.target_critic_params), b.next_obs, next_action)
    soft_value = np.minimum(target_q1, target_q2) - np.exp(0.3) * next_log_prob
    y = b.reward + discount * (1.0 - b.done) * soft_value
    q1, q2 = np_critic(to_np(state.critic_params), b.obs, b.action)
    expected = 0.5 * np.mean((q1 - y) ** 2) + 0.5 * np.mean((q2 - y) ** 2)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_actor_and_alpha_losses_match_numpy(state_problem):
    state, batch, noise, nets = state_problem
    log_alpha = jnp.float32(-0.7)
    loss, log_prob = losses.actor_loss(
        state.actor_params, state.critic_params, log_alpha, batch.obs, noise, nets
    )
    obs = np.asarray(batch.obs, np.float64)
    mean, log_std = np_actor(to_np(state.actor_params), obs)
    action, np_log_prob = np_tanh_gaussian(mean, log_std, np.asarray(noise))
    q1, q2 = np_critic(to_np(state.critic_params), obs, action)
    expected = np.mean(np.exp(-0.7) * np_log_prob - np.minimum(q1, q2))
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    np.testing.assert_allclose(log_prob, np_log_prob, rtol=1e-4, atol=1e-4)

    temperature_loss = losses.alpha_loss(log_alpha, log_prob, -2.0)
    np.testing.assert_allclose(temperature_loss, -np.mean(-0.7 * (np_log_prob - 2.0)), rtol=1e-4)


# replay -----------------------------------------------------------------------------------


def episode_rows(episodes: int, length: int, worlds: int):
    """(episode_end, transitions) rows of episodes in which world w's observation at step t
    of episode e is the number 1000 e + 10 t + w (the last next observation: t = length);
    action, reward and done encode the same number, so every sampled field can be checked
    against obs."""
    for e in range(episodes):
        for t in range(length):
            obs = 1000.0 * e + 10.0 * t + jnp.arange(worlds, dtype=jnp.float32)
            yield t == length - 1, replay.Transition(
                obs=obs[:, None], action=jnp.stack([obs, -obs], axis=1), reward=obs,
                next_obs=obs[:, None] + 10.0, done=obs)


def filled(buffer, rows):
    insert = jax.jit(replay.insert)
    for episode_end, transitions in rows:
        buffer = insert(buffer, transitions, jnp.asarray(episode_end))
    return buffer


def assert_consistent(batch: replay.Transition):
    """Each sampled transition's fields come from one and the same step and world."""
    obs = np.asarray(batch.obs[:, 0])
    np.testing.assert_array_equal(batch.next_obs[:, 0], obs + 10.0)
    np.testing.assert_array_equal(batch.action, np.stack([obs, -obs], axis=1))
    np.testing.assert_array_equal(batch.reward, obs)
    np.testing.assert_array_equal(batch.done, obs)


@functools.partial(jax.jit, static_argnums=2)
def draw(buffer: replay.ReplayBuffer, key: jax.Array, batch_size: int) -> replay.Transition:
    """One batch as the trainer draws it: indices (`sample_indices`), then `gather`."""
    return replay.gather(buffer, *replay.sample_indices(buffer, key, (batch_size,)))


def test_replay_keeps_one_frame_per_step_and_the_episodes_last_apart():
    """Capacity 20 transitions of 2 worlds and 3-step episodes: 11 rows of which 10 are
    valid, one frame row per row, and 5 slots for episodes' last next observations."""
    buffer = replay.init_replay(20, (1,), 2, num_envs=2, episode_length=3)
    assert buffer.rows == 11 and buffer.capacity == 20
    assert buffer.frames.shape == (11, 2, 1) and buffer.last_frames.shape == (5, 2, 1)
    buffer = filled(buffer, episode_rows(2, 3, 2))
    assert int(buffer.size) == 6 and int(buffer.cursor) == 6 and int(buffer.episodes) == 2
    np.testing.assert_array_equal(buffer.frames[:6, 1, 0], [1, 11, 21, 1001, 1011, 1021])
    np.testing.assert_array_equal(buffer.last_frames[:2, 1, 0], [31, 1031])
    np.testing.assert_array_equal(buffer.last_slot[:6], [-1, -1, 0, -1, -1, 1])
    batch = draw(buffer, jax.random.key(0), 400)
    assert_consistent(batch)
    assert set(np.asarray(batch.reward).tolist()) == {
        1000.0 * e + 10.0 * t + w for e in range(2) for t in range(3) for w in range(2)}


def test_replay_wraps_around_and_samples_only_valid_rows():
    """After 15 rows into 11, the 10 newest are sampled: not the oldest row, whose frame
    row the newest row's next observations overwrote; the slots of episodes' last frames
    wrap around too."""
    buffer = filled(replay.init_replay(20, (1,), 2, num_envs=2, episode_length=3),
                    episode_rows(5, 3, 2))
    assert int(buffer.size) == 10 and int(buffer.cursor) == 4
    batch = draw(buffer, jax.random.key(1), 1000)
    assert_consistent(batch)
    rows = {(int(r) // 1000, int(r) % 1000 // 10) for r in np.asarray(batch.reward)}
    assert rows == {(e, t) for e in range(1, 5) for t in range(3)} - {(1, 0), (1, 1)}
    with pytest.raises(AssertionError):
        replay.insert(buffer, next(episode_rows(1, 3, 3))[1], False)  # 3 worlds, not 2
    # Three episodes more: the 5 slots of last frames wrap around (8 last rows written).
    buffer = filled(buffer, list(episode_rows(8, 3, 2))[15:])
    assert int(buffer.episodes) == 8 and int(buffer.cursor) == 2
    batch = draw(buffer, jax.random.key(3), 1000)
    assert_consistent(batch)
    rows = {(int(r) // 1000, int(r) % 1000 // 10) for r in np.asarray(batch.reward)}
    assert rows == {(e, t) for e in range(4, 8) for t in range(3)} - {(4, 0), (4, 1)}


def test_replay_draws_many_batches_of_valid_indices_at_once():
    """`sample_indices` of shape (updates, batch): every draw a valid row and world (the
    10 newest rows of 11 after 15), and `gather` of each update's draws its transitions."""
    buffer = filled(replay.init_replay(20, (1,), 2, num_envs=2, episode_length=3),
                    episode_rows(5, 3, 2))
    rows, worlds = jax.jit(replay.sample_indices, static_argnums=2)(
        buffer, jax.random.key(4), (3, 400))
    assert rows.shape == worlds.shape == (3, 400)
    assert set(np.asarray(worlds).ravel().tolist()) == {0, 1}
    for update in range(3):
        batch = replay.gather(buffer, rows[update], worlds[update])
        assert_consistent(batch)
        steps = {(int(r) // 1000, int(r) % 1000 // 10) for r in np.asarray(batch.reward)}
        assert steps == {(e, t) for e in range(1, 5) for t in range(3)} - {(1, 0), (1, 1)}


def test_a_buffer_split_by_worlds_gathers_the_whole_buffers_batches():
    """Four worlds' buffer split into two devices' columns (here a vmap with the mesh axis's
    name): indices drawn over all four worlds, and `gather_split` gives every device the
    batch `gather` gives from the whole buffer."""
    whole = filled(replay.init_replay(40, (1,), 2, num_envs=4, episode_length=3),
                   episode_rows(5, 3, 4))
    shares = jax.tree.map(lambda x: jnp.stack([x[:, :2], x[:, 2:]]) if x.ndim > 1 else
                          jnp.stack([x, x]), whole)
    rows, worlds = replay.sample_indices(whole, jax.random.key(5), (300,))
    assert set(np.asarray(worlds).tolist()) == {0, 1, 2, 3}
    rows_split, worlds_split = replay.sample_indices(
        jax.tree.map(lambda x: x[0], shares), jax.random.key(5), (300,), num_worlds=4)
    np.testing.assert_array_equal(rows_split, rows)
    np.testing.assert_array_equal(worlds_split, worlds)
    split = jax.vmap(lambda share: replay.gather_split(share, rows, worlds, "worlds"),
                     axis_name="worlds")(shares)
    want = replay.gather(whole, rows, worlds)
    for got, wanted in zip(jax.tree.leaves(split), jax.tree.leaves(want), strict=True):
        for device in range(2):
            np.testing.assert_array_equal(got[device], wanted)


def test_replay_refilled_from_the_middle_of_an_episode():
    """A run resumed without its buffer starts inserting at step 2 of an episode."""
    rows = list(episode_rows(2, 4, 1))[2:]
    buffer = filled(replay.init_replay(12, (1,), 2, num_envs=1, episode_length=4), rows)
    assert int(buffer.size) == 6
    batch = draw(buffer, jax.random.key(2), 300)
    assert_consistent(batch)
    assert set(np.asarray(batch.reward).tolist()) == {20.0, 30.0, 1000.0, 1010.0, 1020.0,
                                                      1030.0}


@pytest.mark.parametrize("capacity,worlds,rows", [(400_000, 16, 25_001), (20, 2, 11),
                                                  (21, 2, 12), (1024, 1024, 2)])
def test_replay_rows_hold_the_capacity_in_whole_rows(capacity, worlds, rows):
    assert replay.replay_rows(capacity, worlds) == rows
    assert (rows - 1) * worlds >= capacity > (rows - 2) * worlds
    shapes = jax.eval_shape(lambda: replay.init_replay(capacity, (3,), 2, worlds, 5))
    assert replay.held_transitions(rows, worlds) == shapes.capacity == (rows - 1) * worlds


def test_replay_stores_images_as_uint8():
    buffer = replay.init_replay(4, (16, 16, 3), 2, num_envs=2, episode_length=2)
    assert buffer.frames.dtype == jnp.uint8
    images = jnp.linspace(0.0, 1.0, 16 * 16 * 3).reshape(1, 16, 16, 3)
    roundtrip = replay.stored_obs_to_float(replay.pixels_to_uint8(images))
    np.testing.assert_allclose(roundtrip, images, atol=0.5 / 255 + 1e-6)


def test_replay_nbytes_is_the_allocated_buffers_size():
    for shape in [(16, 16, 6), (7,)]:
        buffer = replay.init_replay(50, shape, 2, num_envs=4, episode_length=5)
        allocated = sum(x.nbytes for x in jax.tree.leaves(buffer))
        assert replay.replay_nbytes(50, shape, 2, 4, 5) == allocated
    # Figure 3a's buffer: 25,001 rows of 16 worlds' 48x48x3 uint8 frames and 252 slots of
    # episodes' last ones; action, reward and done per transition, each row's slot; cursor,
    # size and episode count.
    frames = (25_001 + 252) * 16 * 6912
    assert replay.replay_nbytes(400_000, (48, 48, 3), 2, 16, 100) == (
        frames + 25_001 * (16 * 16 + 4) + 12)


# augmentation -----------------------------------------------------------------------------


def numbered_images(batch: int = 2, size: int = 8) -> jax.Array:
    return jnp.arange(batch * size * size * 2, dtype=jnp.int32).reshape(batch, size, size, 2)


def test_zero_shift_is_identity():
    images = numbered_images()
    shifted = shift_images(images, jnp.zeros((2, 2), jnp.int32), pad=4)
    np.testing.assert_array_equal(shifted, images)


def test_known_shift_moves_pixels_with_edge_replication():
    images = numbered_images()
    shifts = np.array([[2, -3], [-4, 4]])
    shifted = np.asarray(jax.jit(shift_images, static_argnums=2)(images, jnp.asarray(shifts), 4))
    rows, cols = np.arange(8), np.arange(8)
    for b, (dy, dx) in enumerate(shifts):
        source_rows = np.clip(rows + dy, 0, 7)
        source_cols = np.clip(cols + dx, 0, 7)
        expected = np.asarray(images[b])[source_rows][:, source_cols]
        np.testing.assert_array_equal(shifted[b], expected)
    # sample 0 shows rows 2.. of the original; its last two rows repeat the original's last row
    np.testing.assert_array_equal(shifted[0, -1], shifted[0, -2])


def test_known_shift_with_zero_fill_is_the_references_pad_and_crop():
    """fill="zeros": the reference's tf.pad with zeros, then a crop at offset pad + shift."""
    images = numbered_images()
    shifts = np.array([[2, -3], [-4, 4]])
    shifted = np.asarray(shift_images(images, jnp.asarray(shifts), 4, fill="zeros"))
    padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)))
    for b, (dy, dx) in enumerate(shifts):
        np.testing.assert_array_equal(shifted[b], padded[b, 4 + dy:12 + dy, 4 + dx:12 + dx])
    assert (shifted[0, -2:] == 0).all() and (shifted[1, :, -4:] == 0).all()


def test_batch_shifts_are_per_image_or_with_the_quirk_one_per_batch():
    key = jax.random.key(2)
    per_image = np.asarray(batch_shifts(key, 64, SACConfig()))
    assert per_image.shape == (2, 64, 2) and len(np.unique(per_image[0], axis=0)) > 10
    one = np.asarray(batch_shifts(key, 64, SACConfig(reference_augmentation=True)))
    assert one.shape == (2, 64, 2) and np.abs(one).max() <= 4
    for half in one:  # obs, next obs: each one shift for all of its images
        assert len(np.unique(half, axis=0)) == 1
    shared = [np.asarray(batch_shifts(k, 4, SACConfig(reference_augmentation=True)))
              for k in jax.random.split(key, 8)]
    assert any((s[0] != s[1]).any() for s in shared)  # obs and next obs draw apart


def test_reference_augmentation_updates_on_the_batch_shifted_as_the_reference_shifts_it():
    """The quirk's update equals an unaugmented update on the batch zero-padded and cropped
    at each half's one offset by hand."""
    obs_shape = (16, 16, 3)
    batch = random_image_batch(jax.random.key(1), obs_shape)
    key = jax.random.key(3)
    config = SACConfig(hidden_sizes=(32, 32), reference_augmentation=True)
    (dy, dx), (next_dy, next_dx) = np.asarray(
        batch_shifts(jax.random.split(key, 3)[0], 1, config))[:, 0]

    def by_hand(images, dy, dx):
        padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)))
        return jnp.asarray(padded[:, 4 + dy:20 + dy, 4 + dx:20 + dx])

    shifted = batch.replace(obs=by_hand(batch.obs, dy, dx),
                            next_obs=by_hand(batch.next_obs, next_dy, next_dx))
    plain = dataclasses.replace(config, aug_pad=0, reference_augmentation=False)
    update = jax.jit(sac_update, static_argnames="config")
    expected = update(init_sac(jax.random.key(0), obs_shape, ACTION_DIM, plain), shifted, key,
                      config=plain)
    got = update(init_sac(jax.random.key(0), obs_shape, ACTION_DIM, config), batch, key,
                 config=config)
    assert_trees_close(got, expected, rtol=1e-4)


def test_only_pallas_encoders_with_replicated_edges_read_stored_images_through_shifts():
    def lazy(**fields):
        config = SACConfig(**fields)
        return lazy_augmentation(config, networks_for(config, ACTION_DIM, from_pixels=True))

    assert lazy(encoder_conv="pallas") and lazy(encoder_conv="pallas_banded")
    assert not lazy(encoder_conv="pallas", reference_augmentation=True)  # zeros off the image
    assert not lazy(encoder_conv="pallas", lazy_augmentation=False)
    assert not lazy(encoder_conv="canonical")
    config = SACConfig(encoder_conv="pallas")
    assert not lazy_augmentation(config, networks_for(config, ACTION_DIM, from_pixels=False))


def test_random_shifts_are_independent_and_cover_minus_pad_to_pad():
    shifts = np.asarray(random_shifts(jax.random.key(0), (2, 4000), pad=4))
    assert shifts.shape == (2, 4000, 2) and shifts.dtype == np.int32
    for axis in range(2):  # each of the 9 offsets ~1/9 of the time, dy and dx uncorrelated
        counts = np.bincount(shifts[..., axis].ravel() + 4, minlength=9)
        assert len(counts) == 9 and abs(counts / counts.sum() - 1 / 9).max() < 0.01
    assert abs(np.corrcoef(shifts[..., 0].ravel(), shifts[..., 1].ravel())[0, 1]) < 0.03
    images = jnp.tile(numbered_images(1), (16, 1, 1, 1)).astype(jnp.uint8)
    shifted = shift_images(images, jnp.asarray(shifts[0, :16]), 4)
    assert shifted.shape == images.shape and shifted.dtype == jnp.uint8
    assert len({np.asarray(x).tobytes() for x in shifted}) > 8


def test_shifted_images_to_float_shifts_then_scales_to_unit_range():
    images = numbered_images().astype(jnp.uint8)
    shifts = jnp.asarray([[2, -3], [-4, 4]], jnp.int32)
    lazy = ShiftedImages(images, shifts, pad=4)
    assert lazy.shape == images.shape
    expected = np.asarray(shift_images(images, shifts, 4), np.float32) / 255.0
    np.testing.assert_allclose(lazy.to_float(), expected, rtol=1e-6)


# update -----------------------------------------------------------------------------------


def random_image_batch(key: jax.Array, obs_shape: tuple[int, ...], size: int = 8):
    """A replay batch of random uint8 images, actions in [-1, 1] and normal rewards."""
    k = jax.random.split(key, 3)
    images = jax.random.randint(k[0], (2, size, *obs_shape), 0, 256).astype(jnp.uint8)
    return replay.Transition(
        obs=images[0],
        action=jax.random.uniform(k[1], (size, ACTION_DIM), minval=-1, maxval=1),
        reward=jax.random.normal(k[2], (size,)),
        next_obs=images[1],
        done=jnp.zeros((size,)),
    )


def test_sac_update_changes_params_and_stays_finite():
    config = SACConfig(hidden_sizes=(32, 32))
    obs_shape = (16, 16, 3)
    state = init_sac(jax.random.key(0), obs_shape, ACTION_DIM, config)
    batch_key, update_key = jax.random.split(jax.random.key(1))
    batch = random_image_batch(batch_key, obs_shape)
    update = jax.jit(sac_update, static_argnames="config")
    new_state, metrics = update(state, batch, update_key, config=config)

    assert int(new_state.step) == 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(new_state))
    assert all(np.isfinite(np.asarray(v)) for v in metrics.values())
    for name in ("actor_params", "critic_params", "target_critic_params", "log_alpha"):
        before, after = getattr(state, name), getattr(new_state, name)
        changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after)
        assert all(jax.tree.leaves(changed)), name
    encoder_kernel = new_state.critic_params["params"]["encoder"]["Conv_0"]["kernel"]
    assert encoder_kernel.shape == (5, 5, 3, 8)


def test_sac_update_moves_targets_by_tau_and_alpha_toward_the_target_entropy(state_problem):
    """One update: the target critic becomes tau * new critic + (1 - tau) * old target
    (Polyak), and the temperature loss is alpha_loss of the policy's log-probs with target
    entropy -|A| by default, or the config's; Adam's first step then moves log alpha by the
    learning rate, down while the policy's entropy is above the target, up while below."""
    state, batch, _, nets = state_problem
    log_alpha_0 = 0.5  # at log alpha 0 the alpha loss is 0 for any target
    state = state.replace(log_alpha=jnp.float32(log_alpha_0))
    key = jax.random.key(4)
    update = jax.jit(sac_update, static_argnames="config")
    new_state, metrics = update(state, batch, key, SMALL)

    new_critic, old_target = to_np(new_state.critic_params), to_np(state.target_critic_params)
    assert not np.allclose(jax.tree.leaves(new_critic)[0], jax.tree.leaves(old_target)[0])
    expected_target = jax.tree.map(lambda new, old: SMALL.tau * new + (1 - SMALL.tau) * old,
                                   new_critic, old_target)
    jax.tree.map(lambda actual, expected: np.testing.assert_allclose(
        actual, expected, rtol=1e-6, atol=1e-7), new_state.target_critic_params, expected_target)

    # The policy's log-probs as sac_update draws them (its key's third split is their noise).
    noise = jax.random.normal(jax.random.split(key, 3)[2], batch.action.shape)
    _, log_prob = losses.actor_loss(state.actor_params, state.critic_params, state.log_alpha,
                                    batch.obs, noise, nets)
    np.testing.assert_allclose(metrics["entropy"], -jnp.mean(log_prob), rtol=1e-6)
    mean_log_prob = float(np.mean(np.asarray(log_prob, np.float64)))
    assert target_entropy(SMALL, ACTION_DIM) == -ACTION_DIM
    assert -mean_log_prob > -ACTION_DIM  # the initial policy's entropy is above -|A|
    lr = SMALL.learning_rate
    for entropy_target in (None, 5.0):  # 5.0: above the entropy, so alpha must rise
        config = dataclasses.replace(SMALL, target_entropy=entropy_target)
        if entropy_target is None:
            entropy_target, config_metrics, log_alpha = -ACTION_DIM, metrics, new_state.log_alpha
        else:
            config_state, config_metrics = update(state, batch, key, config)
            log_alpha = config_state.log_alpha
        np.testing.assert_allclose(config_metrics["alpha_loss"],
                                   losses.alpha_loss(state.log_alpha, log_prob, entropy_target),
                                   rtol=1e-5)
        np.testing.assert_allclose(config_metrics["alpha_loss"],
                                   -log_alpha_0 * (mean_log_prob + entropy_target), rtol=1e-5)
        # d loss / d log alpha = -(mean log pi + target): Adam's first step is lr against its sign
        direction = np.sign(mean_log_prob + entropy_target)
        assert direction == (-1.0 if entropy_target < 0 else 1.0)
        np.testing.assert_allclose(log_alpha, log_alpha_0 + lr * direction, rtol=0, atol=1e-6)
        np.testing.assert_allclose(config_metrics["alpha"], np.exp(log_alpha_0 + lr * direction),
                                   rtol=1e-5)


def test_sac_learns_one_step_bandit():
    """Reward -(a - 0.5)^2, every episode one step long: the policy's action must reach 0.5.

    Alpha starts small (0.05) so its entropy pull toward a = 0 stays well inside the tolerance.
    """
    config = SACConfig(
        learning_rate=1e-3, hidden_sizes=(64, 64), batch_size=128, init_log_alpha=-3.0
    )
    num_data, obs_dim = 1024, 2
    k = jax.random.split(jax.random.key(0), 3)
    actions = jax.random.uniform(k[0], (num_data, 1), minval=-1.0, maxval=1.0)
    obs = jnp.ones((num_data, obs_dim))
    data = replay.Transition(
        obs=obs,
        action=actions,
        reward=-((actions[:, 0] - 0.5) ** 2),
        next_obs=obs,
        done=jnp.ones((num_data,)),
    )
    # One row of 1024 one-step episodes.
    buffer = replay.insert(replay.init_replay(num_data, (obs_dim,), 1, num_data, 1), data,
                           jnp.asarray(True))

    # the trainer's loop of updates, each on a batch drawn from the buffer
    train = jax.jit(sampled_updates, static_argnums=(3, 4))
    state = init_sac(k[1], (obs_dim,), 1, config)
    state, metrics = train(state, buffer, k[2], config, 500)
    assert int(state.step) == 500 and metrics["critic_loss"].shape == (500,)
    nets = networks_for(config, 1, from_pixels=False)
    action = networks.deterministic_action(nets.actor, state.actor_params, obs[:1])
    np.testing.assert_allclose(action, 0.5, atol=0.05)
    assert np.isfinite(np.asarray(metrics["critic_loss"])).all()


# convolutions on XLA:CPU ------------------------------------------------------------------

NHWC = ("NHWC", "HWIO", "NHWC")


def normal(rng, *shape):
    """Test inputs from numpy: jax.random compiles anew for every shape (slow on the CPU)."""
    return jnp.asarray(rng.standard_normal(shape, np.float32))


def lax_conv_same(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NHWC)


def lax_conv_same_blocked(x, kernel):
    """out[b, Y, X, 2p + q, o] = conv(x)[b, 2Y + p, 2X + q, o], written independently."""
    y = lax_conv_same(x, kernel)
    b, h, w, o = y.shape
    return (
        y.reshape(b, h // 2, 2, w // 2, 2, o)
        .transpose(0, 1, 3, 2, 4, 5)
        .reshape(b, h // 2, w // 2, 4, o)
    )


def conv_and_grads(conv, x, kernel, cotangent):
    """(output, d input, d kernel) of `conv` for the given output cotangent."""
    y, vjp = jax.vjp(conv, x, kernel)
    return (y, *vjp(cotangent))


def assert_trees_close(actual, expected, rtol=1e-5):
    """Elementwise close, absolute tolerance relative to each leaf's largest entry."""
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.shape == e.shape
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * float(jnp.abs(e).max()))


@pytest.mark.parametrize("channels", [3, 8])
@pytest.mark.parametrize(
    "height, width, kernel_size", [(8, 8, 5), (7, 9, 5), (6, 5, 3), (10, 6, 4)]
)
def test_conv_same_and_its_gradients_match_lax(channels, height, width, kernel_size):
    rng = np.random.default_rng(100 * height + width)
    x = normal(rng, 3, height, width, channels)
    kernel = normal(rng, kernel_size, kernel_size, channels, 8)
    cotangent = normal(rng, 3, height, width, 8)
    expected = conv_and_grads(lax_conv_same, x, kernel, cotangent)
    actual = jax.jit(functools.partial(conv_and_grads, networks.conv_same))(x, kernel, cotangent)
    assert_trees_close(actual, expected)


@pytest.mark.parametrize("channels", [3, 8])
@pytest.mark.parametrize("height, width, kernel_size", [(8, 8, 5), (6, 10, 4), (4, 4, 3)])
def test_conv_same_blocked_and_its_gradients_match_lax(channels, height, width, kernel_size):
    rng = np.random.default_rng(100 * height + width + kernel_size)
    x = normal(rng, 2, height, width, channels)
    kernel = normal(rng, kernel_size, kernel_size, channels, 8)
    cotangent = normal(rng, 2, height // 2, width // 2, 4, 8)
    expected = conv_and_grads(lax_conv_same_blocked, x, kernel, cotangent)
    conv = jax.jit(functools.partial(conv_and_grads, networks.conv_same_blocked))
    assert_trees_close(conv(x, kernel, cotangent), expected)


@pytest.mark.parametrize("x_axis, kernel_axis", [(0, 0), (0, None), (None, 0)])
def test_conv_same_vmapped_over_seeds_matches_lax(x_axis, kernel_axis):
    seeds = 3
    rng = np.random.default_rng(7)
    x = normal(rng, seeds, 2, 8, 6, 3)
    kernel = normal(rng, seeds, 5, 5, 3, 4)
    cotangent = normal(rng, seeds, 2, 8, 6, 4)
    x = x if x_axis == 0 else x[0]
    kernel = kernel if kernel_axis == 0 else kernel[0]
    in_axes = (x_axis, kernel_axis, 0)
    expected = jax.vmap(functools.partial(conv_and_grads, lax_conv_same), in_axes)(
        x, kernel, cotangent
    )
    batched = jax.vmap(functools.partial(conv_and_grads, networks.conv_same), in_axes)
    assert_trees_close(jax.jit(batched)(x, kernel, cotangent), expected)


def test_conv_gradients_in_scan_use_only_canonical_convolutions():
    """Inside loop bodies XLA:CPU runs non-canonical convolutions on a slow generic path.

    (Images must be larger than the kernels: XLA swaps the operands of a convolution whose
    kernel is larger than its input, which makes it non-canonical.)
    """
    x = jnp.ones((2, 16, 16, 3))
    kernels = jnp.ones((5, 5, 3, 8)), jnp.ones((5, 5, 8, 8))

    def loss(x, kernels):
        hidden = jax.nn.relu(networks.conv_same_blocked(x, kernels[0])).max(axis=3)
        return jnp.sum(networks.conv_same(hidden, kernels[1]) ** 2)

    def body(carry, _):
        grads = jax.grad(loss, (0, 1))(x + carry, kernels)
        return carry + 1e-9 * sum(g.sum() for g in jax.tree.leaves(grads)), None

    hlo = jax.jit(lambda: jax.lax.scan(body, 0.0, length=2)[0]).lower().compile().as_text()
    dim_labels = [
        line.split("dim_labels=")[1].split(",")[0]
        for line in hlo.splitlines()
        if " convolution(" in line
    ]
    assert len(dim_labels) >= 6  # 2 forward, 2 input gradients, 2 kernel gradients
    assert set(dim_labels) == {"b01f_01io->b01f"}, dim_labels


def encoder_results(images, conv):
    """(initial params, features, gradients, whether conv_same's custom VJP is used); features
    and gradients at the initial kernels with nonzero biases (zero initially), some negative."""
    encoder = networks.Encoder(conv=conv)

    def loss(params, images):
        return jnp.sum(jnp.sin(encoder.apply(params, images)))

    params = jax.jit(lambda key: encoder.init(key, images))(jax.random.key(1))
    biased = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.linspace(-0.2, 0.1, x.size) if path[-1].key == "bias" else x, params)
    features = jax.jit(lambda params: encoder.apply(params, images))(biased)
    grads = jax.jit(jax.grad(loss, (0, 1)))(biased, images)
    jaxpr = jax.make_jaxpr(lambda params: encoder.apply(params, images))(params)
    return params, features, grads, "custom_vjp_call" in str(jaxpr)


@pytest.mark.parametrize(  # 14: the second layer's input is odd (7x7); 40: 4 row tiles of 10
    ("size", "conv"), [(16, "canonical"), (14, "canonical"), (14, "rows"), (40, "rows"),
                       (16, "pallas"), (16, "pallas_banded")])
def test_encoder_layers_match_nn_conv(size, conv):
    """Same parameters (names, shapes, initial values), features and gradients as nn.Conv."""
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, size, size, 3)), jnp.float32)
    params, features, grads, custom = encoder_results(images, conv)
    nn_params, nn_features, nn_grads, nn_custom = encoder_results(images, "lax")

    assert custom == (conv == "canonical" or conv in networks.PALLAS_CONVS) and not nn_custom
    assert jax.tree.map(jnp.shape, params["params"]["Conv_1"]) == {
        "kernel": (5, 5, 8, 8),
        "bias": (8,),
    }
    jax.tree.map(np.testing.assert_array_equal, params, nn_params)
    assert_trees_close((features, grads), (nn_features, nn_grads))


def test_pool_bias_relu_equals_relu_then_pool():
    """Adding the bias and the ReLU after the pool gives exactly the values of adding them
    before, and the same gradients (the inputs have no ties)."""
    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.normal(size=(2, 6, 4, 3)), jnp.float32)
    bias = jnp.asarray([-0.5, 0.0, 0.7], jnp.float32)

    def before(y, bias):
        return networks.max_pool_2x2(jax.nn.relu(y + bias))

    np.testing.assert_array_equal(networks.pool_bias_relu(y, bias), before(y, bias))
    weights = jnp.asarray(rng.normal(size=(2, 3, 2, 3)), jnp.float32)
    grads = [jax.grad(lambda y, b, f=f: jnp.sum(weights * f(y, b)), (0, 1))(y, bias)
             for f in (networks.pool_bias_relu, before)]
    assert_trees_close(grads[0], grads[1])
    assert float(jnp.abs(grads[0][1]).sum()) > 0


def test_rows_layer_is_one_matrix_product_per_row_tile():
    """conv="rows": the convolution is a single dot_general over kh stacked rows of
    tile + kw - 1 padded columns (ROW_TILE output columns at most), no convolution op."""
    x = jnp.zeros((2, 40, 40, 3))
    kernel, bias = jnp.zeros((5, 5, 3, 8)), jnp.zeros((8,))
    jaxpr = str(jax.make_jaxpr(networks.rows_conv_relu_pool, static_argnums=3)(
        x, kernel, bias, "float32"))
    assert "conv_general_dilated" not in jaxpr
    banded = networks.banded_kernel(kernel, networks._row_tile(40))
    assert networks._row_tile(40) == 10 and banded.shape == (5, (10 + 4) * 3, 10 * 8)
    assert jaxpr.count("dot_general") == 2  # banded_kernel's selection, then the product


def test_banded_kernel_places_each_tap():
    kernel = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 2, 4)), jnp.float32)
    banded = np.asarray(networks.banded_kernel(kernel, 4)).reshape(3, 6, 2, 4, 4)
    for v in range(6):
        for w in range(4):
            expected = kernel[:, v - w] if 0 <= v - w < 3 else np.zeros((3, 2, 4))
            np.testing.assert_array_equal(banded[:, v, :, w], expected)


def test_encoder_rejects_unknown_conv():
    with pytest.raises(ValueError, match="unknown encoder conv 'cudnn'"):
        networks.Encoder(conv="cudnn").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_bfloat16_encoder_keeps_float32_params_and_features():
    """encoder_dtype="bfloat16" computes the convolutions in bf16 (both layer kinds): the same
    parameters, float32 features within bf16 rounding of the float32 encoder's. The XLA
    computations only: the interpreted Pallas ones cost ~10 s each here, and their bf16 layers
    are checked by test_pallas_conv.py::test_bfloat16_layer_is_close_to_float32 and their bf16
    encoders by test_bfloat16_encoder_gradients_are_the_float32_ones_rounded (parameters and
    the final float32 cast do not depend on the computation)."""
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 16, 16, 3)), jnp.float32)
    xla_convs = [conv for conv in networks.ENCODER_CONVS if conv not in networks.PALLAS_CONVS]
    assert xla_convs == ["canonical", "lax", "rows"]
    for conv in xla_convs:
        encoder = networks.Encoder(conv=conv)
        params = encoder.init(jax.random.key(0), images)
        features = encoder.apply(params, images)
        bf16_encoder = networks.Encoder(conv=conv, dtype="bfloat16")
        jax.tree.map(np.testing.assert_array_equal, bf16_encoder.init(jax.random.key(0), images),
                     params)
        bf16_features = bf16_encoder.apply(params, images)
        assert bf16_features.dtype == jnp.float32
        scale = float(jnp.abs(features).max())
        np.testing.assert_allclose(bf16_features, features, atol=2e-2 * scale)


def test_bfloat16_encoder_gradients_are_the_float32_ones_rounded():
    """bf16 encoders' kernel and bias gradients stay within 2% of float32's for every encoder
    computation, biases included: their sums over 8 x 16 x 16 positions pass 256, where a
    bf16 sum stops growing (the bias gradient of bf16 encoders before the bias was added in
    float32)."""
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 32, 32, 3)), jnp.float32)
    params = networks.Encoder().init(jax.random.key(0), images)

    def grads(conv, dtype):
        encoder = networks.Encoder(conv=conv, dtype=dtype)
        return jax.jit(jax.grad(lambda p: jnp.sum(encoder.apply(p, images))))(params)

    expected = grads("canonical", "float32")
    assert float(jnp.abs(expected["params"]["Conv_0"]["bias"]).max()) > 300
    for conv in networks.ENCODER_CONVS:
        jax.tree.map(lambda g, e: np.testing.assert_allclose(
            g, e, atol=0.02 * float(jnp.abs(e).max())), grads(conv, "bfloat16"), expected)


def test_flat_optimizer_gives_the_per_leaf_update():
    """flat_optimizer ravels each network's parameters for Adam: same update up to rounding."""
    obs_shape = (16, 16, 3)
    batch_key, update_key = jax.random.split(jax.random.key(1))
    batch = random_image_batch(batch_key, obs_shape)
    results = []
    for flat in (False, True):
        config = SACConfig(hidden_sizes=(32, 32), flat_optimizer=flat)
        state = init_sac(jax.random.key(0), obs_shape, ACTION_DIM, config)
        for key in jax.random.split(update_key, 2):
            state, _ = jax.jit(sac_update, static_argnames="config")(state, batch, key, config)
        results.append((state.actor_params, state.critic_params, state.log_alpha))
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6), *results)
    num_critic_params = sum(x.size for x in jax.tree.leaves(state.critic_params))
    moments = [x for x in jax.tree.leaves(state.critic_opt_state) if x.ndim]
    assert [x.shape for x in moments] == [(num_critic_params,)] * 2  # Adam's mu and nu, raveled


@pytest.mark.parametrize(  # 10: the second layer's input is odd (5x5)
    ("size", "conv"), [(16, "canonical"), (10, "canonical"), (10, "rows"), (16, "pallas")])
def test_encode_pair_equals_each_encoder_with_the_same_gradients(size, conv):
    images = jnp.asarray(np.random.default_rng(1).uniform(size=(3, size, size, 3)), jnp.float32)
    encoder = networks.Encoder(conv=conv)
    first, second = (encoder.init(jax.random.key(k), images)["params"] for k in (0, 1))
    cotangents = [normal(np.random.default_rng(k), 3, (size // 4) ** 2 * 8) for k in (2, 3)]

    def pair(first, second):
        a, b = networks.encode_pair(first, second, images, conv=conv)
        return jnp.sum(a * cotangents[0]) + jnp.sum(b * cotangents[1]), (a, b)

    def each(first, second):
        a, b = (encoder.apply({"params": p}, images) for p in (first, second))
        return jnp.sum(a * cotangents[0]) + jnp.sum(b * cotangents[1]), (a, b)

    (_, fused), fused_grads = jax.value_and_grad(pair, (0, 1), has_aux=True)(first, second)
    (_, separate), separate_grads = jax.value_and_grad(each, (0, 1), has_aux=True)(first, second)
    assert_trees_close(fused, separate)
    assert_trees_close(fused_grads, separate_grads)


@pytest.mark.parametrize("conv", ["canonical", "pallas"])
def test_encoders_read_shifted_images_as_their_float_conversion(conv):
    """`ShiftedImages` into an `Encoder` or `encode_pair`: the features and parameter
    gradients of `ShiftedImages.to_float` (Pallas reads the pixels through the shifts, the
    others convert first)."""
    rng = np.random.default_rng(4)
    lazy = ShiftedImages(jnp.asarray(rng.integers(0, 256, (3, 16, 16, 3)), jnp.uint8),
                         jnp.asarray(rng.integers(-4, 5, (3, 2)), jnp.int32), 4)
    encoder = networks.Encoder(conv=conv)
    first, second = (encoder.init(jax.random.key(k), lazy.to_float())["params"] for k in (0, 1))

    def features(first, second, images):
        one = encoder.apply({"params": first}, images)
        return jnp.sum(jnp.sin(one)) + jnp.sum(jnp.sin(
            jnp.concatenate(networks.encode_pair(first, second, images, conv=conv))))

    grad = jax.jit(jax.value_and_grad(features, (0, 1)))
    assert_trees_close(grad(first, second, lazy), grad(first, second, lazy.to_float()))


def test_rows_encode_pair_does_no_more_arithmetic_than_the_two_encoders():
    """With conv="rows" the second layer runs as a batched product, not block-diagonal: the
    compiled pair costs the FLOPs of the two encoders (the canonical pair pays for zeros)."""
    images = jnp.zeros((3, 16, 16, 3))
    flops = {}
    for conv in ("canonical", "rows"):
        encoder = networks.Encoder(conv=conv)
        first, second = (encoder.init(jax.random.key(k), images)["params"] for k in (0, 1))
        pair = jax.jit(functools.partial(networks.encode_pair, images=images, conv=conv))
        each = jax.jit(lambda a, b, encoder=encoder: [encoder.apply({"params": p}, images)
                                                      for p in (a, b)])
        flops[conv] = [f.lower(first, second).compile().cost_analysis()["flops"]
                       for f in (pair, each)]
    assert flops["rows"][0] == pytest.approx(flops["rows"][1], rel=0.01)
    assert flops["canonical"][0] > 1.2 * flops["canonical"][1]


def test_fused_encoders_give_the_separate_update():
    """fused_encoders computes the same three gradients from half the convolutions: same
    state and metrics after two updates."""
    obs_shape = (16, 16, 3)
    batch = random_image_batch(jax.random.key(1), obs_shape)
    results, convolutions = [], []
    for fused in (False, True):
        config = SACConfig(hidden_sizes=(32, 32), fused_encoders=fused)
        update = functools.partial(sac_update, config=config)
        state = init_sac(jax.random.key(0), obs_shape, ACTION_DIM, config)
        traced = str(jax.make_jaxpr(update)(state, batch, jax.random.key(3)))
        convolutions.append(traced.count("conv_general_dilated"))
        for key in jax.random.split(jax.random.key(3), 2):
            state, metrics = jax.jit(update)(state, batch, key)
        results.append((state, metrics))
    assert results[0][1].keys() == results[1][1].keys()
    assert_trees_close(results[1], results[0], rtol=1e-4)
    assert convolutions == [18, 8]  # traced; XLA merges a repeated pass: 14 and 7 compiled


@pytest.mark.parametrize("fused", [False, True])
def test_batched_q_heads_give_the_same_update(fused):
    """batched_q_heads changes how the critic runs, not what it computes: same state and
    metrics after two pixel updates, with separate or fused encoders; one dot_general for
    both heads' layer where there were two."""
    obs_shape = (16, 16, 3)
    batch = random_image_batch(jax.random.key(1), obs_shape)
    results, products = [], []
    for batched in (False, True):
        config = SACConfig(hidden_sizes=(32, 32), fused_encoders=fused, batched_q_heads=batched)
        update = functools.partial(sac_update, config=config)
        state = init_sac(jax.random.key(0), obs_shape, ACTION_DIM, config)
        products.append(str(jax.make_jaxpr(update)(state, batch, jax.random.key(3)))
                        .count("dot_general"))
        for key in jax.random.split(jax.random.key(3), 2):
            state, metrics = jax.jit(update)(state, batch, key)
        results.append((state, metrics))
    assert_trees_close(results[1], results[0], rtol=1e-4)
    assert products[1] < products[0]


@pytest.mark.parametrize("batched", [False, True])
def test_per_q_optimizers_step_the_shared_encoder_once_per_q_loss(batched):
    """The reference's quirk: each Q loss has its own Adam over the whole critic. Two updates
    equal a hand-made critic that each Q loss's gradient moves with its own Adam state. In
    the first, the heads move as with one Adam on the summed losses; the shared encoder does
    not."""
    obs_shape = (16, 16, 3)
    batch = random_image_batch(jax.random.key(1), obs_shape)
    config = SACConfig(hidden_sizes=(32, 32), aug_pad=0, batched_q_heads=batched,
                       per_q_optimizers=True)
    nets = networks_for(config, ACTION_DIM, from_pixels=True)
    state = init_sac(jax.random.key(0), obs_shape, ACTION_DIM, config)
    obs, next_obs = (replay.stored_obs_to_float(x) for x in (batch.obs, batch.next_obs))
    adam = optax.adam(config.learning_rate)
    expected, adam_states = state.critic_params, [adam.init(state.critic_params)] * 2
    for index, key in enumerate(jax.random.split(jax.random.key(3), 2)):
        # The target as sac_update draws it (its key's second split is the next action's).
        next_noise = jax.random.normal(jax.random.split(key, 3)[1], batch.action.shape)
        next_action, next_log_prob = networks.sample_tanh_gaussian(
            *nets.actor.apply(state.actor_params, next_obs), next_noise)
        next_q = nets.critic.apply(state.target_critic_params, next_obs, next_action)
        target = batch.reward + config.discount * (1 - batch.done) * (
            next_q.min(0) - jnp.exp(state.log_alpha) * next_log_prob)
        steps = []
        for head in range(2):
            grads = jax.grad(lambda p, head=head, target=target: 0.5 * jnp.mean(
                (nets.critic.apply(p, obs, batch.action)[head] - target) ** 2))(expected)
            steps.append(adam.update(grads, adam_states[head], expected))
        expected = optax.apply_updates(expected, jax.tree.map(jnp.add, steps[0][0], steps[1][0]))
        adam_states = [opt_state for _, opt_state in steps]
        if index == 0:  # the first update, with one Adam on the summed losses
            summed = dataclasses.replace(config, per_q_optimizers=False)
            summed_state, _ = jax.jit(sac_update, static_argnames="config")(
                init_sac(jax.random.key(0), obs_shape, ACTION_DIM, summed), batch, key, summed)
        state, metrics = jax.jit(sac_update, static_argnames="config")(state, batch, key, config)
        if index == 0:
            first_params = state.critic_params["params"]
        assert_trees_close(state.critic_params, expected, rtol=1e-4)
    assert np.isfinite(float(metrics["critic_loss"]))
    params, summed_params = first_params, summed_state.critic_params["params"]
    for head in ("q1", "q2"):
        assert_trees_close(params[head], summed_params[head], rtol=1e-4)
    kernel, summed_kernel = (p["encoder"]["Conv_0"]["kernel"] for p in (params, summed_params))
    assert not np.allclose(kernel, summed_kernel, rtol=1e-3)


def test_per_q_optimizers_refuse_fused_encoders():
    with pytest.raises(ValueError, match="per_q_critic_optimizers takes each Q loss's"):
        SACConfig(per_q_optimizers=True, fused_encoders=True)


def test_sac_config_rejects_unknown_encoder_conv():
    with pytest.raises(ValueError, match="unknown encoder conv 'cudnn'"):
        SACConfig(encoder_conv="cudnn")


@pytest.mark.parametrize("backend, expected", [("cpu", "canonical"), ("gpu", "rows"),
                                               ("tpu", "rows")])
def test_auto_encoder_conv_is_rows_on_an_accelerator(monkeypatch, backend, expected):
    """The default "auto" picks banded matrix products on an accelerator (faster on an H200)
    and the canonical convolutions on the CPU; the networks a config builds carry the pick,
    and an explicit choice is kept on every backend."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert networks.resolve_encoder_conv("auto") == expected
    assert networks.resolve_encoder_conv("lax") == "lax"
    built = networks_for(SACConfig(), ACTION_DIM, from_pixels=True)
    assert built.critic.encoder.conv == built.actor.encoder.conv == expected
    with pytest.raises(ValueError, match="valid: auto, canonical, lax, rows, pallas"):
        networks.resolve_encoder_conv("cudnn")


@pytest.mark.parametrize(  # pallas with fused encoders: test_encode_pair_equals_each_encoder...
    ("conv", "fused"), [("rows", False), ("rows", True), ("pallas", False)])
def test_encoder_convs_give_the_canonical_update_for_each_seed(conv, fused):
    """encoder_conv="rows" (also with fused_encoders) or "pallas" changes how convolutions
    are computed, not what: two vmapped seeds' states and metrics after two updates equal the
    canonical layers' up to rounding. (Pallas reads the images through their random shifts,
    `SACConfig.lazy_augmentation`, the others shift a copy.)"""
    obs_shape = (16, 16, 3)
    batch = random_image_batch(jax.random.key(1), obs_shape)
    keys = jax.random.split(jax.random.key(3), 2)
    results = []
    for name in ("canonical", conv):
        config = SACConfig(hidden_sizes=(32, 32), encoder_conv=name, fused_encoders=fused)
        states = jax.vmap(functools.partial(init_sac, obs_shape=obs_shape,
                                            action_dim=ACTION_DIM, config=config))(keys)
        update = jax.jit(jax.vmap(functools.partial(sac_update, batch=batch, config=config)))
        for step in range(2):
            states, metrics = update(states, key=jax.random.split(keys[step], 2))
        results.append((states, metrics))
    assert_trees_close(results[1], results[0], rtol=1e-4)
