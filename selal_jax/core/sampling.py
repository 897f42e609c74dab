"""Stochastic acquisition: one ranking sampled without replacement by Gumbel-top-k.

Host-side NumPy on per-slice scores, with one JAX call for the noise. For a stream's scores s
(``paper`` convention: higher = more uncertain, s >= 0) and ``beta`` > 0, each slice i gets a
log-weight

* ``power``:    beta * ln s_i                (P proportional to s_i^beta; s_i = 0: weight 0)
* ``softmax``:  beta * s_i                   (P proportional to exp(beta s_i))
* ``softrank``: -beta * ln r_i               (P proportional to r_i^-beta, r_i = 1, 2, ... the
                                              slice's place in the top-k ranking of the stream)

and the order is the descending order of log-weight + G_i, G_i standard Gumbel. Its first k
entries are a draw of k slices without replacement, each next slice drawn with probability
proportional to its weight among those left (the Plackett-Luce model; Kirsch et al.,
"Stochastic Batch Acquisition", TMLR 2023; nnActive's power noising is the same: ln s + a
Gumbel of scale 1/beta). Slices with an empty mask come after every other slice (they score 0
in the top-k ranking too), power's zero-weight slices (s = 0, mask not empty) before them; each
of these two groups in the order of its noise alone, i.e. uniformly at random. ``softmax``
depends on the scale of the scores (a sum over hundreds of pixels makes beta = 1 nearly top-k);
``power`` and ``softrank`` do not.

G_i is drawn from `rng.noise_key(stream_key, pool id)`, so a slice's noise does not depend on
the other candidates, their order, the batch size or the device count; ties (of measure zero)
break by ascending pool id.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from selal_jax.core import rng

SAMPLINGS = ("top_k", "power", "softmax", "softrank")
_MIN_PADDED = 64  # ids are padded to a power of two >= this: few compiled shapes


@jax.jit
def _noise_bits(stream_key, ids):
    return jax.vmap(lambda i: jax.random.bits(rng.noise_key(stream_key, i), (2,), jnp.uint32))(ids)


@rng.with_classic_threefry
def gumbel(stream_key, ids) -> np.ndarray:
    """Standard Gumbel noise [n] float64 of pool ids [n], one draw per id from its noise key.

    Two 32-bit words of the id's key make a uniform u in (0, 1) from 52 random bits (the
    midpoint of its 2^-52 cell, exact in float64, so never 0 or 1); G = -ln(-ln u).
    """
    ids = np.asarray(ids, np.int64)
    n = len(ids)
    padded = max(_MIN_PADDED, 1 << max(n - 1, 0).bit_length())
    words = np.zeros((padded,), np.int32)
    words[:n] = ids
    bits = np.asarray(_noise_bits(stream_key, jnp.asarray(words)))[:n].astype(np.uint64)
    mantissa = (bits[:, 0] >> np.uint64(6)) * np.uint64(1 << 26) + (bits[:, 1] >> np.uint64(6))
    u = (mantissa.astype(np.float64) + 0.5) / float(1 << 52)
    return -np.log(-np.log(u))


def log_weights(score: np.ndarray, empty: np.ndarray, ids: np.ndarray, sampling: str, beta):
    """(log-weight [U] float64, tier [U] int): tier 0 = drawn by weight, 1 = power's zero
    weights, 2 = empty masks (tiers 1 and 2 are drawn uniformly, after tier 0)."""
    score = np.asarray(score, np.float64)
    empty = np.asarray(empty, bool)
    beta = float(beta)
    tier = np.where(empty, 2, 0)
    if sampling == "power":
        positive = score > 0
        tier = np.where(~empty & ~positive, 1, tier)
        logw = beta * np.log(np.where(positive, score, 1.0))  # log 1 = 0 where not drawn
    elif sampling == "softmax":
        logw = beta * score
    elif sampling == "softrank":
        ranked = np.lexsort((ids, -score, empty))  # the top-k ranking, ties by pool id
        place = np.empty(len(score), np.float64)
        place[ranked] = np.arange(1, len(score) + 1)
        logw = -beta * np.log(place)
    else:
        raise ValueError(f"unknown sampling {sampling!r}; expected one of {SAMPLINGS[1:]}")
    return np.where(tier == 0, logw, 0.0), tier


def sampled_order(score, empty, ids, sampling: str, beta, stream_key) -> np.ndarray:
    """One stream's ranking sampled by Gumbel-top-k (see the module docstring).

    Args:
      score, empty: [U] the stream's scores and empty-mask flags (`ranking.stream_scores`).
      ids: [U] the candidates' pool ids (the noise's index).
      sampling: 'power', 'softmax' or 'softrank'.
      stream_key: `rng.stream_key` of this stream.

    Returns:
      [U] positions 0..U-1, the order in which the stream offers them.
    """
    ids = np.asarray(ids, np.int64)
    logw, tier = log_weights(score, empty, ids, sampling, beta)
    perturbed = logw + gumbel(stream_key, ids)
    return np.lexsort((ids, -perturbed, tier))
