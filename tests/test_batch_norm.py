"""selal_jax.core.batch_norm: Flax's BatchNorm to float32 rounding, with a hand-written backward."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from selal_jax.core import batch_norm

EPS = 1e-5


def _numpy_reference(x, scale, bias, g):
    """Batch norm over all axes but the last and its gradients, in float64 by hand."""
    x, scale, bias, g = (np.asarray(a, np.float64) for a in (x, scale, bias, g))
    axes = tuple(range(x.ndim - 1))
    m = x.size // x.shape[-1]
    mean = x.mean(axes)
    var = (x * x).mean(axes) - mean**2
    x_hat = (x - mean) / np.sqrt(var + EPS)
    y = x_hat * scale + bias
    d_bias = g.sum(axes)
    d_scale = (g * x_hat).sum(axes)
    dx = scale / np.sqrt(var + EPS) * (g - d_bias / m - x_hat * d_scale / m)
    return y, mean, var, dx, d_scale, d_bias


def _data(shape, seed=0):
    gen = np.random.default_rng(seed)
    c = shape[-1]
    x = (gen.standard_normal(shape) * 2 + 1).astype(np.float32)
    scale = (gen.random(c) + 0.5).astype(np.float32)
    bias = gen.standard_normal(c).astype(np.float32)
    g = gen.standard_normal(shape).astype(np.float32)
    return x, scale, bias, g


def test_statistics_and_gradients_match_a_float64_computation():
    for shape in [(4, 6, 5, 3), (16, 16, 16, 128), (2, 3, 7)]:
        x, scale, bias, g = _data(shape)
        (y, mean, var), vjp = jax.vjp(lambda *a: batch_norm.batch_norm(*a, EPS), x, scale, bias)
        dx, d_scale, d_bias = vjp((jnp.asarray(g), jnp.zeros_like(mean), jnp.zeros_like(var)))
        ref = _numpy_reference(x, scale, bias, g)
        for got, want in zip((y, mean, var, dx, d_scale, d_bias), ref, strict=True):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


def test_the_statistics_outputs_are_differentiated_too():
    """d mean / dx = 1/m, d var / dx = 2 (x - mean) / m: checked against autodiff of the
    plain formula."""
    x, scale, bias, _ = _data((3, 4, 5, 2), seed=1)

    def plain(x):
        mean = x.mean((0, 1, 2))
        return jnp.sum(mean * 3.0) + jnp.sum(jnp.maximum((x * x).mean((0, 1, 2)) - mean**2, 0))

    def custom(x):
        _, mean, var = batch_norm.batch_norm(x, scale, bias, EPS)
        return jnp.sum(mean * 3.0) + jnp.sum(var)

    np.testing.assert_allclose(jax.grad(custom)(x), jax.grad(plain)(x), rtol=1e-5, atol=1e-6)


def test_the_module_is_flax_s_batchnorm():
    """Same variables; training outputs, running averages and gradients to rounding; inference
    bit for bit; bfloat16 compute gives flax's output dtype."""
    x, _, _, g = _data((8, 6, 6, 4), seed=2)
    kwargs = dict(momentum=0.9, epsilon=EPS)
    ours, flax_bn = batch_norm.BatchNorm(**kwargs), nn.BatchNorm(**kwargs)
    variables = flax_bn.init(jax.random.key(0), x, use_running_average=False)
    assert jax.tree_util.tree_structure(
        ours.init(jax.random.key(0), x, use_running_average=False)
    ) == jax.tree_util.tree_structure(variables)
    variables = {
        "params": {"scale": jnp.linspace(0.5, 2.0, 4), "bias": jnp.linspace(-1.0, 1.0, 4)},
        "batch_stats": {"mean": jnp.full(4, 0.3), "var": jnp.full(4, 2.0)},
    }

    def train(layer, params, x):
        y, updates = layer.apply(
            {**variables, "params": params}, x, use_running_average=False, mutable=["batch_stats"]
        )
        return jnp.sum(y * g), (y, updates["batch_stats"])

    (_, (y_f, stats_f)), grads_f = jax.value_and_grad(
        lambda p, z: train(flax_bn, p, z), argnums=(0, 1), has_aux=True
    )(variables["params"], x)
    (_, (y_o, stats_o)), grads_o = jax.value_and_grad(
        lambda p, z: train(ours, p, z), argnums=(0, 1), has_aux=True
    )(variables["params"], x)
    np.testing.assert_allclose(y_o, y_f, rtol=1e-5, atol=1e-5)
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves((stats_o, grads_o)), leaves((stats_f, grads_f)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    inference = [layer.apply(variables, x, use_running_average=True) for layer in (flax_bn, ours)]
    np.testing.assert_array_equal(inference[1], inference[0])
    half = [
        layer.clone(dtype=jnp.bfloat16).apply(
            variables, x.astype(jnp.bfloat16), use_running_average=False, mutable=["batch_stats"]
        )[0]
        for layer in (flax_bn, ours)
    ]
    assert half[0].dtype == half[1].dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(half[1], np.float32), np.asarray(half[0], np.float32), rtol=2e-2, atol=2e-2
    )
