"""Ranking of per-slice scores and merging of the target and boundary streams into a query.

Host-side NumPy on per-slice numbers only (a few floats per slice).

Conventions (see `selal_jax.core.scoring`):

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

Stochastic acquisition (``sampling`` power, softmax or softrank; ``paper`` convention): each
ranking above (target, boundary, all, each class's) is replaced by a sample of it drawn by
Gumbel-top-k with its own key (`selal_jax.core.sampling`), and the merges and the round-robin walk the
samples as they walk rankings; ``top_k`` is the ranking itself. Volume limits
(`selal_jax.core.spread`) act while the merges walk, for every strategy.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from selal_jax.core import parallel, rng, scoring
from selal_jax.core.acquisition import (  # noqa: F401  (re-exported)
    AGGREGATIONS,
    MERGES,
    MODES,
    check_acquisition,
    check_class_balanced,
    validate_options,
)
from selal_jax.core.queries import (  # noqa: F401  (re-exported: callers name them selection.X)
    Query,
    select_random,
    select_random_label,
    select_random_predicted,
    warn_if_short,
)
from selal_jax.core.ranking import (
    balanced_target_order,
    class_target_scores,
    merge_interleave,
    merge_interleave_official,
    merge_union,
    rank,
    stream_scores,
)
from selal_jax.core.sampling import sampled_order
from selal_jax.core.spread import QueryBuilder, Spread


def _orders(candidate_ids, convention: str, sampling_mode: str, beta: float, key):
    """order(score, empty, stream) -> the stream's order of positions: its ranking (top_k), or
    a sample of it with the stream's key (`sampling.sampled_order`)."""
    if sampling_mode == "top_k":
        return lambda score, empty, _: rank(score, empty, convention)
    if key is None:
        raise ValueError(f"key: al.sampling={sampling_mode!r} needs a key (the sample key)")

    def order(score, empty, stream):
        stream_key = rng.stream_key(key, stream)
        return sampled_order(score, empty, candidate_ids, sampling_mode, beta, stream_key)

    return order


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
    sampling: str = "top_k",
    sampling_beta: float = 1.0,
    key=None,
    spread: Spread | None = None,
) -> Query:
    """Chooses k slices among the candidates from their per-slice stats.

    Args:
      stats: SliceStats of NumPy arrays, aligned with `candidate_ids`.
      candidate_ids: [U] pool ids of the unlabelled slices, ascending.
      k: number of slices wanted.
      mode: 'all', 'target', 'boundary' or 'selective'.
      class_balanced: take the target stream round-robin from the per-class target rankings
        (see `balanced_target_order`); 'paper' convention, modes 'target' and 'selective'.
      sampling: 'top_k' (each stream's ranking), or 'power', 'softmax', 'softrank': each
        stream's ranking sampled by Gumbel-top-k (`selal_jax.core.sampling`), then merged as ranked
        ones are; 'paper' convention.
      sampling_beta: beta of the sampling.
      key: the sample key (`rng.sample_key`); needed unless sampling is 'top_k'.
      spread: volume limits (`selal_jax.core.spread`), aligned with `candidate_ids`; None = off.

    Returns:
      The Query, ids in selection order.
    """
    if class_balanced:
        check_class_balanced(mode, convention)
    limits = (0, 0) if spread is None else (spread.max_per_case, spread.min_slice_gap)
    check_acquisition(convention, sampling, sampling_beta, *limits)
    candidate_ids = np.asarray(candidate_ids, np.int64)
    n_candidates = len(candidate_ids)
    warn_if_short(k, n_candidates)
    order_of = _orders(candidate_ids, convention, sampling, sampling_beta, key)
    if class_balanced:
        return _select_class_balanced(
            stats, candidate_ids, k, mode, aggregation, merge, order_of, spread
        )
    if mode == "selective":
        score_t, empty_t = stream_scores(stats, "target", aggregation, convention)
        score_b, empty_b = stream_scores(stats, "boundary", aggregation, convention)
        order_t = order_of(score_t, empty_t, "target")
        order_b = order_of(score_b, empty_b, "boundary")
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
            picked, streams = merge_union(order_t, order_b, k, spread)
        else:
            picked, streams = merge_interleave(order_t, order_b, k, spread)
        by_stream = {"target": score_t, "boundary": score_b}
        scores = np.array([by_stream[s][p] for p, s in zip(picked, streams, strict=True)])
    else:
        score, empty = stream_scores(stats, mode, aggregation, convention)
        query = QueryBuilder(min(k, n_candidates), spread)
        query.walk(order_of(score, empty, mode), mode)
        picked, streams = query.finish()
        scores = score[np.asarray(picked, np.int64)]
    return Query(
        candidate_ids[np.asarray(picked, np.int64)], tuple(streams), np.asarray(scores, np.float64)
    )


