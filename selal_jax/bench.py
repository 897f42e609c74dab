"""Throughput benchmark: fused scoring, pool scaling, a host-side reference, training, MC reuse.

Run lines (JSON on stdout, a readable table on stderr):
  python -m selal_jax.bench --output=bench.json                  # defaults for the backend
  python -m selal_jax.bench --quick --output=/tmp/quick.json     # tiny sizes, about a minute
  python -m selal_jax.bench --sections=scoring --strategies=bald --dtypes=bfloat16

Defaults depend on the backend (`default_config`): on an accelerator they are the sizes the
project's targets are stated for (the U-Net of width 32 and depth 4, 240x240 slices, a pool of
4,096, pools of 1k-64k for scaling); on a CPU they shrink so that the whole run takes 10-16
minutes on two (shared) cores. Every size actually used is written to the JSON under "config".

What each section times:

* scoring: `scoring.score_pool` over a synthetic pool (host gather, host->device transfer of each
  batch, the fused forward + per-pixel uncertainty + masks + per-slice sums, one device_get of
  the per-slice stats), then `selection.select` for each mode. The device program is the same for
  every mode (it always computes the target, boundary and whole-slice sums); modes differ only in
  the host-side ranking, timed separately and added.
* scaling: the same `score_pool` call over pools of growing size; images are made batch by batch
  (`SyntheticPool`), so the process RSS measures the scoring path itself.
* reference: the published code's way: the same forward pass on the device, every probability map
  copied to a host array, then per-pixel entropy, masks and masked means in NumPy, one slice at a
  time; its throughput is compared with the fused path on the same pool (float32, selective
  entropy).
* train: the jitted `train.train_step` (forward, backward, Adam; state donated), fed host batches
  as `train.fit` does. bfloat16 is mixed precision: float32 parameters, optimizer state and loss.
* mc_reuse: BALD with and without computing the encoder once per batch for all passes.

Compile time is measured apart (`jax.jit(f).lower(...).compile()`); the jitted functions then
reuse that executable, and one untimed warm-up call precedes every timed loop. Device memory comes
from the compiled program's `memory_analysis()` (null where the backend does not report it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from selal_jax import rng, scoring, selection, train
from selal_jax.models import UNet, count_params, init_variables

SECTIONS = ("scoring", "scaling", "reference", "train", "mc_reuse")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
SCHEMA_VERSION = 1
# Options of the scoring engine that the benchmark holds fixed.
CONVENTION = "paper"
AGGREGATION = "mean"  # per-slice means, as the published code ranks them
TARGET_THRESHOLD = 0.1
BOUNDARY_WIDTH = 0.1
REFERENCE_STRATEGY = "entropy"
REFERENCE_MODE = "selective"
REFERENCE_PAIRS = 3  # at least this many alternating host/fused runs
LEARNING_RATE = 1e-4


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Sizes and choices of one benchmark run.

    Attributes:
      image_size: slice height = width, pixels (divisible by 2**depth).
      batch_size: slices per call for single-pass scoring and the reference forward.
      mc_batch_size: slices per call for mc_dropout and bald (each runs mc_passes decoders).
      pool_size: slices scored per measurement in the scoring, reference and mc_reuse sections.
      mc_passes: Monte-Carlo passes of mc_dropout and bald.
      base_width, depth: the U-Net (32 and 4 is the published network).
      dtypes: compute dtypes measured ('float32', 'bfloat16'); parameters stay float32.
      strategies: uncertainty strategies of the scoring section.
      modes: selection modes of the scoring section ('all', 'target', 'boundary', 'selective').
      scaling_pools: pool sizes of the scaling section, slices.
      scaling_image_size: slice size of the scaling section, pixels.
      train_batches: batch sizes of the train section.
      train_steps: timed train steps per repeat.
      repeats: timed repetitions of each measurement; the median is reported.
      query_size: slices selected per query (clipped to the pool).
      sections: which of SECTIONS to run.
      quick: recorded only (the sizes above already reflect it).
      seed: seed of parameters, keys and synthetic images.
    """

    image_size: int = 240
    batch_size: int = 256
    mc_batch_size: int = 64
    pool_size: int = 4096
    mc_passes: int = 10
    base_width: int = 32
    depth: int = 4
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    strategies: tuple[str, ...] = scoring.UNCERTAINTY_STRATEGIES
    modes: tuple[str, ...] = ("all", "selective")
    scaling_pools: tuple[int, ...] = (1024, 4096, 16384, 65536)
    scaling_image_size: int = 240
    train_batches: tuple[int, ...] = (16, 32)
    train_steps: int = 50
    repeats: int = 3
    query_size: int = 256
    sections: tuple[str, ...] = SECTIONS
    quick: bool = False
    seed: int = 0


