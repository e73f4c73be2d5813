"""SAC losses as pure functions of parameters and a float batch.

They take the policy's standard-normal noise instead of a PRNG key, so each loss is a
deterministic function of its inputs; `update.py` draws the noise. Formulas follow the
reference (softlearning's SAC): per-Q loss 0.5 * MSE, actor loss alpha * log pi - min Q,
temperature loss on log alpha.
"""

import functools

import chex
import jax
import jax.numpy as jnp

from holdjax.sac.networks import SACNetworks, encode_pair, sample_tanh_gaussian
from holdjax.sac.replay import Transition

Params = chex.ArrayTree


def _soft_td_target(next_q_values: jax.Array, next_log_prob: jax.Array, log_alpha: jax.Array,
                    batch: Transition, discount: float) -> jax.Array:
    """r + discount * (1 - done) * (min of the target Qs (2, B) - alpha * log pi(a'|s'))."""
    soft_next_value = jnp.min(next_q_values, 0) - jnp.exp(log_alpha) * next_log_prob
    target = batch.reward + discount * (1.0 - batch.done) * soft_next_value
    return jax.lax.stop_gradient(target)


def _td_target(
    target_critic_params: Params,
    actor_params: Params,
    log_alpha: jax.Array,
    batch: Transition,
    next_noise: jax.Array,
    networks: SACNetworks,
    discount: float,
) -> jax.Array:
    """`_soft_td_target` with a' ~ pi(s') and the target critic's Q(s', a')."""
    next_mean, next_log_std = networks.actor.apply(actor_params, batch.next_obs)
    next_action, next_log_prob = sample_tanh_gaussian(next_mean, next_log_std, next_noise)
    next_q = networks.critic.apply(target_critic_params, batch.next_obs, next_action)
    return _soft_td_target(next_q, next_log_prob, log_alpha, batch, discount)


