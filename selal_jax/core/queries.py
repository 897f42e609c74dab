"""A round's query (`Query`) and the draws that rank nothing: `random`, `random_predicted`,
`random_label`.

Each draw walks a random permutation of the candidates (`spread.QueryBuilder`), so the volume
limits (al.max_per_case, al.min_slice_gap) apply to it as to a ranking.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from absl import logging

from selal_jax.core import rng
from selal_jax.core.spread import QueryBuilder, Spread


@dataclasses.dataclass(frozen=True)
class Query:
    """A round's query.

    Attributes:
      ids: [n] int64 pool ids in selection order.
      streams: per id, the ranking that chose it: 'target', 'boundary', 'all' or 'random';
        'target:<c>' for the class-c ranking of a class-balanced query with C >= 2 classes;
        'random_predicted' ('random_label') for a uniform draw among slices with predicted
        (true) target ('random' for its top-up).
      scores: [n] float64 score of each id in its stream (NaN for random).
    """

    ids: np.ndarray
    streams: tuple[str, ...]
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def warn_if_short(k: int, n_candidates: int) -> None:
    if k > n_candidates:
        logging.warning(
            "query size k=%d exceeds the %d unlabelled slices; taking all of them", k, n_candidates
        )


def _unranked(candidate_ids: np.ndarray, picked, streams) -> Query:
    n = len(picked)
    return Query(candidate_ids[np.asarray(picked, np.int64)], tuple(streams), np.full(n, np.nan))


def select_random(
    candidate_ids: np.ndarray, k: int, key: jax.Array, spread: Spread | None = None
) -> Query:
    """k candidates uniformly without replacement, drawn from `key` (no global state): the
    first k of a permutation of the candidates that `spread` (aligned with them) allows."""
    candidate_ids = np.asarray(candidate_ids, np.int64)
    n = len(candidate_ids)
    warn_if_short(k, n)
    query = QueryBuilder(min(k, n), spread)
    query.walk(np.asarray(jax.random.permutation(key, n)), "random")
    return _unranked(candidate_ids, *query.finish())


def select_random_with_target(
    candidate_ids: np.ndarray,
    pixels: np.ndarray,
    k: int,
    key: jax.Array,
    stream: str,
    spread: Spread | None = None,
) -> Query:
    """k candidates uniformly among those with target pixels, topped up uniformly from the rest.

    The walk is a permutation (from `key`) of the candidates with pixels > 0 (stream `stream`),
    then one (from rng.topup_key(key)) of the others (stream 'random'); without limits it is
    `select_random` with `key` on the first group, then with the top-up key on the second.
    """
    candidate_ids = np.asarray(candidate_ids, np.int64)
    pixels = np.asarray(pixels)
    if pixels.shape != candidate_ids.shape:
        name = {"random_label": "true_pixels"}.get(stream, "predicted_pixels")
        raise ValueError(f"{name}: expected shape {candidate_ids.shape}, got {pixels.shape}")
    n = len(candidate_ids)
    warn_if_short(k, n)
    with_target, without = np.flatnonzero(pixels > 0), np.flatnonzero(pixels <= 0)
    query = QueryBuilder(min(k, n), spread)
    query.walk(with_target[np.asarray(jax.random.permutation(key, len(with_target)))], stream)
    if not query.full:
        if len(with_target) < k:
            logging.info(
                "%s: %d unlabelled slices with target for k=%d; topping up uniformly from the "
                "other %d",
                stream,
                len(with_target),
                k,
                len(without),
            )
        topup = np.asarray(jax.random.permutation(rng.topup_key(key), len(without)))
        query.walk(without[topup], "random")
    return _unranked(candidate_ids, *query.finish())


def select_random_predicted(
    candidate_ids: np.ndarray,
    predicted_pixels: np.ndarray,
    k: int,
    key: jax.Array,
    spread: Spread | None = None,
) -> Query:
    """k candidates uniformly among those with predicted target, topped up uniformly from the rest.

    The first draw is `select_random` with `key` on the candidates whose predicted target pixel
    count is > 0 (stream 'random_predicted'); if fewer than k have any, all of them are taken and
    the rest is `select_random` with rng.topup_key(key) on the other candidates
    (stream 'random'). Scores are NaN (nothing is ranked).

    Args:
      candidate_ids: [U] pool ids of the unlabelled slices.
      predicted_pixels: [U] predicted target pixels of each candidate
        (`diagnostics.predicted_target_counts`).
    """
    return select_random_with_target(
        candidate_ids, predicted_pixels, k, key, "random_predicted", spread
    )


def select_random_label(
    candidate_ids: np.ndarray,
    true_pixels: np.ndarray,
    k: int,
    key: jax.Array,
    spread: Spread | None = None,
) -> Query:
    """`select_random_predicted` on the TRUE target pixels of each candidate
    (`diagnostics.target_pixel_counts`): nnActive's random-label baseline, an upper reference
    that needs the labels of the unlabelled pool (simulated annotator only). Stream
    'random_label', its top-up 'random'."""
    return select_random_with_target(candidate_ids, true_pixels, k, key, "random_label", spread)
