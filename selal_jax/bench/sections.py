"""The timed sections (scoring, scaling, train, mc_reuse; the reference is in `reference`, the
peer in `peer`, the loop in `loop`) and `run`, which runs the configured ones and returns the JSON-serialisable result."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from selal_jax.bench.config import (
    LEARNING_RATE,
    REFERENCE_STRATEGY,
    SCHEMA_VERSION,
    SECTIONS,
    BenchConfig,
    validate_config,
)
from selal_jax.bench.context import Bench
from selal_jax.bench.measure import (
    compile_timed,
    current_rss_bytes,
    device_memory,
    environment,
    median_seconds,
    peak_rss_bytes,
)
from selal_jax.bench.peer import peer_section
from selal_jax.bench.reference import reference_section
from selal_jax.core import rng, train
from selal_jax.core.models import count_params


def scoring_section(bench: Bench) -> list[dict]:
    c = bench.config
    rows = []
    for dtype in c.dtypes:
        for strategy in c.strategies:
            m = bench.measure_scoring(dtype, strategy)
            kw = bench.score_kwargs(strategy)
            for mode in c.modes:
                select_s, _ = median_seconds(
                    lambda stats=m["stats"], mode=mode: bench.select(stats, mode), c.repeats
                )
                rows.append(
                    {
                        "strategy": strategy,
                        "mode": mode,
                        "dtype": dtype,
                        "passes": kw["passes"],
                        "batch_size": kw["batch_size"],
                        "lower_s": m["lower_s"],
                        "compile_s": m["compile_s"],
                        "score_s": m["score_s"],
                        "select_s": select_s,
                        "device_only_slices_per_s": m["device_only_slices_per_s"],
                        **bench.rates(c.pool_size, m["score_s"] + select_s),
                        "device_memory": m["device_memory"],
                    }
                )
    return rows


def scaling_section(bench: Bench) -> dict:
    c = bench.config
    dtype, strategy, size = c.dtypes[0], REFERENCE_STRATEGY, c.scaling_image_size
    model = bench.model(dtype)
    batch = bench.batch_for(strategy)
    # The parameters fit any slice size (convolutions only); a new size is a new program.
    warm_pool = bench.make_pool(batch, size)
    compiled, _, compile_s = bench.compile_score(model, warm_pool, strategy, True)
    bench.run_score_pool(model, warm_pool, np.arange(batch), strategy)
    rows = []
    for n in sorted(c.scaling_pools):
        pool = bench.make_pool(n, size)
        rss_before = current_rss_bytes()
        seconds, stats = median_seconds(
            lambda pool=pool, n=n: bench.run_score_pool(model, pool, np.arange(n), strategy),
            c.repeats,
        )
        if len(stats.all_sum) != n:
            raise RuntimeError(f"scaling: score_pool returned {len(stats.all_sum)} of {n}")
        rows.append(
            {
                "pool_size": n,
                **bench.rates(n, seconds, size),
                "us_per_slice": 1e6 * seconds / n,
                "rss_before_bytes": rss_before,
                "rss_after_bytes": current_rss_bytes(),
                "peak_rss_bytes": peak_rss_bytes(),
            }
        )
    per_slice = [r["us_per_slice"] for r in rows]
    return {
        "strategy": strategy,
        "dtype": dtype,
        "image_size": size,
        "batch_size": batch,
        "compile_s": compile_s,
        "device_memory": device_memory(compiled),
        "rows": rows,
        # 1.0 = perfectly linear time; the smallest pool carries the most fixed overhead.
        "per_slice_time_spread": max(per_slice) / min(per_slice),
    }


def train_section(bench: Bench) -> list[dict]:
    tx = train.make_optimizer(LEARNING_RATE)
    return [
        measure_train(bench, dtype, batch, tx)
        for dtype in bench.config.dtypes
        for batch in bench.config.train_batches
    ]


def measure_train(bench: Bench, dtype: str, batch: int, tx) -> dict:
    """Steady-state throughput of `train.train_step`, fed host batches as `run.fit.fit` does
    (labels: class indices 0..num_classes; the loss is BCE or softmax CE by the model's head)."""
    c, pool = bench.config, bench.pool
    model = bench.model(dtype)
    # A copy: the step donates its state, and bench.variables serve the other sections.
    state = train.create_train_state(jax.tree_util.tree_map(jnp.copy, bench.variables), tx)
    step_key = rng.bench_train_key(bench.root_key)
    ids = np.arange(batch) % c.pool_size
    compiled, lower_s, compile_s = compile_timed(
        train.train_step, state, pool[ids], pool.labels(ids), step_key, model=model, tx=tx
    )
    losses = []
    step = 0

    def run_steps(n):
        nonlocal state, step
        for _ in range(n):
            ids = (step * batch + np.arange(batch)) % c.pool_size
            step += 1
            state, loss = compiled(
                state, pool[ids], pool.labels(ids), rng.bench_step_key(step_key, step)
            )
            losses.append(loss)
        return jax.block_until_ready(losses[-1])

    run_steps(1)  # warm-up
    seconds, _ = median_seconds(lambda: run_steps(c.train_steps), c.repeats)
    host_losses = np.asarray(jax.device_get(losses))
    if not np.all(np.isfinite(host_losses)):
        bad = int(np.argmax(~np.isfinite(host_losses)))
        raise FloatingPointError(
            f"bench train: non-finite loss at step {bad} with dtype {dtype}, batch {batch}"
        )
    return {
        "dtype": dtype,
        "batch_size": batch,
        "steps": c.train_steps,
        "lower_s": lower_s,
        "compile_s": compile_s,
        **bench.rates(batch * c.train_steps, seconds),
        "steps_per_s": c.train_steps / seconds,
        "loss_dtype": str(losses[-1].dtype),
        "final_loss": float(host_losses[-1]),
        "device_memory": device_memory(compiled),
    }


def mc_reuse_section(bench: Bench) -> list[dict]:
    c = bench.config
    rows = []
    for dtype in c.dtypes:
        reuse = bench.measure_scoring(dtype, "bald", reuse_encoder=True)
        no_reuse = bench.measure_scoring(dtype, "bald", reuse_encoder=False)
        variants = {}
        for name, m in (("reuse", reuse), ("no_reuse", no_reuse)):
            variants[name] = {
                "compile_s": m["compile_s"],
                **bench.rates(c.pool_size, m["score_s"]),
                "device_memory": m["device_memory"],
            }
        rows.append(
            {
                "strategy": "bald",
                "dtype": dtype,
                "passes": c.mc_passes,
                "batch_size": c.mc_batch_size,
                **variants,
                "speedup": no_reuse["score_s"] / reuse["score_s"],
                # The two programs compute the same numbers; this shows they did.
                "max_rel_diff_all_sum": relative_difference(
                    reuse["stats"].all_sum, no_reuse["stats"].all_sum
                ),
            }
        )
    return rows


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(|a|, |b|) over the entries (0 where both are 0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(a - b) / scale, initial=0.0))


