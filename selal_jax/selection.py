"""Ranking of per-slice scores and merging of the target and boundary streams into a query.

Host-side NumPy on per-slice numbers only (a few floats per slice).

Conventions (see `selal_jax.scoring`):

* ``paper``: higher score = more uncertain. A slice whose mask is empty scores 0 and ranks after
  every slice whose mask has pixels; ties break by pool order. ``aggregation`` is ``sum`` or
  ``mean`` over the selected pixels. Merges (mode ``selective``):
  ``union`` (default) takes TopK(target, ceil(k/2)) united with TopK(boundary, floor(k/2)) and, if
  they overlap, fills up to k from the next best of either ranking, alternating;
  ``interleave`` takes the first k distinct entries of t1, b1, t2, b2, ...
  Both always return exactly min(k, unlabelled) distinct slices.
* ``official``: the published code. Plain mode ranks ``sum(u)`` ascending; masked modes rank the
  *mean* of ``u`` over the mask ascending (an empty mask scores 0.0) with a stable sort; the
  selective merge alternates turns between the two rankings, a duplicate wasting its turn, over at
  most U turns, so it can return fewer than k slices (a warning is logged).

Class-balanced option (``class_balanced=True``, ``paper`` convention, modes ``target`` and
``selective``): the target ranking is replaced by a balanced order, a round-robin over the C
per-class target rankings (class c's pixels p_c > T, each ranked like the target stream) that
skips slices already taken; a class whose slices with pixels are used up yields its turn, and
once every class is used up the rest follows the plain target ranking. The boundary stream and
the merges are unchanged, so with C = 1 the query is the unbalanced one. Slices chosen for class
c are recorded as stream 'target:<c>' (C >= 2; 'target' for C = 1 and for the rest).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from absl import logging

from selal_jax import parallel, rng, scoring
from selal_jax.errors import ConfigError
from selal_jax.ranking import (
    balanced_target_order,
    class_target_scores,
    merge_interleave,
    merge_interleave_official,
    merge_union,
    rank,
    stream_scores,
)

MODES = ("all", "target", "boundary", "selective")
AGGREGATIONS = ("sum", "mean")
MERGES = ("union", "interleave")


@dataclasses.dataclass(frozen=True)
class Query:
    """A round's query.

    Attributes:
      ids: [n] int64 pool ids in selection order.
      streams: per id, the ranking that chose it: 'target', 'boundary', 'all' or 'random';
        'target:<c>' for the class-c ranking of a class-balanced query with C >= 2 classes;
        'random_predicted' for a uniform draw among slices with predicted target ('random' for
        its top-up).
      scores: [n] float64 score of each id in its stream (NaN for random).
    """

    ids: np.ndarray
    streams: tuple[str, ...]
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def check_class_balanced(mode: str, convention: str) -> None:
    """Raises ValueError if the class-balanced target stream does not apply."""
    if convention != "paper":
        raise ConfigError(
            f"config field al.class_balanced: needs al.convention='paper', got {convention!r} "
            "(the published code is binary)"
        )
    if mode not in ("target", "selective"):
        raise ConfigError(
            "config field al.class_balanced: balances the target stream, which mode "
            f"{mode!r} does not use; expected al.mode 'target' or 'selective'"
        )


def validate_options(
    strategy: str,
    mode: str,
    convention: str,
    aggregation: str,
    merge: str,
    class_balanced: bool = False,
):
    """Raises ValueError naming the config field of an unknown or unsupported option."""
    for field, value, allowed in (
        ("al.strategy", strategy, scoring.STRATEGIES),
        ("al.mode", mode, MODES),
        ("al.convention", convention, scoring.CONVENTIONS),
        ("al.aggregation", aggregation, AGGREGATIONS),
        ("al.merge", merge, MERGES),
    ):
        if value not in allowed:
            raise ConfigError(
                f"config field {field}: unknown value {value!r}; expected one of {allowed}"
            )
    if convention == "official" and strategy == "margin":
        raise ConfigError(
            "config field al.strategy: 'margin' has no 'official' convention (the published margin "
            "code sorts along the image width and is defective); use al.convention='paper'"
        )
    if class_balanced and strategy not in scoring.RANDOM_STRATEGIES:  # nothing ranked to balance
        check_class_balanced(mode, convention)


def select(
    stats,
    candidate_ids: np.ndarray,
    k: int,
    *,
    mode: str,
    convention: str = "paper",
    aggregation: str = "sum",
    merge: str = "union",
    class_balanced: bool = False,
) -> Query:
    """Chooses k slices among the candidates from their per-slice stats.

    Args:
      stats: SliceStats of NumPy arrays, aligned with `candidate_ids`.
      candidate_ids: [U] pool ids of the unlabelled slices, ascending.
      k: number of slices wanted.
      mode: 'all', 'target', 'boundary' or 'selective'.
      class_balanced: take the target stream round-robin from the per-class target rankings
        (see `balanced_target_order`); 'paper' convention, modes 'target' and 'selective'.

    Returns:
      The Query, ids in selection order.
    """
    if class_balanced:
        check_class_balanced(mode, convention)
    candidate_ids = np.asarray(candidate_ids, np.int64)
    n_candidates = len(candidate_ids)
    if k > n_candidates:
        logging.warning(
            "query size k=%d exceeds the %d unlabelled slices; taking all of them", k, n_candidates
        )
    if class_balanced:
        return _select_class_balanced(stats, candidate_ids, k, mode, aggregation, merge)
    if mode == "selective":
        score_t, empty_t = stream_scores(stats, "target", aggregation, convention)
        score_b, empty_b = stream_scores(stats, "boundary", aggregation, convention)
        order_t = rank(score_t, empty_t, convention)
        order_b = rank(score_b, empty_b, convention)
        if convention == "official":
            picked, streams = merge_interleave_official(order_t, order_b, k)
            if len(picked) < min(k, n_candidates):
                logging.warning(
                    "official selective merge returned %d of the %d slices asked for (duplicate "
                    "turns are wasted, as in the published code)",
                    len(picked),
                    k,
                )
        elif merge == "union":
            picked, streams = merge_union(order_t, order_b, k)
        else:
            picked, streams = merge_interleave(order_t, order_b, k)
        by_stream = {"target": score_t, "boundary": score_b}
        scores = np.array([by_stream[s][p] for p, s in zip(picked, streams, strict=True)])
    else:
        score, empty = stream_scores(stats, mode, aggregation, convention)
        picked = [int(p) for p in rank(score, empty, convention)[:k]]
        streams = [mode] * len(picked)
        scores = score[picked]
    return Query(
        candidate_ids[np.asarray(picked, np.int64)], tuple(streams), np.asarray(scores, np.float64)
    )


def _select_class_balanced(stats, candidate_ids, k, mode, aggregation, merge) -> Query:
    """`select` with the balanced target order in place of the target ranking ('paper')."""
    score_t, empty_t = stream_scores(stats, "target", aggregation, "paper")
    class_score, class_empty = class_target_scores(stats, aggregation)
    order_t, chooser = balanced_target_order(
        class_score, class_empty, rank(score_t, empty_t, "paper")
    )
    chosen_by = dict(zip(order_t.tolist(), chooser.tolist(), strict=True))
    if mode == "selective":
        score_b, empty_b = stream_scores(stats, "boundary", aggregation, "paper")
        order_b = rank(score_b, empty_b, "paper")
        merged = merge_union if merge == "union" else merge_interleave
        picked, streams = merged(order_t, order_b, k)
    else:
        picked = [int(p) for p in order_t[:k]]
        streams, score_b = ["target"] * len(picked), None
    several = class_score.shape[1] > 1
    out_streams, scores = [], []
    for position, stream in zip(picked, streams, strict=True):
        c = chosen_by[position] if stream == "target" else 0
        if c and several:
            out_streams.append(f"target:{c}")
            scores.append(class_score[position, c - 1])
        else:
            out_streams.append(stream)
            scores.append((score_t if stream == "target" else score_b)[position])
    return Query(
        candidate_ids[np.asarray(picked, np.int64)],
        tuple(out_streams),
        np.asarray(scores, np.float64),
    )


def select_random(candidate_ids: np.ndarray, k: int, key: jax.Array) -> Query:
    """k candidates uniformly without replacement, drawn from `key` (no global state)."""
    candidate_ids = np.asarray(candidate_ids, np.int64)
    if k > len(candidate_ids):
        logging.warning(
            "query size k=%d exceeds the %d unlabelled slices; taking all of them",
            k,
            len(candidate_ids),
        )
    order = np.asarray(jax.random.permutation(key, len(candidate_ids)))[:k]
    n = len(order)
    return Query(candidate_ids[order], ("random",) * n, np.full(n, np.nan))


def select_random_predicted(
    candidate_ids: np.ndarray, predicted_pixels: np.ndarray, k: int, key: jax.Array
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
    candidate_ids = np.asarray(candidate_ids, np.int64)
    predicted_pixels = np.asarray(predicted_pixels)
    if predicted_pixels.shape != candidate_ids.shape:
        raise ValueError(
            f"predicted_pixels: expected shape {candidate_ids.shape}, got {predicted_pixels.shape}"
        )
    has_target = predicted_pixels > 0
    with_target, without = candidate_ids[has_target], candidate_ids[~has_target]
    first = select_random(with_target, min(k, len(with_target)), key)
    streams = ("random_predicted",) * len(first)
    if len(first) == k:
        return Query(first.ids, streams, first.scores)
    logging.info(
        "random_predicted: %d unlabelled slices with predicted target for k=%d; topping up "
        "uniformly from the other %d",
        len(with_target),
        k,
        len(without),
    )
    rest = select_random(without, k - len(first), rng.topup_key(key))
    return Query(
        np.concatenate([first.ids, rest.ids]),
        streams + rest.streams,
        np.concatenate([first.scores, rest.scores]),
    )


def _as_stats_numpy(stats) -> scoring.SliceStats:
    return scoring.SliceStats(*(None if x is None else np.asarray(x) for x in stats))


PROBS_SUM_TOLERANCE = 1e-4  # |sum_c p_c - 1| allowed for class probabilities


@rng.with_classic_threefry
def select_from_probs(
    probs,
    k: int,
    *,
    strategy: str,
    mode: str = "selective",
    convention: str = "paper",
    labelled=None,
    target_threshold: float = 0.1,
    boundary_width: float = 0.1,
    aggregation: str = "sum",
    merge: str = "union",
    batch_size: int = 64,
    seed: int = 0,
    class_balanced: bool = False,
) -> np.ndarray:
    """Runs the query-strategy engine on probability maps predicted elsewhere.

    Args:
      probs: float array of foreground probabilities, [N, H, W]; or [T, N, H, W] Monte-Carlo
        samples for 'mc_dropout' and 'bald' (axis 0 is the pass). Multi-class ('paper'
        convention): class probabilities [N, C+1, H, W] (class 0 = background), or
        [T, N, C+1, H, W] for 'mc_dropout' and 'bald', summing to 1 over the class axis. A 4D
        array is therefore [N, C+1, H, W] for single-pass strategies and [T, N, H, W] for
        Monte-Carlo ones.
      k: number of slices to select.
      strategy: 'random', 'entropy', 'least_confidence', 'margin', 'mc_dropout', 'bald' or
        'random_predicted' (uniform among slices with P > T; multi-class: argmax != 0).
      mode: 'all', 'target', 'boundary' or 'selective'.
      convention: 'paper' or 'official' (reproduces the published code's selections; binary).
      labelled: optional [N] bool mask of slices that must not be chosen.
      target_threshold, boundary_width: T and B of the masks.
      aggregation: 'sum' or 'mean' over the selected pixels ('paper' convention only).
      merge: 'union' or 'interleave' for mode 'selective' ('paper' convention only).
      batch_size: slices scored per jitted call (the last batch is padded).
      seed: seed of the 'random' and 'random_predicted' strategies.
      class_balanced: balance the target stream over the classes (see `select`).

    Returns:
      [n] int64 pool indices in selection order.
    """
    validate_options(strategy, mode, convention, aggregation, merge, class_balanced)
    probs = np.asarray(probs)
    mc = strategy in scoring.MC_STRATEGIES
    binary_ndim = 4 if mc else 3
    if probs.ndim not in (binary_ndim, binary_ndim + 1):
        raise ValueError(
            f"probs: strategy {strategy!r} needs "
            + (
                "Monte-Carlo samples of shape (T, N, H, W) or (T, N, C+1, H, W)"
                if mc
                else "shape (N, H, W) or (N, C+1, H, W)"
            )
            + f", got shape {probs.shape}"
        )
    multiclass = probs.ndim == binary_ndim + 1
    n_slices = probs.shape[1] if mc else probs.shape[0]
    if labelled is None:
        labelled = np.zeros(n_slices, bool)
    labelled = np.asarray(labelled, bool)
    if labelled.shape != (n_slices,):
        raise ValueError(f"labelled: expected shape ({n_slices},), got {labelled.shape}")
    if probs.size and (not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1):
        raise ValueError("probs: values must be finite probabilities in [0, 1]")
    if multiclass:
        class_axis = binary_ndim - 2  # after the pass and slice axes
        if convention != "paper":
            raise ValueError(
                f"probs: class probabilities of shape {probs.shape} are multi-class, and "
                f"convention {convention!r} is binary only; use convention='paper'"
            )
        if probs.shape[class_axis] < 2:
            raise ValueError(
                f"probs: expected at least 2 classes on axis {class_axis}, got shape {probs.shape}"
            )
        error = np.abs(probs.sum(axis=class_axis, dtype=np.float64) - 1.0)
        if error.size and error.max() > PROBS_SUM_TOLERANCE:
            raise ValueError(
                f"probs: class probabilities must sum to 1 over axis {class_axis} (the C+1 "
                f"classes), within {PROBS_SUM_TOLERANCE}; worst sum is off by {error.max():.3g}"
            )
    candidates = np.flatnonzero(~labelled)
    if strategy == "random":
        return select_random(candidates, k, rng.root_key(seed)).ids
    if strategy == "random_predicted":  # the definition of diagnostics.predicted_target_mask
        chosen = probs[candidates]
        if multiclass:
            target = np.argmax(chosen, axis=1) != 0
        else:
            target = chosen > np.float32(target_threshold)
        pixels = target.reshape(len(candidates), -1).sum(axis=1)
        return select_random_predicted(candidates, pixels, k, rng.root_key(seed)).ids
    if len(candidates) == 0:
        return np.zeros(0, np.int64)

    stacked = probs[:, candidates] if mc else probs[None, candidates]
    stacked = np.moveaxis(stacked, 0, 1).astype(np.float32)  # [U, passes, H, W] or [..., L, H, W]
    if multiclass:
        stacked = np.moveaxis(stacked, 2, -1)  # [U, passes, H, W, L], as the model's logits
    t_arr, b_arr = np.float32(target_threshold), np.float32(boundary_width)

    def stats_of(_, chunk):
        return scoring.stats_from_probs(
            chunk, t_arr, b_arr, strategy=strategy, convention=convention
        )

    stats = _as_stats_numpy(
        parallel.map_batches(stats_of, np.arange(len(candidates)), stacked, batch_size=batch_size)
    )
    return select(
        stats,
        candidates,
        k,
        mode=mode,
        convention=convention,
        aggregation=aggregation,
        merge=merge,
        class_balanced=class_balanced,
    ).ids
