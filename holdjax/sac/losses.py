"""SAC losses as pure functions of parameters and a float batch.

They take the policy's standard-normal noise instead of a PRNG key, so each loss is a
deterministic function of its inputs; `update.py` draws the noise. Formulas follow the
reference (softlearning's SAC): per-Q loss 0.5 * MSE, actor loss alpha * log pi - min Q,
temperature loss on log alpha.
"""

import chex
import jax
import jax.numpy as jnp

from holdjax.sac.networks import SACNetworks, sample_tanh_gaussian
from holdjax.sac.replay import Transition

Params = chex.ArrayTree


def td_target(
    target_critic_params: Params,
    actor_params: Params,
    log_alpha: jax.Array,
    batch: Transition,
    next_noise: jax.Array,
    networks: SACNetworks,
    discount: float,
) -> jax.Array:
    """r + discount * (1 - done) * (min target Q(s', a') - alpha * log pi(a'|s')), a' ~ pi."""
    next_mean, next_log_std = networks.actor.apply(actor_params, batch.next_obs)
    next_action, next_log_prob = sample_tanh_gaussian(next_mean, next_log_std, next_noise)
    next_q = jnp.min(networks.critic.apply(target_critic_params, batch.next_obs, next_action), 0)
    soft_next_value = next_q - jnp.exp(log_alpha) * next_log_prob
    target = batch.reward + discount * (1.0 - batch.done) * soft_next_value
    return jax.lax.stop_gradient(target)


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
    """Sum over the two Q heads of 0.5 * mean squared TD error against the shared target."""
    chex.assert_rank([batch.reward, batch.done], 1)
    target = td_target(
        target_critic_params, actor_params, log_alpha, batch, next_noise, networks, discount
    )
    q_values = networks.critic.apply(critic_params, batch.obs, batch.action)
    chex.assert_shape(q_values, (2, *target.shape))
    loss = jnp.sum(0.5 * jnp.mean((q_values - target) ** 2, axis=1))
    return loss, {
        "critic_loss": loss,
        "q_mean": jnp.mean(q_values),
        "td_target_mean": target.mean(),
    }


def actor_loss(
    actor_params: Params,
    critic_params: Params,
    log_alpha: jax.Array,
    obs: jax.Array,
    noise: jax.Array,
    networks: SACNetworks,
) -> tuple[jax.Array, jax.Array]:
    """mean(alpha * log pi(a|s) - min Q(s, a)) with a reparameterised; returns (loss, log pi).

    Only `actor_params` should be differentiated: alpha and the critic are held fixed here.
    """
    mean, log_std = networks.actor.apply(actor_params, obs)
    action, log_prob = sample_tanh_gaussian(mean, log_std, noise)
    min_q = jnp.min(networks.critic.apply(critic_params, obs, action), 0)
    alpha = jax.lax.stop_gradient(jnp.exp(log_alpha))
    return jnp.mean(alpha * log_prob - min_q), log_prob


def alpha_loss(log_alpha: jax.Array, log_prob: jax.Array, target_entropy: float) -> jax.Array:
    """-mean(log alpha * (log pi + target entropy)): raises alpha while entropy is below target.

    Written on log alpha, as the reference does, which sets the gradient's scale.
    """
    return -jnp.mean(log_alpha * jax.lax.stop_gradient(log_prob + target_entropy))
