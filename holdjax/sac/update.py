"""SAC training state and one gradient step, with the reference's hyperparameters as defaults.

`sac_update` is pure (jit it with `config` static); the state is a pytree, so K seeds are one
`jax.vmap` over `init_sac` keys and `sac_update` states.
"""

import dataclasses

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from holdjax.sac.augment import ShiftedImages, random_shifts, shift_images
from holdjax.sac.losses import (
    actor_loss,
    alpha_loss,
    critic_loss,
    fused_encoder_losses,
    per_q_critic_grads,
)
from holdjax.sac.networks import PALLAS_CONVS, SACNetworks, check_encoder_conv, make_networks
from holdjax.sac.replay import (
    ReplayBuffer,
    Transition,
    gather,
    gather_split,
    is_image_shape,
    sample_indices,
    stored_obs_to_float,
)


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """Hyperparameters (hashable, so usable as a static jit argument)."""

    learning_rate: float = 3e-4
    discount: float = 0.99
    tau: float = 5e-3
    batch_size: int = 256
    aug_pad: int = 4
    target_entropy: float | None = None  # None: -|A|
    hidden_sizes: tuple[int, ...] = (256, 256)
    encoder_filters: tuple[int, ...] = (8, 8)
    encoder_kernel_size: int = 5
    # "auto": rows on an accelerator, canonical on the CPU (networks.resolve_encoder_conv); or
    # "canonical" (custom-VJP convolutions), "rows" (banded GEMMs), "lax" (nn.Conv), "pallas"
    # or "pallas_banded" (Pallas kernels, sac/pallas_conv.py).
    encoder_conv: str = "auto"
    encoder_dtype: str = "float32"  # the convolutions' compute type ("bfloat16" halves bytes)
    init_log_alpha: float = 0.0
    # Adam on each network's parameters raveled into one vector: one fused kernel per
    # optimizer instead of one per leaf (fewer launches on a GPU); same values up to rounding.
    flat_optimizer: bool = False
    # Pixel updates only: the critic's and the actor's encoders read each image batch as one
    # encoder of twice the width (`losses.fused_encoder_losses`): same values, half the
    # convolution kernels.
    fused_encoders: bool = False
    # The critic's two Q heads as one batched MLP (`networks.Critic`): fewer GPU kernels,
    # slower on XLA:CPU. None: on for an accelerator backend, off for the CPU.
    batched_q_heads: bool | None = None
    # Pallas encoders only: their first layer reads each stored uint8 image through its
    # random shift (`augment.ShiftedImages`) instead of a shifted float copy of the batch:
    # same values, a few kernels and tens of MB fewer per update on a GPU.
    lazy_augmentation: bool = True
    # The reference's quirk (its softlearning SAC gives each Q network an Adam over the Q's
    # variables, the shared encoder's among them): one Adam state per Q loss over the whole
    # critic, so the shared encoder takes two Adam steps an update and each head one (the
    # other Adam never sees a gradient for it, so never moves it). Costs a second backward
    # pass through the critic. Off: one Adam on the summed Q losses.
    per_q_optimizers: bool = False
    # The reference's augmentation quirk: zero padding, and one random shift for the whole
    # batch (its `tf.image.random_crop` of the padded batch; obs and next obs one each). Off:
    # edge padding and a shift per image (DrQ's form). Pallas encoders then read a shifted
    # copy of the batch (no lazy augmentation, which assumes replicated edges).
    reference_augmentation: bool = False

    def __post_init__(self):
        check_encoder_conv(self.encoder_conv)
        if self.per_q_optimizers and self.fused_encoders:
            raise ValueError("per_q_critic_optimizers takes each Q loss's gradient apart, which "
                             "fused_encoders' one pass does not give; turn one of them off")

    @property
    def resolved_batched_q_heads(self) -> bool:
        if self.batched_q_heads is not None:
            return self.batched_q_heads
        return jax.default_backend() != "cpu"


@flax.struct.dataclass
class SACState:
    """Everything one SAC learner carries between updates."""

    actor_params: chex.ArrayTree
    critic_params: chex.ArrayTree
    target_critic_params: chex.ArrayTree
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    log_alpha: jax.Array
    alpha_opt_state: optax.OptState
    step: jax.Array


def networks_for(config: SACConfig, action_dim: int, from_pixels: bool) -> SACNetworks:
    """The module definitions a config describes."""
    return make_networks(
        action_dim,
        from_pixels,
        config.hidden_sizes,
        config.encoder_filters,
        config.encoder_kernel_size,
        config.encoder_conv,
        config.encoder_dtype,
        config.resolved_batched_q_heads,
    )