def loop_section(bench: Bench) -> list[dict] | dict:
    """One full round of the real loop per pool size (`selal_jax.bench.loop`); skipped, saying
    why, where the run and data layers cannot be imported (no nibabel or ml_collections)."""
    try:
        from selal_jax.bench import loop
    except ImportError as e:
        return {"skipped": f"the run and data layers are not importable ({e})"}
    return loop.loop_rows(bench.config)


SECTION_FUNCTIONS = {
    "scoring": scoring_section,
    "scaling": scaling_section,
    "reference": reference_section,
    "train": train_section,
    "mc_reuse": mc_reuse_section,
    "peer": peer_section,
    "loop": loop_section,
}
assert tuple(SECTION_FUNCTIONS) == SECTIONS


@rng.with_classic_threefry
def run(config: BenchConfig) -> dict:
    """Runs the configured sections; returns a JSON-serialisable dict (see `format_table`)."""
    validate_config(config)
    start = time.perf_counter()
    bench = Bench(config)
    result = {
        "schema_version": SCHEMA_VERSION,
        "environment": environment(),
        "config": dataclasses.asdict(config),
        "model": {
            "base_width": config.base_width,
            "depth": config.depth,
            "params": count_params(bench.variables["params"]),
        },
    }
    for section in SECTIONS:
        if section in config.sections:
            result[section] = SECTION_FUNCTIONS[section](bench)
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["total_s"] = time.perf_counter() - start
    return result
