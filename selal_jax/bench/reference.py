"""The host-side reference: the published code's way of scoring (every probability map copied
to the host, binary entropy, masks and masked means in NumPy, one slice at a time), timed against
the fused path on the same pool."""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np

from selal_jax.bench.config import (
    BOUNDARY_WIDTH,
    REFERENCE_MODE,
    REFERENCE_PAIRS,
    REFERENCE_STRATEGY,
    TARGET_THRESHOLD,
)
from selal_jax.bench.context import Bench
from selal_jax.bench.measure import compile_timed, median_run
from selal_jax.core import parallel, scoring


def host_entropy_stats(p: np.ndarray, target_threshold: float, boundary_width: float) -> tuple:
    """One slice, the way the published code scores it on the host: per-pixel binary entropy of
    the probabilities, the target and boundary masks, and the masked sums and counts (whose
    ratios are the per-slice means it ranks).

    Args:
      p: [height, width] float32 foreground probabilities.

    Returns:
      The six SliceStats fields of the slice.
    """
    tiny = np.finfo(p.dtype).tiny  # log(0) -> log(tiny); it is multiplied by 0
    q = 1.0 - p
    u = -(p * np.log(np.maximum(p, tiny)) + q * np.log(np.maximum(q, tiny)))
    target = p > target_threshold
    boundary = np.abs(p - 0.5) < boundary_width
    return (
        u[target].sum(),
        target.sum(),
        u[boundary].sum(),
        boundary.sum(),
        u.sum(),
        u.size,
    )


def reference_section(bench: Bench) -> dict:
    """Host path vs fused path, float32 selective entropy, alternated in pairs.

    The published code is binary (one sigmoid foreground probability per pixel): with
    num_classes > 1 the section is skipped, and its result says so under "skipped".
    """
    c = bench.config
    if c.num_classes > 1:
        return {
            "skipped": (
                f"num_classes = {c.num_classes}: the host reference is the published code's "
                "binary entropy of one sigmoid probability; it has no multi-class form"
            ),
            "strategy": REFERENCE_STRATEGY,
            "mode": REFERENCE_MODE,
        }
    dtype = "float32"  # the published code's forward pass
    model = bench.model(dtype)
    forward = jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x, False)))
    batch = c.batch_size
    first_batch = bench.pool[np.arange(batch) % c.pool_size]
    compiled, _, compile_s = compile_timed(forward, bench.variables, first_batch)
    compiled(bench.variables, first_batch).block_until_ready()  # warm-up

    def host_path():
        start = time.perf_counter()
        # The published code copies every probability map of the pool to the host first.
        probs = np.empty((c.pool_size, c.image_size, c.image_size), np.float32)
        for idx, n_valid in parallel.padded_batches(c.pool_size, batch):
            out = np.asarray(compiled(bench.variables, bench.pool[idx]))
            probs[idx[:n_valid]] = out[:n_valid]
        forward_done = time.perf_counter()
        per_slice = [host_entropy_stats(p, TARGET_THRESHOLD, BOUNDARY_WIDTH) for p in probs]
        stats = scoring.SliceStats(
            *(np.asarray(col, np.float32) for col in zip(*per_slice, strict=True))
        )
        scored = time.perf_counter()
        query = bench.select(stats, REFERENCE_MODE)
        done = time.perf_counter()
        return {
            "forward_copy_s": forward_done - start,
            "host_scoring_s": scored - forward_done,
            "select_s": done - scored,
            "seconds": done - start,
            "stats": stats,
            "query": query,
        }

    bench.measure_scoring(dtype, REFERENCE_STRATEGY)  # compiles and warms the fused program

    def fused_path():
        start = time.perf_counter()
        stats = bench.run_score_pool(model, bench.pool, bench.candidate_ids, REFERENCE_STRATEGY)
        scored = time.perf_counter()
        query = bench.select(stats, REFERENCE_MODE)
        done = time.perf_counter()
        return {
            "score_s": scored - start,
            "select_s": done - scored,
            "seconds": done - start,
            "stats": stats,
            "query": query,
        }

    # Paired: the two paths alternate, so that a change in the machine's load (it may be
    # shared) hits both; the ratio is the median of the per-pair ratios.
    pairs = [(host_path(), fused_path()) for _ in range(max(c.repeats, REFERENCE_PAIRS))]
    host = median_run([h for h, _ in pairs])
    fused = median_run([f for _, f in pairs])
    speedup = statistics.median(h["seconds"] / f["seconds"] for h, f in pairs)

    def target_means(stats):
        count = np.maximum(stats.target_count, 1)
        return np.where(stats.target_count > 0, stats.target_sum / count, 0.0)

    return {
        "strategy": REFERENCE_STRATEGY,
        "mode": REFERENCE_MODE,
        "dtype": dtype,
        "pool_size": c.pool_size,
        "batch_size": batch,
        "forward_compile_s": compile_s,
        "host": {
            **{k: host[k] for k in ("forward_copy_s", "host_scoring_s", "select_s")},
            **bench.rates(c.pool_size, host["seconds"]),
            "host_scoring_slices_per_s": c.pool_size / host["host_scoring_s"],
        },
        "pairs": len(pairs),
        "fused": {
            "score_s": fused["score_s"],
            "select_s": fused["select_s"],
            **bench.rates(c.pool_size, fused["seconds"]),
        },
        "speedup": speedup,
        # Agreement of the two paths (float32 entropy from logits vs from probabilities).
        "max_abs_diff_target_mean": float(
            np.max(np.abs(target_means(host["stats"]) - target_means(fused["stats"])))
        ),
        "query_overlap": len(set(host["query"].ids) & set(fused["query"].ids))
        / max(len(fused["query"]), 1),
    }