def default_config(backend: str, quick: bool = False) -> BenchConfig:
    """Defaults for a backend ('cpu', 'gpu', 'tpu'); `quick` shrinks everything for tests."""
    if quick:
        return BenchConfig(
            image_size=32,
            batch_size=16,
            mc_batch_size=16,
            pool_size=64,
            mc_passes=2,
            base_width=4,
            depth=2,
            scaling_pools=(64, 128, 256),
            scaling_image_size=16,
            train_batches=(4, 8),
            train_steps=2,
            repeats=1,
            query_size=8,
            quick=True,
        )
    if backend == "cpu":
        # The 240x240 U-Net scores about 2 slices/s on two cores (and BALD ten times less), so
        # the CPU run keeps the network but measures 64x64 slices and small pools (16 minutes
        # measured on two shared cores).
        return BenchConfig(
            image_size=64,
            batch_size=16,
            mc_batch_size=16,
            pool_size=32,
            scaling_pools=(256, 1024, 4096),
            scaling_image_size=16,
            train_steps=2,
            repeats=1,
            query_size=8,
        )
    return BenchConfig()


def validate_config(config: BenchConfig) -> None:
    """Raises ValueError naming the bench config field and its offending value."""

    def fail(field, expected):
        raise ValueError(f"bench config field {field}: {expected}, got {getattr(config, field)!r}")

    for field in (
        "image_size",
        "batch_size",
        "mc_batch_size",
        "pool_size",
        "mc_passes",
        "base_width",
        "depth",
        "scaling_image_size",
        "train_steps",
        "repeats",
        "query_size",
    ):
        if int(getattr(config, field)) < 1:
            fail(field, "expected a positive integer")
    for field in ("image_size", "scaling_image_size"):
        if getattr(config, field) % 2**config.depth:
            fail(field, f"expected a multiple of 2**depth = {2**config.depth}")
    for field, allowed in (
        ("dtypes", tuple(DTYPES)),
        ("strategies", scoring.UNCERTAINTY_STRATEGIES),
        ("modes", selection.MODES),
        ("sections", SECTIONS),
    ):
        values = getattr(config, field)
        if not values or any(v not in allowed for v in values):
            fail(field, f"expected a non-empty list of {allowed}")
    for field in ("scaling_pools", "train_batches"):
        values = getattr(config, field)
        if not values or any(int(v) < 1 for v in values):
            fail(field, "expected a non-empty list of positive integers")


class SyntheticPool:
    """A pool of [n, size, size] float32 slices, made batch by batch from a small bank.

    Indexing with an array of ids returns a fresh array, as indexing a NumPy array or memmap does,
    so `score_pool` and the train step see the same host work as with real data, while the host
    memory stays that of the bank whatever n is. Each bank slice is Gaussian noise plus a bright
    disc of random centre and radius; its label is the disc.
    """

    BANK_SIZE = 64

    def __init__(self, n: int, size: int, seed: int = 0):
        self.n, self.size = int(n), int(size)
        gen = np.random.default_rng(seed)
        yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
        centres = gen.uniform(0.25, 0.75, (self.BANK_SIZE, 2, 1, 1)).astype(np.float32)
        radii = gen.uniform(0.05, 0.3, (self.BANK_SIZE, 1, 1)).astype(np.float32)
        dist2 = (yy - centres[:, 0]) ** 2 + (xx - centres[:, 1]) ** 2
        self._labels = (dist2 < radii**2).astype(np.float32)
        noise = gen.normal(0.0, 0.3, (self.BANK_SIZE, size, size)).astype(np.float32)
        self._images = self._labels + noise

    def __len__(self) -> int:
        return self.n

    def _bank_index(self, ids) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n):
            raise IndexError(f"SyntheticPool: ids outside [0, {self.n})")
        return ids % self.BANK_SIZE

    def __getitem__(self, ids) -> np.ndarray:
        return self._images[self._bank_index(ids)]

    def labels(self, ids) -> np.ndarray:
        return self._labels[self._bank_index(ids)]


