"""SAC networks with the reference's architecture, and the tanh-squashed Gaussian policy.

Kernels use Glorot-uniform initialisation and biases zeros, the Keras defaults the reference
was trained with (flax defaults to LeCun-normal).
"""

from collections.abc import Sequence
from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0

glorot_uniform = nn.initializers.xavier_uniform()


class Encoder(nn.Module):
    """[conv SAME, ReLU, 2x2 max-pool] per entry of `filters`, then flatten; no dense layer."""

    filters: Sequence[int] = (8, 8)
    kernel_size: int = 5

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        chex.assert_rank(images, 4)
        x = images
        for num_filters in self.filters:
            x = nn.Conv(
                num_filters,
                (self.kernel_size, self.kernel_size),
                padding="SAME",
                kernel_init=glorot_uniform,
            )(x)
            x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return x.reshape(x.shape[0], -1)


class MLP(nn.Module):
    """ReLU hidden layers, linear output; layers named so tests can read the weights."""

    hidden_sizes: Sequence[int]
    output_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, size in enumerate(self.hidden_sizes):
            x = nn.relu(nn.Dense(size, kernel_init=glorot_uniform, name=f"hidden_{i}")(x))
        return nn.Dense(self.output_size, kernel_init=glorot_uniform, name="output")(x)


class Critic(nn.Module):
    """Two Q heads on one shared encoder (as in the reference); returns Q values shaped (2, B).

    With `from_pixels=False` observations are state vectors fed straight to the heads.
    """

    hidden_sizes: Sequence[int] = (256, 256)
    encoder_filters: Sequence[int] = (8, 8)
    encoder_kernel_size: int = 5
    from_pixels: bool = True

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        chex.assert_rank(action, 2)
        chex.assert_equal_shape_prefix((obs, action), 1)
        features = obs
        if self.from_pixels:
            features = Encoder(self.encoder_filters, self.encoder_kernel_size, name="encoder")(obs)
        features_and_action = jnp.concatenate([features, action], axis=-1)
        q_values = jnp.stack(
            [MLP(self.hidden_sizes, 1, name=f"q{i}")(features_and_action)[:, 0] for i in (1, 2)]
        )
        chex.assert_shape(q_values, (2, obs.shape[0]))
        return q_values


class Actor(nn.Module):
    """Own encoder + MLP giving the pre-tanh Gaussian's mean and log-std clipped to [-20, 2]."""

    action_dim: int
    hidden_sizes: Sequence[int] = (256, 256)
    encoder_filters: Sequence[int] = (8, 8)
    encoder_kernel_size: int = 5
    from_pixels: bool = True

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        features = obs
        if self.from_pixels:
            features = Encoder(self.encoder_filters, self.encoder_kernel_size, name="encoder")(obs)
        chex.assert_rank(features, 2)
        mean_and_log_std = MLP(self.hidden_sizes, 2 * self.action_dim, name="torso")(features)
        mean, log_std = jnp.split(mean_and_log_std, 2, axis=-1)
        return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


class SACNetworks(NamedTuple):
    """The two stateless module definitions; parameters live in the training state."""

    actor: Actor
    critic: Critic


def make_networks(
    action_dim: int,
    from_pixels: bool,
    hidden_sizes: Sequence[int] = (256, 256),
    encoder_filters: Sequence[int] = (8, 8),
    encoder_kernel_size: int = 5,
) -> SACNetworks:
    """Actor and critic sharing one architecture description (each has its own encoder)."""
    shared = dict(
        hidden_sizes=tuple(hidden_sizes),
        encoder_filters=tuple(encoder_filters),
        encoder_kernel_size=encoder_kernel_size,
        from_pixels=from_pixels,
    )
    return SACNetworks(actor=Actor(action_dim=action_dim, **shared), critic=Critic(**shared))


def tanh_log_det_jacobian(pre_tanh: jax.Array) -> jax.Array:
    """log(1 - tanh(u)^2) written as 2 (log 2 - u - softplus(-2u)), finite for large |u|."""
    return 2.0 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh))


def sample_tanh_gaussian(
    mean: jax.Array, log_std: jax.Array, noise: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Reparameterised action tanh(mean + std * noise) and its log-density, summed over dims.

    Takes the standard-normal `noise` rather than a key so callers (and tests) control it.
    """
    chex.assert_equal_shape((mean, log_std, noise))
    pre_tanh = mean + jnp.exp(log_std) * noise
    gaussian_log_prob = -0.5 * noise**2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi)
    log_prob = jnp.sum(gaussian_log_prob - tanh_log_det_jacobian(pre_tanh), axis=-1)
    return jnp.tanh(pre_tanh), log_prob


def sample_action(
    actor: Actor, actor_params: chex.ArrayTree, obs: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Stochastic policy action in [-1, 1] and its log-probability (exploration, losses)."""
    mean, log_std = actor.apply(actor_params, obs)
    return sample_tanh_gaussian(mean, log_std, jax.random.normal(key, mean.shape))


def deterministic_action(actor: Actor, actor_params: chex.ArrayTree, obs: jax.Array) -> jax.Array:
    """tanh of the Gaussian mean: the action used in evaluation episodes."""
    mean, _ = actor.apply(actor_params, obs)
    return jnp.tanh(mean)