def _q_loss(q_values: jax.Array, target: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Sum over the two Q heads (2, B) of 0.5 * mean squared TD error against the target."""
    chex.assert_shape(q_values, (2, *target.shape))
    loss = jnp.sum(0.5 * jnp.mean((q_values - target) ** 2, axis=1))
    return loss, {
        "critic_loss": loss,
        "q_mean": jnp.mean(q_values),
        "td_target_mean": target.mean(),
    }


def critic_loss(
    critic_params: Params,
    target_critic_params: Params,
    actor_params: Params,
    log_alpha: jax.Array,
    batch: Transition,
    next_noise: jax.Array,
    networks: SACNetworks,
    discount: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`_q_loss` of the critic on (s, a) against `_td_target`."""
    chex.assert_rank([batch.reward, batch.done], 1)
    target = _td_target(
        target_critic_params, actor_params, log_alpha, batch, next_noise, networks, discount
    )
    return _q_loss(networks.critic.apply(critic_params, batch.obs, batch.action), target)


def per_q_critic_grads(
    critic_params: Params,
    target_critic_params: Params,
    actor_params: Params,
    log_alpha: jax.Array,
    batch: Transition,
    next_noise: jax.Array,
    networks: SACNetworks,
    discount: float,
) -> tuple[tuple[Params, Params], dict[str, jax.Array]]:
    """`critic_loss`'s two Q heads' terms differentiated apart, for one optimizer per Q as the
    reference has them: (gradient of Q1's loss, of Q2's) over the whole critic, each zero on
    the other head, and `critic_loss`'s metrics. One forward pass, two backward passes."""
    chex.assert_rank([batch.reward, batch.done], 1)
    target = _td_target(
        target_critic_params, actor_params, log_alpha, batch, next_noise, networks, discount
    )
    q_values, pullback = jax.vjp(
        lambda params: networks.critic.apply(params, batch.obs, batch.action), critic_params)
    # `_q_loss` sums the heads' terms, so row k of its gradient (2, B) is head k's term's alone.
    q_grads, metrics = jax.grad(_q_loss, has_aux=True)(q_values, target)
    rows = jnp.eye(2, dtype=q_grads.dtype)[:, :, None]
    (q1_grads,), (q2_grads,) = (pullback(q_grads * rows[k]) for k in range(2))
    return (q1_grads, q2_grads), metrics


def _policy_objective(log_prob: jax.Array, q_values: jax.Array, log_alpha: jax.Array) -> jax.Array:
    """mean(alpha * log pi(a|s) - min Q(s, a)) over Q values (2, B), alpha held fixed."""
    alpha = jax.lax.stop_gradient(jnp.exp(log_alpha))
    return jnp.mean(alpha * log_prob - jnp.min(q_values, 0))


def actor_loss(
    actor_params: Params,
    critic_params: Params,
    log_alpha: jax.Array,
    obs: jax.Array,
    noise: jax.Array,
    networks: SACNetworks,
) -> tuple[jax.Array, jax.Array]:
    """`_policy_objective` with a reparameterised a ~ pi(s); returns (loss, log pi).

    Only `actor_params` should be differentiated: alpha and the critic are held fixed here.
    """
    mean, log_std = networks.actor.apply(actor_params, obs)
    action, log_prob = sample_tanh_gaussian(mean, log_std, noise)
    q_values = networks.critic.apply(critic_params, obs, action)
    return _policy_objective(log_prob, q_values, log_alpha), log_prob


def alpha_loss(log_alpha: jax.Array, log_prob: jax.Array, target_entropy: float) -> jax.Array:
    """-mean(log alpha * (log pi + target entropy)): raises alpha while entropy is below target.

    Written on log alpha, as the reference does, which sets the gradient's scale.
    """
    return -jnp.mean(log_alpha * jax.lax.stop_gradient(log_prob + target_entropy))


def fused_encoder_losses(
    critic_params: Params,
    actor_params: Params,
    log_alpha: jax.Array,
    target_critic_params: Params,
    batch: Transition,
    noise: jax.Array,
    next_noise: jax.Array,
    networks: SACNetworks,
    discount: float,
    target_entropy: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """critic_loss + actor_loss + alpha_loss from images, with each pair of encoders that
    reads the same images run as one (`encode_pair`): critic and actor on s, target critic and
    actor on s'. The sum's gradient with respect to each of (critic, actor, log alpha) is that
    of its own loss, as the stop-gradients hold the other parameters fixed in each term."""
    chex.assert_rank([batch.reward, batch.done], 1)
    dtype, conv = networks.critic.encoder.dtype, networks.critic.encoder.conv
    frozen_actor = jax.lax.stop_gradient(actor_params)
    critic_features, actor_features = encode_pair(
        critic_params["params"]["encoder"], actor_params["params"]["encoder"], batch.obs, dtype,
        conv)
    target_next_features, actor_next_features = encode_pair(
        target_critic_params["params"]["encoder"], frozen_actor["params"]["encoder"],
        batch.next_obs, dtype, conv)

    critic_heads = functools.partial(networks.critic.apply, method="q_values")
    policy = functools.partial(networks.actor.apply, method="distribution")
    next_action, next_log_prob = sample_tanh_gaussian(
        *policy(frozen_actor, actor_next_features), next_noise)
    target = _soft_td_target(critic_heads(target_critic_params, target_next_features, next_action),
                             next_log_prob, log_alpha, batch, discount)
    critic_loss_value, metrics = _q_loss(
        critic_heads(critic_params, critic_features, batch.action), target)

    action, log_prob = sample_tanh_gaussian(*policy(actor_params, actor_features), noise)
    q_values = critic_heads(jax.lax.stop_gradient(critic_params),
                            jax.lax.stop_gradient(critic_features), action)
    actor_loss_value = _policy_objective(log_prob, q_values, log_alpha)
    alpha_loss_value = alpha_loss(log_alpha, log_prob, target_entropy)
    return critic_loss_value + actor_loss_value + alpha_loss_value, {
        **metrics, "actor_loss": actor_loss_value, "alpha_loss": alpha_loss_value,
        "log_prob": log_prob}