# --- measurement helpers ---------------------------------------------------------------------


def current_rss_bytes() -> int | None:
    """Resident set size now (Linux /proc), or None where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_bytes() -> int:
    """Peak resident set size of the process so far (getrusage)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def device_memory(compiled) -> dict | None:
    """Byte counts of a compiled program's memory analysis, plus a peak estimate; None if absent.

    `peak_bytes` is the larger of the backend's own peak and arguments + outputs + temporaries
    - aliased (donated) bytes: XLA:CPU (jax 0.10) reports a peak smaller than its arguments plus
    temporaries, while XLA:GPU allocates the temporaries as one buffer next to the arguments.
    """
    try:
        stats = compiled.memory_analysis()
    except Exception:  # backends without the analysis raise various errors
        return None
    if stats is None:
        return None
    fields = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
        "peak_memory_in_bytes",
    )
    out = {f: int(getattr(stats, f)) for f in fields if getattr(stats, f, None) is not None}
    if not out:
        return None
    out["peak_bytes"] = peak_device_bytes(out)
    return out


def peak_device_bytes(fields: dict) -> int:
    """See `device_memory`; `fields` holds its byte counts (missing ones count as 0)."""
    total = (
        fields.get("argument_size_in_bytes", 0)
        + fields.get("output_size_in_bytes", 0)
        + fields.get("temp_size_in_bytes", 0)
        - fields.get("alias_size_in_bytes", 0)
    )
    return max(total, fields.get("peak_memory_in_bytes", 0))


def compile_timed(jitted, *args, **kwargs):
    """(executable, lower seconds, compile seconds) of `jitted` for these arguments."""
    start = time.perf_counter()
    lowered = jitted.lower(*args, **kwargs)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return compiled, lowered_at - start, time.perf_counter() - lowered_at


def _median_run(runs: list[dict]) -> dict:
    """The run of median 'seconds' (the upper one of an even count)."""
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(median wall seconds of `repeats` calls, the last call's result); fn must block."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def environment() -> dict:
    device = jax.devices()[0]
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None
            )
    except OSError:
        pass
    return {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_model": cpu_model or platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "threefry": "classic (rng.classic_threefry)",
    }


# --- the benchmark ---------------------------------------------------------------------------