def optimizer(config: SACConfig) -> optax.GradientTransformation:
    """Adam with one learning rate for policy, critics and temperature, as in the reference."""
    adam = optax.adam(config.learning_rate)
    return optax.flatten(adam) if config.flat_optimizer else adam


def target_entropy(config: SACConfig, action_dim: int) -> float:
    """The reference's 'auto' target, -|A|, unless the config sets one."""
    return -float(action_dim) if config.target_entropy is None else config.target_entropy


def init_sac(
    key: jax.Array, obs_shape: tuple[int, ...], action_dim: int, config: SACConfig
) -> SACState:
    """Fresh parameters; the target critic starts as an exact copy of the critic."""
    networks = networks_for(config, action_dim, is_image_shape(obs_shape))
    actor_key, critic_key = jax.random.split(key)
    dummy_obs = jnp.zeros((1, *obs_shape), jnp.float32)
    dummy_action = jnp.zeros((1, action_dim), jnp.float32)
    actor_params = networks.actor.init(actor_key, dummy_obs)
    critic_params = networks.critic.init(critic_key, dummy_obs, dummy_action)
    log_alpha = jnp.asarray(config.init_log_alpha, jnp.float32)
    tx = optimizer(config)
    critic_opt_state = tx.init(critic_params)
    return SACState(
        actor_params=actor_params,
        critic_params=critic_params,
        target_critic_params=critic_params,
        actor_opt_state=tx.init(actor_params),
        critic_opt_state=((critic_opt_state, tx.init(critic_params))
                          if config.per_q_optimizers else critic_opt_state),
        log_alpha=log_alpha,
        alpha_opt_state=tx.init(log_alpha),
        step=jnp.zeros((), jnp.int32),
    )


def _prepare_obs(obs: jax.Array, shifts: jax.Array | None, aug_pad: int, lazy: bool = False,
                 fill: str = "edge") -> jax.Array | ShiftedImages:
    """Stored observations to network input: images shifted by ``shifts`` (B, 2) (on uint8;
    none when ``aug_pad`` is 0), then to float; with ``lazy``, the images and their shifts,
    for the encoders to apply (`ShiftedImages`)."""
    if obs.ndim == 4 and aug_pad > 0:
        if lazy:
            return ShiftedImages(obs, shifts, aug_pad)
        obs = shift_images(obs, shifts, aug_pad, fill)
    return stored_obs_to_float(obs)


def lazy_augmentation(config: SACConfig, networks: SACNetworks) -> bool:
    """Whether the pixel encoders read each stored image through its shift (`ShiftedImages`)
    rather than a shifted copy: Pallas encoders only, and only with replicated edges (not the
    reference's zero padding)."""
    return (config.lazy_augmentation and not config.reference_augmentation
            and networks.critic.encoder is not None
            and networks.critic.encoder.conv in PALLAS_CONVS)


def batch_shifts(key: jax.Array, batch_size: int, config: SACConfig) -> jax.Array:
    """(2, B, 2) random shifts of a batch's obs and next obs: one per image, or with
    ``reference_augmentation`` one per batch (the same for all of its images)."""
    if config.reference_augmentation:
        one = random_shifts(key, (2, 1), config.aug_pad)
        return jnp.broadcast_to(one, (2, batch_size, 2))
    return random_shifts(key, (2, batch_size), config.aug_pad)


