"""selal_jax.core.dropout: flax's dropout masks, bit for bit, from the unrolled threefry."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selal_jax.core import dropout, rng
from tests.helpers import all_eqns

SHAPES = [(1,), (7,), (3, 5), (2, 8, 8, 3), (1, 4, 4, 512), (2, 5, 7, 3)]


def _both(shape, rate, key):
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape).astype(np.float32)) + 3.0
    return [
        layer(rate).apply({}, x, deterministic=False, rngs={"dropout": key})
        for layer in (nn.Dropout, dropout.Dropout)
    ]


@pytest.mark.parametrize("classic", [True, False], ids=["classic", "partitionable"])
def test_masks_are_flax_s_bit_for_bit(classic):
    """Odd and even sizes (the classic threefry pads odd ones), several rates and keys, under
    both threefry settings: the same outputs as flax.linen.Dropout."""
    setting = rng.classic_threefry() if classic else jax.threefry_partitionable(True)
    with setting:
        for i, shape in enumerate(SHAPES):
            for rate in (0.1, 0.2, 0.5):
                key = jax.random.fold_in(jax.random.key(11 + i), 3)
                expected, got = _both(shape, rate, key)
                np.testing.assert_array_equal(got, expected)
        # Large enough that the dropped fraction is a check of the rate itself.
        expected, got = _both((64, 64, 32), 0.2, jax.random.key(5))
        np.testing.assert_array_equal(got, expected)
        assert abs(float(jnp.mean(got == 0)) - 0.2) < 0.005


def test_bits_are_jax_random_bits():
    with rng.classic_threefry():
        key = jax.random.key(3)
        for shape in SHAPES:
            np.testing.assert_array_equal(
                dropout.random_bits32(key, shape), jax.random.bits(key, shape, jnp.uint32)
            )


def test_other_keys_and_broadcast_dims_take_flax_s_path():
    x = jnp.arange(24.0).reshape(2, 3, 4) + 1.0
    raw = jax.random.PRNGKey(0)  # a legacy uint32 key: flax's own code
    for kwargs, key in [({}, raw), ({"broadcast_dims": (1,)}, jax.random.key(0))]:
        expected, got = (
            layer(0.5, **kwargs).apply({}, x, deterministic=False, rngs={"dropout": key})
            for layer in (nn.Dropout, dropout.Dropout)
        )
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(dropout.Dropout(0.5).apply({}, x, deterministic=True), x)


def test_the_mask_is_no_random_bits_call():
    """The fast path is taken: no `random_bits` (whose CPU lowering is the rolled loop)."""
    x = jnp.ones((2, 8, 8, 3))
    names = {}
    for layer in (nn.Dropout, dropout.Dropout):
        fn = lambda k, layer=layer: layer(0.2).apply(  # noqa: E731
            {}, x, deterministic=False, rngs={"dropout": k}
        )
        names[layer] = [
            e.primitive.name for e in all_eqns(jax.make_jaxpr(fn)(jax.random.key(0)).jaxpr)
        ]
    assert "random_bits" in names[nn.Dropout]
    assert "random_bits" not in names[dropout.Dropout]
