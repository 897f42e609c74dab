"""BatchNorm for the CPU path: flax.linen.BatchNorm with batch statistics whose backward pass is
written out (`batch_norm`), not derived by autodiff.

In training mode Flax computes the batch mean and mean square over (batch, height, width) and
autodiff differentiates through both reductions and the normalisation: on XLA:CPU (two cores,
the published U-Net, batch 16 at 64x64) the 18 BatchNorm layers cost about 110 ms of a 0.9 s
train step (measured by replacing them with an affine map). Here the statistics are reductions
of the activations viewed as [pixels, channels] and the backward pass is the textbook one (two
reductions, one fused element-wise pass): the train step went from 0.93 s to 0.85 s in one
process (`UNet.conv_impl` 'custom', the CPU default, uses it). The numbers are those of Flax's
BatchNorm to float32 rounding (its `use_fast_variance` formula: var = E[x^2] - E[x]^2, clipped
at 0). Inference (running averages) and initialisation are Flax's own code, bit for bit.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _channel_sum(x: Array) -> Array:
    """Sum over every axis but the last (channels), as a reduction of [pixels, channels].

    The barrier keeps XLA from folding the reshape back into a reduction over (batch, height,
    width), which XLA:CPU rewrites into a slow reduce-window at 64x64 (measured in the train
    step: 0.88 s with the fold, 0.85 s without, 0.93 s with Flax's BatchNorm)."""
    return jax.lax.optimization_barrier(x.reshape(-1, x.shape[-1])).sum(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm(x: Array, scale: Array, bias: Array, epsilon: float) -> tuple[Array, Array, Array]:
    """Training-mode batch normalisation over all axes but the last.

    Args:
      x: float32 activations [..., C].
      scale, bias: [C].
      epsilon: added to the variance.

    Returns:
      (y = (x - mean) * rsqrt(var + epsilon) * scale + bias, mean [C], var [C]); mean and var
      are the biased batch statistics (Flax's), for the running averages.
    """
    return _forward(x, scale, bias, epsilon)[0]


def _forward(x, scale, bias, epsilon):
    m = x.size // x.shape[-1]
    mean = _channel_sum(x) / m
    var = jnp.maximum(_channel_sum(x * x) / m - mean * mean, 0.0)
    rstd = jax.lax.rsqrt(var + epsilon)
    y = (x - mean) * (rstd * scale) + bias
    return (y, mean, var), (x, mean, rstd, scale)


def _backward(epsilon, residuals, cotangents):
    del epsilon
    x, mean, rstd, scale = residuals
    g, g_mean, g_var = cotangents
    m = x.size // x.shape[-1]
    centred = x - mean
    x_hat = centred * rstd
    d_bias = _channel_sum(g)
    d_scale = _channel_sum(g * x_hat)
    # dy/dx through the normalisation (mean and variance included), plus the statistics' own
    # outputs (zero cotangents when only y is differentiated, as in training).
    dx = (scale * rstd) * (g - (d_bias + x_hat * d_scale) / m)
    dx = dx + (g_mean + 2.0 * g_var * centred) / m
    return dx, d_scale, d_bias


batch_norm.defvjp(_forward, _backward)


class BatchNorm(nn.BatchNorm):
    """flax.linen.BatchNorm (feature axis -1, no axis_name or mask) whose training-mode
    statistics and gradients come from `batch_norm`. Its class name keeps Flax's automatic
    module names (BatchNorm_0, ...), so checkpoints are interchangeable."""

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        frozen = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        custom = not (
            frozen
            or self.is_initializing()
            or mask is not None
            or self.axis not in (-1, x.ndim - 1)
            or self.axis_name is not None
            or not (self.use_scale and self.use_bias and self.use_fast_variance)
        )
        if not custom:
            return super().__call__(x, use_running_average, mask=mask)
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        y, mean, var = batch_norm(
            x.astype(jnp.float32),
            scale.astype(jnp.float32),
            bias.astype(jnp.float32),
            self.epsilon,
        )
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y.astype(nn.dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype))