def _apply_gradients(
    tx: optax.GradientTransformation,
    params: chex.ArrayTree,
    grads: chex.ArrayTree,
    opt_state: optax.OptState,
) -> tuple[chex.ArrayTree, optax.OptState]:
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def sac_update(
    state: SACState, batch: Transition, key: jax.Array, config: SACConfig
) -> tuple[SACState, dict[str, jax.Array]]:
    """One SAC step on a replay batch as stored (uint8 images or float state vectors).

    Critic, actor and temperature gradients are all taken at the pre-update parameters, as the
    reference's single `session.run` of the three train ops does; this also lets XLA overlap
    them, and lets `config.fused_encoders` take all three from one pass over each image batch.
    Obs and next obs get independent random shifts. Targets then move by Polyak(tau).
    """
    chex.assert_rank(batch.action, 2)
    action_dim = batch.action.shape[-1]
    from_pixels = batch.obs.ndim == 4
    networks = networks_for(config, action_dim, from_pixels)
    shift_key, next_noise_key, noise_key = jax.random.split(key, 3)
    # obs and next obs shifts drawn at once: one random-number kernel on a GPU, not two
    shifts = (batch_shifts(shift_key, batch.action.shape[0], config) if from_pixels
              else (None, None))
    lazy = from_pixels and lazy_augmentation(config, networks)
    fill = "zeros" if config.reference_augmentation else "edge"
    batch = batch.replace(
        obs=_prepare_obs(batch.obs, shifts[0], config.aug_pad, lazy, fill),
        next_obs=_prepare_obs(batch.next_obs, shifts[1], config.aug_pad, lazy, fill),
    )
    next_noise = jax.random.normal(next_noise_key, batch.action.shape)
    noise = jax.random.normal(noise_key, batch.action.shape)

    if config.fused_encoders and from_pixels:
        (critic_grads, actor_grads, alpha_grad), metrics = jax.grad(
            fused_encoder_losses, argnums=(0, 1, 2), has_aux=True)(
            state.critic_params, state.actor_params, state.log_alpha,
            state.target_critic_params, batch, noise, next_noise, networks, config.discount,
            target_entropy(config, action_dim))
        log_prob = metrics.pop("log_prob")
    else:
        critic_grads, critic_metrics = (per_q_critic_grads if config.per_q_optimizers
                                        else jax.grad(critic_loss, has_aux=True))(
            state.critic_params,
            state.target_critic_params,
            state.actor_params,
            state.log_alpha,
            batch,
            next_noise,
            networks,
            config.discount,
        )
        (actor_loss_value, log_prob), actor_grads = jax.value_and_grad(
            actor_loss, has_aux=True)(
            state.actor_params, state.critic_params, state.log_alpha, batch.obs, noise, networks
        )
        alpha_loss_value, alpha_grad = jax.value_and_grad(alpha_loss)(
            state.log_alpha, log_prob, target_entropy(config, action_dim)
        )
        metrics = {**critic_metrics, "actor_loss": actor_loss_value,
                   "alpha_loss": alpha_loss_value}

    tx = optimizer(config)
    if config.per_q_optimizers:  # each Q loss's Adam steps from the same parameters
        steps = [tx.update(grads, opt_state, state.critic_params)
                 for grads, opt_state in zip(critic_grads, state.critic_opt_state, strict=True)]
        critic_params = optax.apply_updates(
            state.critic_params, jax.tree.map(jnp.add, steps[0][0], steps[1][0]))
        critic_opt_state = (steps[0][1], steps[1][1])
    else:
        critic_params, critic_opt_state = _apply_gradients(
            tx, state.critic_params, critic_grads, state.critic_opt_state
        )
    actor_params, actor_opt_state = _apply_gradients(
        tx, state.actor_params, actor_grads, state.actor_opt_state
    )
    log_alpha, alpha_opt_state = _apply_gradients(
        tx, state.log_alpha, alpha_grad, state.alpha_opt_state
    )
    new_state = SACState(
        actor_params=actor_params,
        critic_params=critic_params,
        target_critic_params=optax.incremental_update(
            critic_params, state.target_critic_params, config.tau
        ),
        actor_opt_state=actor_opt_state,
        critic_opt_state=critic_opt_state,
        log_alpha=log_alpha,
        alpha_opt_state=alpha_opt_state,
        step=state.step + 1,
    )
    metrics = {**metrics, "alpha": jnp.exp(log_alpha), "entropy": -jnp.mean(log_prob)}
    return new_state, metrics


def sampled_updates(state: SACState, replay: ReplayBuffer, key: jax.Array, config: SACConfig,
                    updates: int, unroll: int = 1, split_worlds: tuple[str, int] | None = None
                    ) -> tuple[SACState, dict[str, jax.Array]]:
    """``updates`` sequential `sac_update`s (a `lax.scan` unrolled ``unroll`` times), each on
    a batch drawn from ``replay``, as the trainer runs them; metrics per update. Every batch
    is drawn before the loop (the buffer does not change inside it), so the random numbers of
    sampling cost no kernels in the loop (benchmarks/NOTES.md). ``split_worlds=(axis, N)``:
    inside ``shard_map``, ``replay`` holds this device's share of N worlds; batches are
    drawn over all N and assembled on every device (`gather_split`), which all then run the
    updates of an unsplit buffer."""
    def one(state, inputs):
        update_key, row, world = inputs
        batch = (gather(replay, row, world) if split_worlds is None
                 else gather_split(replay, row, world, split_worlds[0]))
        return sac_update(state, batch, update_key, config)

    sample_key, update_key = jax.random.split(key)
    rows, worlds = sample_indices(replay, sample_key, (updates, config.batch_size),
                                  split_worlds[1] if split_worlds else None)
    keys = jax.random.split(update_key, updates)
    return jax.lax.scan(one, state, (keys, rows, worlds), unroll=unroll)
