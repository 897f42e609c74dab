"""Per-stream scores, their rankings and the merges of the target and boundary rankings.

Host-side NumPy on per-slice numbers only. The conventions (``paper``, ``official``), the merges
and the class-balanced target order are described in `selal_jax.core.selection`, whose `select`
combines these into a query.
"""

from __future__ import annotations

import math

import numpy as np

from selal_jax.core.spread import QueryBuilder, Spread


def stream_scores(stats, stream: str, aggregation: str, convention: str):
    """Per-slice score and empty-mask flag of one stream.

    Args:
      stats: SliceStats of NumPy arrays, [U] each.
      stream: 'all', 'target' or 'boundary'.

    Returns:
      (score [U] float64, empty [U] bool).
    """
    if stream == "all":
        total = np.asarray(stats.all_sum, np.float64)
        count = np.asarray(stats.all_count, np.float64)
        if convention == "paper" and aggregation == "mean":
            total = total / count
        return total, np.zeros(total.shape, bool)
    total = np.asarray(getattr(stats, f"{stream}_sum"), np.float64)
    count = np.asarray(getattr(stats, f"{stream}_count"), np.float64)
    empty = count == 0
    if convention == "official" or aggregation == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            total = np.where(empty, 0.0, total / np.where(empty, 1.0, count))
    else:
        total = np.where(empty, 0.0, total)
    return total, empty


def class_target_scores(stats, aggregation: str):
    """Per-slice, per-class target scores ('paper' convention).

    Args:
      stats: SliceStats of NumPy arrays; without per-class fields (stats built from the six
        binary fields) the target stream is the one class.

    Returns:
      (score [U, C] float64, empty [U, C] bool).
    """
    if stats.class_target_sum is None or stats.class_target_count is None:
        total, count = stats.target_sum, stats.target_count
    else:
        total, count = stats.class_target_sum, stats.class_target_count
    total = np.asarray(total, np.float64).reshape(len(stats.target_sum), -1)
    count = np.asarray(count, np.float64).reshape(total.shape)
    empty = count == 0
    if aggregation == "mean":
        total = total / np.where(empty, 1.0, count)
    return np.where(empty, 0.0, total), empty


def balanced_target_order(
    class_score: np.ndarray, class_empty: np.ndarray, order_t: np.ndarray, order_of=None
) -> tuple[np.ndarray, np.ndarray]:
    """Round-robin distinct merge of the C per-class target rankings.

    Turn by turn, class 1, 2, ..., C each takes its best slice not yet taken among those with
    pixels of that class; a class that has none left yields its turn (its remaining ranking is
    empty masks in pool order, arbitrary slices). When every class is used up, the remaining
    positions follow `order_t`, the plain target ranking.

    Args:
      class_score, class_empty: [U, C] from `class_target_scores`.
      order_t: [U] the plain target ranking.
      order_of: order_of(score [U], empty [U], c) -> class c's (1..C) order, with the slices
        with pixels first; default: its 'paper' ranking. A sampled order (`selal_jax.core.sampling`)
        makes the round-robin a class-stratified sample.

    Returns:
      (order [U], a permutation of 0..U-1; chooser [U] int, the class 1..C whose ranking took
      each position, 0 for those that followed `order_t`).
    """
    n, n_classes = class_score.shape
    if order_of is None:

        def order_of(score, empty, _):
            return rank(score, empty, "paper")

    orders = [order_of(class_score[:, c], class_empty[:, c], c + 1) for c in range(n_classes)]
    n_with_pixels = (~class_empty).sum(axis=0)
    order, chooser, seen = [], [], np.zeros(n, bool)
    cursors = [0] * n_classes
    remaining = True
    while remaining:
        remaining = False
        for c in range(n_classes):
            while cursors[c] < n_with_pixels[c] and seen[orders[c][cursors[c]]]:
                cursors[c] += 1
            if cursors[c] < n_with_pixels[c]:
                position = orders[c][cursors[c]]
                seen[position] = True
                order.append(position)
                chooser.append(c + 1)
                remaining = True
    rest = np.asarray(order_t, np.int64)
    rest = rest[~seen[rest]]  # in order_t's order; arrays, not a Python int per pool slice
    order = np.concatenate([np.asarray(order, np.int64), rest])
    return order, np.concatenate([np.asarray(chooser, np.int64), np.zeros(len(rest), np.int64)])


def rank(score: np.ndarray, empty: np.ndarray, convention: str) -> np.ndarray:
    """Positions 0..U-1 from most to least wanted.

    'paper': non-empty before empty, then descending score, then ascending position.
    'official': ascending score (empty = 0.0), stable (ties keep ascending position).
    """
    positions = np.arange(len(score))
    if convention == "official":
        return np.lexsort((positions, score))
    return np.lexsort((positions, -score, empty))


def merge_union(
    order_t: np.ndarray, order_b: np.ndarray, k: int, spread: Spread | None = None
) -> tuple[list[int], list[str]]:
    """TopK(target, ceil(k/2)) united with TopK(boundary, floor(k/2)), then filled to k.

    With `spread` (see `selal_jax.core.spread`), a refused slice does not count: the target walk
    goes on until it has ceil(k/2), the boundary walk until it has offered floor(k/2) slices
    that are taken or already taken, and a turn of the fill until it takes or meets a taken one.
    """
    k = min(k, len(order_t))
    query = QueryBuilder(k, spread)
    k_t = math.ceil(k / 2)
    it_t, it_b = iter(order_t), iter(order_b)
    taken = 0
    while taken < k_t:
        outcome = query.next_taken(it_t, "target")
        if outcome is None:
            break
        taken += outcome == "taken"
    for _ in range(k - k_t):
        query.next_taken(it_b, "boundary")
    # Overlap: fill from the next best of either ranking, alternating, starting with boundary
    # (the stream that lost slices to the overlap).
    turn, exhausted = 1, [False, False]
    while not query.full and not all(exhausted):
        stream, it = (("target", it_t), ("boundary", it_b))[turn]
        if query.next_taken(it, stream) is None:
            exhausted[turn] = True
        turn = 1 - turn
    return query.finish()


def merge_interleave(order_t, order_b, k: int, spread=None) -> tuple[list[int], list[str]]:
    """The first k distinct entries of t1, b1, t2, b2, ... (exactly min(k, U) slices) that
    `spread` allows, then filled from those it refused."""
    k = min(k, len(order_t))
    query = QueryBuilder(k, spread)
    for t, b in zip(order_t, order_b, strict=True):
        for position, stream in ((t, "target"), (b, "boundary")):
            if not query.full:
                query.offer(position, stream)
        if query.full:
            break
    return query.finish()


def merge_interleave_official(order_t, order_b, k: int) -> tuple[list[int], list[str]]:
    """The published merge: U turns alternating T, B; a duplicate wastes its turn."""
    picked, streams, seen = [], [], set()
    for turn in range(len(order_t)):
        if len(picked) == k:
            break
        position = int((order_t if turn % 2 == 0 else order_b)[turn // 2])
        if position in seen:
            continue
        seen.add(position)
        picked.append(position)
        streams.append("target" if turn % 2 == 0 else "boundary")
    return picked, streams
