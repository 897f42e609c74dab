"""Dropout with flax.linen.Dropout's masks, bit for bit, from a threefry that XLA:CPU fuses.

On the CPU backend JAX lowers its threefry-2x32 hash as a rolled loop (5 iterations of 4 rounds,
to keep compile times down), so every dropout mask makes XLA write and re-read two uint32 arrays
of the mask's size five times. Monte-Carlo scoring draws a mask per decoder activation per pass
(40 million numbers for BALD's 10 passes over 16 slices at 64x64), and there the loop cost a
sixth of the run. `Dropout` computes the same hash unrolled, as JAX itself does on GPUs, from
the same key, counters and bit-to-float conversion as `jax.random.bernoulli`, for both the
classic and the partitionable threefry, so the masks are identical and XLA fuses the hash into
one loop (tests/test_dropout.py compares them with flax's on many shapes, rates and keys).
Keys of any other PRNG implementation, and `broadcast_dims`, go through flax's own code.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)
_MAX_SIZE = 2**32 - 1  # one block of counters


def _rotate_left(v: Array, d: int) -> Array:
    return lax.shift_left(v, np.uint32(d)) | lax.shift_right_logical(v, np.uint32(32 - d))


def threefry2x32(k1: Array, k2: Array, x1: Array, x2: Array) -> tuple[Array, Array]:
    """The Threefry-2x32 hash (20 rounds) of counters (x1, x2) under key (k1, k2), unrolled:
    the numbers of JAX's `threefry2x32_p`."""
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = _rotate_left(x2, r) ^ x1
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def random_bits32(key: Array, shape: tuple[int, ...]) -> Array:
    """`jax.random.bits(key, shape, uint32)` for a threefry2x32 key, under the threefry
    setting in force (`jax_threefry_partitionable`)."""
    k1, k2 = jax.random.key_data(key)
    size = math.prod(shape)
    if size >= _MAX_SIZE:  # JAX splits the key into blocks there; not reproduced here
        raise ValueError(f"random_bits32: {size} numbers are more than one threefry block")
    if getattr(jax.config, "jax_threefry_partitionable", False):  # (JAX without it: classic)
        # One hash per element of counters (high, low word of its flat index); bits = o1 ^ o2.
        lo = lax.iota(np.uint32, size).reshape(shape)
        o1, o2 = threefry2x32(k1, k2, jnp.zeros_like(lo), lo)
        return o1 ^ o2
    # Classic: counters 0 .. size-1, padded with a 0 to even length, split in halves; the
    # hash's two outputs are the halves of the bits, the padding's output dropped.
    half = (size + 1) // 2
    count = lax.iota(np.uint32, half)
    second = jnp.where(count < size - half, count + np.uint32(half), np.uint32(0))
    o1, o2 = threefry2x32(k1, k2, count, second)
    return jnp.concatenate([o1, o2])[:size].reshape(shape)


def bernoulli(key: Array, p: float, shape: tuple[int, ...]) -> Array:
    """`jax.random.bernoulli(key, p, shape)` (float32 uniforms below p) for a threefry key."""
    bits = random_bits32(key, shape)
    one = np.array(1.0, np.float32).view(np.uint32)
    floats = lax.bitcast_convert_type(lax.shift_right_logical(bits, np.uint32(9)) | one, np.float32)
    return floats - np.float32(1.0) < jnp.asarray(p, jnp.float32)


def _is_threefry(key: Array) -> bool:
    return jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and "threefry2x32" in str(
        jax.random.key_impl(key)
    )


class Dropout(nn.Dropout):
    """flax.linen.Dropout whose threefry masks come from `bernoulli` (the same masks)."""

    @nn.compact
    def __call__(self, inputs, deterministic: bool | None = None, rng: Array | None = None):
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic or self.rate == 1.0 or self.broadcast_dims:
            return super().__call__(inputs, deterministic, rng)
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        if not _is_threefry(rng) or math.prod(inputs.shape) >= _MAX_SIZE:
            return super().__call__(inputs, deterministic, rng)
        keep_prob = 1.0 - self.rate
        mask = bernoulli(rng, keep_prob, inputs.shape)
        return lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))