def _select_class_balanced(
    stats, candidate_ids, k, mode, aggregation, merge, order_of, spread
) -> Query:
    """`select` with the balanced target order in place of the target ranking ('paper')."""
    score_t, empty_t = stream_scores(stats, "target", aggregation, "paper")
    class_score, class_empty = class_target_scores(stats, aggregation)
    several = class_score.shape[1] > 1

    def class_order(score, empty, c):  # one class: its ranking is the target ranking
        return order_of(score, empty, c if several else "target")

    order_t, chooser = balanced_target_order(
        class_score, class_empty, order_of(score_t, empty_t, "target"), class_order
    )
    chosen_by = np.zeros(len(candidate_ids), np.int64)  # position -> its class (0: none)
    chosen_by[order_t] = chooser
    if mode == "selective":
        score_b, empty_b = stream_scores(stats, "boundary", aggregation, "paper")
        order_b = order_of(score_b, empty_b, "boundary")
        merged = merge_union if merge == "union" else merge_interleave
        picked, streams = merged(order_t, order_b, k, spread)
    else:
        query = QueryBuilder(min(k, len(candidate_ids)), spread)
        query.walk(order_t, "target")
        (picked, streams), score_b = query.finish(), None
    out_streams, scores = [], []
    for position, stream in zip(picked, streams, strict=True):
        c = int(chosen_by[position]) if stream == "target" else 0
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
    sampling: str = "top_k",
    sampling_beta: float = 1.0,
    key=None,
    max_per_case: int = 0,
    min_slice_gap: int = 0,
    cases=None,
    slice_index=None,
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
        'random_predicted' (uniform among slices with P > T; multi-class: argmax != 0);
        not 'random_label' (it needs the true labels).
      mode: 'all', 'target', 'boundary' or 'selective'.
      convention: 'paper' or 'official' (reproduces the published code's selections; binary).
      labelled: optional [N] bool mask of slices that must not be chosen.
      target_threshold, boundary_width: T and B of the masks.
      aggregation: 'sum' or 'mean' over the selected pixels ('paper' convention only).
      merge: 'union' or 'interleave' for mode 'selective' ('paper' convention only).
      batch_size: slices scored per jitted call (the last batch is padded).
      seed: seed of the 'random' and 'random_predicted' strategies.
      class_balanced: balance the target stream over the classes (see `select`).
      sampling, sampling_beta: 'top_k' (default) or a stochastic acquisition (see `select`).
      key: a JAX key, the parent of the sampling's stream keys (as `rng.sample_key` in the
        loop); needed unless sampling is 'top_k'. The noise of slice i is indexed by i, so the
        query does not depend on `batch_size` or on which other slices are labelled.
      max_per_case, min_slice_gap: volume limits (see `selal_jax.core.spread`); 0 = off.
      cases, slice_index: [N] the case (any hashable labels) and the index along the slicing
        axis of each slice; needed with volume limits.

    Returns:
      [n] int64 pool indices in selection order.
    """
    if strategy == "random_label":
        raise ValueError(
            "strategy: 'random_label' draws among slices whose true label has target, which "
            "select_from_probs does not have; use 'random_predicted'"
        )
    validate_options(
        strategy, mode, convention, aggregation, merge, class_balanced,
        sampling=sampling, sampling_beta=sampling_beta,
        max_per_case=max_per_case, min_slice_gap=min_slice_gap,
    )  # fmt: skip
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
    spread = _spread_of(cases, slice_index, n_slices, candidates, max_per_case, min_slice_gap)
    if strategy == "random":
        return select_random(candidates, k, rng.root_key(seed), spread).ids
    if strategy == "random_predicted":  # the definition of diagnostics.predicted_target_mask
        chosen = probs[candidates]
        if multiclass:
            target = np.argmax(chosen, axis=1) != 0
        else:
            target = chosen > np.float32(target_threshold)
        pixels = target.reshape(len(candidates), -1).sum(axis=1)
        return select_random_predicted(candidates, pixels, k, rng.root_key(seed), spread).ids
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
        sampling=sampling,
        sampling_beta=sampling_beta,
        key=key,
        spread=spread,
    ).ids


def _spread_of(cases, slice_index, n_slices, candidates, max_per_case, min_slice_gap):
    """select_from_probs's volume limits for `candidates`, None when off."""
    if not max_per_case and not min_slice_gap:
        return None
    for name, value in (("cases", cases), ("slice_index", slice_index)):
        if value is None:
            raise ValueError(f"{name}: needed with max_per_case or min_slice_gap")
        if np.shape(value) != (n_slices,):
            raise ValueError(f"{name}: expected shape ({n_slices},), got {np.shape(value)}")
    case_ids = np.unique(np.asarray(cases), return_inverse=True)[1].reshape(-1)
    return Spread.of(case_ids, slice_index, candidates, max_per_case, min_slice_gap)