class _Bench:
    """State shared by the sections: parameters, pools, and scoring measurements (memoised, so
    a program measured by one section is not compiled and timed again by another)."""

    def __init__(self, config: BenchConfig):
        self.config = config
        c = config
        self.root_key = jax.random.key(c.seed)
        self.round_key = jax.random.fold_in(self.root_key, 1)
        # Parameters are float32 whatever the compute dtype: one set serves every model.
        self.variables = init_variables(
            UNet(c.base_width, c.depth),
            jax.random.fold_in(self.root_key, 0),
            c.image_size,
            c.image_size,
        )
        self.pool = SyntheticPool(c.pool_size, c.image_size, c.seed)
        self.candidate_ids = np.arange(c.pool_size)
        self.query_size = min(c.query_size, c.pool_size)
        self._scored = {}

    def model(self, dtype: str) -> UNet:
        return UNet(self.config.base_width, self.config.depth, dtype=DTYPES[dtype])

    def batch_for(self, strategy: str) -> int:
        c = self.config
        return c.mc_batch_size if strategy in scoring.MC_STRATEGIES else c.batch_size

    def score_kwargs(self, strategy: str, reuse_encoder: bool = True) -> dict:
        """The options `score_pool` gets for `strategy`."""
        mc = strategy in scoring.MC_STRATEGIES
        return dict(
            strategy=strategy,
            convention=CONVENTION,
            target_threshold=TARGET_THRESHOLD,
            boundary_width=BOUNDARY_WIDTH,
            passes=self.config.mc_passes if mc else 1,
            batch_size=self.batch_for(strategy),
            reuse_encoder=reuse_encoder,
        )

    def score_batch_args(self, pool, strategy: str) -> tuple:
        """The positional arguments, with their exact types, that `score_pool` passes to
        `score_batch` for a first batch of `pool`."""
        ids = np.arange(self.batch_for(strategy)) % len(pool)
        return (
            self.variables,
            np.asarray(pool[ids], np.float32),
            ids.astype(np.int32),
            self.round_key,
            np.float32(TARGET_THRESHOLD),
            np.float32(BOUNDARY_WIDTH),
        )

    def compile_score(self, model, pool, strategy: str, reuse_encoder: bool):
        """(executable, lower s, compile s) of `score_batch`; the jitted call inside
        `score_pool` then reuses this executable (same arguments, same static options)."""
        kw = self.score_kwargs(strategy, reuse_encoder)
        return compile_timed(
            scoring.score_batch,
            *self.score_batch_args(pool, strategy),
            model=model,
            strategy=strategy,
            convention=kw["convention"],
            passes=kw["passes"],
            reuse_encoder=reuse_encoder,
        )

    def run_score_pool(self, model, pool, candidate_ids, strategy, reuse_encoder=True):
        # score_pool ends in a device_get: the work is done when it returns.
        return scoring.score_pool(
            model,
            self.variables,
            pool,
            candidate_ids,
            self.round_key,
            **self.score_kwargs(strategy, reuse_encoder),
        )

    def measure_scoring(self, dtype: str, strategy: str, reuse_encoder: bool = True) -> dict:
        """Compile time, device memory and median seconds of scoring the pool (memoised).

        Also times the compiled program alone on one device-resident batch, called as many times
        as the pool has batches: the gap to `score_s` is the host side of the loop (gathering
        and transferring images, dispatch, the final device_get).
        """
        key = (dtype, strategy, reuse_encoder)
        if key in self._scored:
            return self._scored[key]
        c = self.config
        model = self.model(dtype)
        compiled, lower_s, compile_s = self.compile_score(model, self.pool, strategy, reuse_encoder)
        batch = self.batch_for(strategy)
        self.run_score_pool(model, self.pool, self.candidate_ids[:batch], strategy, reuse_encoder)
        seconds, stats = median_seconds(
            lambda: self.run_score_pool(
                model, self.pool, self.candidate_ids, strategy, reuse_encoder
            ),
            c.repeats,
        )
        device_args = jax.device_put(self.score_batch_args(self.pool, strategy))
        n_calls = math.ceil(c.pool_size / batch)

        def device_loop():
            out = None
            for _ in range(n_calls):
                out = compiled(*device_args)
            return jax.block_until_ready(out)

        device_loop()  # warm-up
        device_s, _ = median_seconds(device_loop, c.repeats)
        self._scored[key] = {
            "lower_s": lower_s,
            "compile_s": compile_s,
            "device_memory": device_memory(compiled),
            "score_s": seconds,
            "device_only_slices_per_s": n_calls * batch / device_s,
            "stats": stats,
        }
        return self._scored[key]

    def select(self, stats, mode: str):
        return selection.select(
            stats,
            self.candidate_ids,
            self.query_size,
            mode=mode,
            convention=CONVENTION,
            aggregation=AGGREGATION,
        )

    def rates(self, n_slices: int, seconds: float, image_size: int | None = None) -> dict:
        pixels = (image_size or self.config.image_size) ** 2
        return {
            "seconds": seconds,
            "slices_per_s": n_slices / seconds,
            "pixels_per_s": n_slices * pixels / seconds,
        }

    # --- sections ---

    def scoring_section(self) -> list[dict]:
        c = self.config
        rows = []
        for dtype in c.dtypes:
            for strategy in c.strategies:
                m = self.measure_scoring(dtype, strategy)
                kw = self.score_kwargs(strategy)
                for mode in c.modes:
                    select_s, _ = median_seconds(
                        lambda stats=m["stats"], mode=mode: self.select(stats, mode), c.repeats
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
                            **self.rates(c.pool_size, m["score_s"] + select_s),
                            "device_memory": m["device_memory"],
                        }
                    )
        return rows

    def scaling_section(self) -> dict:
        c = self.config
        dtype, strategy, size = c.dtypes[0], REFERENCE_STRATEGY, c.scaling_image_size
        model = self.model(dtype)
        batch = self.batch_for(strategy)
        # The parameters fit any slice size (convolutions only); a new size is a new program.
        warm_pool = SyntheticPool(batch, size, c.seed)
        compiled, _, compile_s = self.compile_score(model, warm_pool, strategy, True)
        self.run_score_pool(model, warm_pool, np.arange(batch), strategy)
        rows = []
        for n in sorted(c.scaling_pools):
            pool = SyntheticPool(n, size, c.seed)
            rss_before = current_rss_bytes()
            seconds, stats = median_seconds(
                lambda pool=pool, n=n: self.run_score_pool(model, pool, np.arange(n), strategy),
                c.repeats,
            )
            if len(stats.all_sum) != n:
                raise RuntimeError(f"scaling: score_pool returned {len(stats.all_sum)} of {n}")
            rows.append(
                {
                    "pool_size": n,
                    **self.rates(n, seconds, size),
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

    def reference_section(self) -> dict:
        c = self.config
        dtype = "float32"  # the published code's forward pass
        model = self.model(dtype)
        forward = jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x, False)))
        batch = c.batch_size
        first_batch = self.pool[np.arange(batch) % c.pool_size]
        compiled, _, compile_s = compile_timed(forward, self.variables, first_batch)
        compiled(self.variables, first_batch).block_until_ready()  # warm-up

        def host_path():
            start = time.perf_counter()
            # The published code copies every probability map of the pool to the host first.
            probs = np.empty((c.pool_size, c.image_size, c.image_size), np.float32)
            for idx, n_valid in train.padded_batches(c.pool_size, batch):
                out = np.asarray(compiled(self.variables, self.pool[idx]))
                probs[idx[:n_valid]] = out[:n_valid]
            forward_done = time.perf_counter()
            per_slice = [host_entropy_stats(p, TARGET_THRESHOLD, BOUNDARY_WIDTH) for p in probs]
            stats = scoring.SliceStats(
                *(np.asarray(col, np.float32) for col in zip(*per_slice, strict=True))
            )
            scored = time.perf_counter()
            query = self.select(stats, REFERENCE_MODE)
            done = time.perf_counter()
            return {
                "forward_copy_s": forward_done - start,
                "host_scoring_s": scored - forward_done,
                "select_s": done - scored,
                "seconds": done - start,
                "stats": stats,
                "query": query,
            }

        self.measure_scoring(dtype, REFERENCE_STRATEGY)  # compiles and warms the fused program

        def fused_path():
            start = time.perf_counter()
            stats = self.run_score_pool(model, self.pool, self.candidate_ids, REFERENCE_STRATEGY)
            scored = time.perf_counter()
            query = self.select(stats, REFERENCE_MODE)
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
        host = _median_run([h for h, _ in pairs])
        fused = _median_run([f for _, f in pairs])
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
                **self.rates(c.pool_size, host["seconds"]),
                "host_scoring_slices_per_s": c.pool_size / host["host_scoring_s"],
            },
            "pairs": len(pairs),
            "fused": {
                "score_s": fused["score_s"],
                "select_s": fused["select_s"],
                **self.rates(c.pool_size, fused["seconds"]),
            },
            "speedup": speedup,
            # Agreement of the two paths (float32 entropy from logits vs from probabilities).
            "max_abs_diff_target_mean": float(
                np.max(np.abs(target_means(host["stats"]) - target_means(fused["stats"])))
            ),
            "query_overlap": len(set(host["query"].ids) & set(fused["query"].ids))
            / max(len(fused["query"]), 1),
        }

    def train_section(self) -> list[dict]:
        tx = train.make_optimizer(LEARNING_RATE)
        return [
            self.measure_train(dtype, batch, tx)
            for dtype in self.config.dtypes
            for batch in self.config.train_batches
        ]

    def measure_train(self, dtype: str, batch: int, tx) -> dict:
        """Steady-state throughput of `train.train_step`, fed host batches as `train.fit` does."""
        c = self.config
        model = self.model(dtype)
        # A copy: the step donates its state, and self.variables serve the other sections.
        state = train.create_train_state(jax.tree_util.tree_map(jnp.copy, self.variables), tx)
        step_key = jax.random.fold_in(self.root_key, 2)
        ids = np.arange(batch) % c.pool_size
        compiled, lower_s, compile_s = compile_timed(
            train.train_step,
            state,
            self.pool[ids],
            self.pool.labels(ids),
            step_key,
            model=model,
            tx=tx,
        )
        losses = []
        step = 0

        def run_steps(n):
            nonlocal state, step
            for _ in range(n):
                ids = (step * batch + np.arange(batch)) % c.pool_size
                step += 1
                state, loss = compiled(
                    state, self.pool[ids], self.pool.labels(ids), jax.random.fold_in(step_key, step)
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
            **self.rates(batch * c.train_steps, seconds),
            "steps_per_s": c.train_steps / seconds,
            "loss_dtype": str(losses[-1].dtype),
            "final_loss": float(host_losses[-1]),
            "device_memory": device_memory(compiled),
        }

    def mc_reuse_section(self) -> list[dict]:
        c = self.config
        rows = []
        for dtype in c.dtypes:
            reuse = self.measure_scoring(dtype, "bald", reuse_encoder=True)
            no_reuse = self.measure_scoring(dtype, "bald", reuse_encoder=False)
            rows.append(
                {
                    "strategy": "bald",
                    "dtype": dtype,
                    "passes": c.mc_passes,
                    "batch_size": c.mc_batch_size,
                    "reuse": {
                        "compile_s": reuse["compile_s"],
                        **self.rates(c.pool_size, reuse["score_s"]),
                        "device_memory": reuse["device_memory"],
                    },
                    "no_reuse": {
                        "compile_s": no_reuse["compile_s"],
                        **self.rates(c.pool_size, no_reuse["score_s"]),
                        "device_memory": no_reuse["device_memory"],
                    },
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


def run(config: BenchConfig) -> dict:
    """Runs the configured sections; returns a JSON-serialisable dict (see `format_table`)."""
    validate_config(config)
    start = time.perf_counter()
    with rng.classic_threefry():
        bench = _Bench(config)
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
                result[section] = getattr(bench, f"{section}_section")()
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["total_s"] = time.perf_counter() - start
    return result


# --- presentation ----------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    cells = [list(header)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def _mib(memory: dict | None):
    if not memory or "peak_bytes" not in memory:
        return None
    return memory["peak_bytes"] / 2**20


def format_table(result: dict) -> str:
    """A readable summary of `run`'s result."""
    env, cfg = result["environment"], result["config"]
    parts = [
        f"device: {env['device_kind']} ({env['backend']}), cpu: {env['cpu_model']} "
        f"x{env['cpu_count']}, jax {env['jax']}, flax {env['flax']}",
        f"U-Net width {cfg['base_width']} depth {cfg['depth']} "
        f"({result['model']['params']:,} params), {cfg['image_size']}x{cfg['image_size']} slices, "
        f"pool {cfg['pool_size']}, MC passes {cfg['mc_passes']}",
    ]
    if "scoring" in result:
        parts += [
            "\nscoring (score_pool + select):",
            _table(
                (
                    "strategy",
                    "mode",
                    "dtype",
                    "batch",
                    "compile s",
                    "slices/s",
                    "Mpix/s",
                    "device-only slices/s",
                    "dev MiB",
                ),
                [
                    (
                        r["strategy"],
                        r["mode"],
                        r["dtype"],
                        r["batch_size"],
                        r["compile_s"],
                        r["slices_per_s"],
                        r["pixels_per_s"] / 1e6,
                        r["device_only_slices_per_s"],
                        _mib(r["device_memory"]),
                    )
                    for r in result["scoring"]
                ],
            ),
        ]
    if "scaling" in result:
        s = result["scaling"]
        parts += [
            f"\nscaling ({s['strategy']}, {s['dtype']}, {s['image_size']}x{s['image_size']}, "
            f"batch {s['batch_size']}; per-slice time spread {s['per_slice_time_spread']:.2f}):",
            _table(
                ("pool", "seconds", "slices/s", "us/slice", "RSS MiB", "peak RSS MiB"),
                [
                    (
                        r["pool_size"],
                        r["seconds"],
                        r["slices_per_s"],
                        r["us_per_slice"],
                        None if r["rss_after_bytes"] is None else r["rss_after_bytes"] / 2**20,
                        r["peak_rss_bytes"] / 2**20,
                    )
                    for r in s["rows"]
                ],
            ),
        ]
    if "reference" in result:
        r = result["reference"]
        parts += [
            f"\nreference ({r['strategy']} {r['mode']}, {r['dtype']}, pool {r['pool_size']}):",
            _table(
                ("path", "device+copy s", "host scoring s", "select s", "total s", "slices/s"),
                [
                    (
                        "host (published)",
                        r["host"]["forward_copy_s"],
                        r["host"]["host_scoring_s"],
                        r["host"]["select_s"],
                        r["host"]["seconds"],
                        r["host"]["slices_per_s"],
                    ),
                    (
                        "fused",
                        r["fused"]["score_s"],
                        None,
                        r["fused"]["select_s"],
                        r["fused"]["seconds"],
                        r["fused"]["slices_per_s"],
                    ),
                ],
            ),
            f"fused / host: {r['speedup']:.2f}x",
        ]
    if "train" in result:
        parts += [
            "\ntrain (train_step: forward, backward, Adam):",
            _table(
                ("dtype", "batch", "compile s", "slices/s", "steps/s", "loss dtype", "dev MiB"),
                [
                    (
                        r["dtype"],
                        r["batch_size"],
                        r["compile_s"],
                        r["slices_per_s"],
                        r["steps_per_s"],
                        r["loss_dtype"],
                        _mib(r["device_memory"]),
                    )
                    for r in result["train"]
                ],
            ),
        ]
    if "mc_reuse" in result:
        parts += [
            "\nMC encoder reuse (bald, score_pool only):",
            _table(
                ("dtype", "passes", "reuse slices/s", "no-reuse slices/s", "speedup"),
                [
                    (
                        r["dtype"],
                        r["passes"],
                        r["reuse"]["slices_per_s"],
                        r["no_reuse"]["slices_per_s"],
                        r["speedup"],
                    )
                    for r in result["mc_reuse"]
                ],
            ),
        ]
    parts.append(
        f"\npeak RSS {result['peak_rss_bytes'] / 2**20:,.0f} MiB, total {result['total_s']:.0f} s"
    )
    return "\n".join(parts)


if __name__ == "__main__":
    # Flags exist only when this module is the program, so importing selal_jax.bench (tests,
    # notebooks) never defines or reads absl flags.
    from absl import app, flags

    _INT_FLAGS = {
        "image_size": "slice height = width, pixels",
        "batch_size": "slices per scoring call (single-pass strategies, reference forward)",
        "mc_batch_size": "slices per scoring call for mc_dropout and bald",
        "pool_size": "slices per scoring measurement",
        "mc_passes": "Monte-Carlo passes of mc_dropout and bald",
        "base_width": "U-Net channels of the first level",
        "depth": "U-Net pooling steps",
        "scaling_image_size": "slice size of the scaling section, pixels",
        "train_steps": "timed train steps per repeat",
        "repeats": "timed repetitions per measurement (median reported)",
        "query_size": "slices selected per query",
        "seed": "seed of parameters, keys and synthetic images",
    }
    _LIST_FLAGS = {
        "dtypes": "compute dtypes: float32,bfloat16",
        "strategies": "uncertainty strategies of the scoring section",
        "modes": "selection modes of the scoring section",
        "scaling_pools": "pool sizes of the scaling section",
        "train_batches": "batch sizes of the train section",
        "sections": f"sections to run, of {','.join(SECTIONS)}",
    }
    for _name, _help in _INT_FLAGS.items():
        flags.DEFINE_integer(_name, None, f"{_help} (default: by backend, see default_config)")
    for _name, _help in _LIST_FLAGS.items():
        flags.DEFINE_list(_name, None, f"{_help} (default: by backend, see default_config)")
    flags.DEFINE_bool("quick", False, "tiny sizes (a smoke run for tests)")
    flags.DEFINE_string("output", None, "also write the JSON result to this path")
    FLAGS = flags.FLAGS

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        config = default_config(jax.default_backend(), quick=FLAGS.quick)
        overrides = {}
        for name in _INT_FLAGS:
            if FLAGS[name].present:
                overrides[name] = FLAGS[name].value
        for name in _LIST_FLAGS:
            if FLAGS[name].present:
                values = tuple(v.strip() for v in FLAGS[name].value)
                if name in ("scaling_pools", "train_batches"):
                    try:
                        values = tuple(int(v) for v in values)
                    except ValueError as e:
                        raise app.UsageError(f"--{name}: expected integers, got {values}") from e
                overrides[name] = values
        result = run(dataclasses.replace(config, **overrides))
        text = json.dumps(result, indent=2)
        if FLAGS.output:
            with open(FLAGS.output, "w") as f:
                f.write(text + "\n")
        print(text)
        print(format_table(result), file=sys.stderr)

    app.run(main)
