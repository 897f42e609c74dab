"""`Bench`: what the sections share (parameters, the pool, keys) and the memoised scoring
measurement, so that a program measured by one section is not compiled and timed again."""

from __future__ import annotations

import math

import jax
import numpy as np

from selal_jax.bench.config import (
    AGGREGATION,
    BOUNDARY_WIDTH,
    CONVENTION,
    DTYPES,
    TARGET_THRESHOLD,
    BenchConfig,
)
from selal_jax.bench.measure import compile_timed, device_memory, median_seconds
from selal_jax.bench.pool import SyntheticPool
from selal_jax.core import rng, scoring, selection
from selal_jax.core.models import UNet, init_variables, num_logits_for


def head_bias_prior(num_classes: int) -> float:
    """The untrained head's class prior: uniform (a zero bias, as the binary head's 0.5 is)."""
    return 0.5 if num_classes == 1 else 1.0 / (num_classes + 1)


class Bench:
    """State shared by the sections.

    Attributes:
      config: the run's BenchConfig.
      root_key: the run's key (the benchmark's tree in selal_jax.core.rng: bench_init_key for the
        parameters, bench_score_key for the scoring round, bench_train_key for train steps).
      round_key: the scoring round's key (`rng.bench_score_key`), as score_pool gets it.
      variables: float32 {'params', 'batch_stats'}; one set serves every compute dtype.
      pool: the SyntheticPool [pool_size] of image_size slices with config.channels channels.
    """

    def __init__(self, config: BenchConfig):
        self.config = config
        c = config
        self.root_key = rng.root_key(c.seed)
        self.round_key = rng.bench_score_key(self.root_key)
        self.variables = init_variables(
            self.model("float32"),
            rng.bench_init_key(self.root_key),
            c.image_size,
            c.image_size,
            channels=c.channels,
        )
        self.pool = self.make_pool(c.pool_size, c.image_size)
        self.candidate_ids = np.arange(c.pool_size)
        self.query_size = min(c.query_size, c.pool_size)
        self._scored = {}

    def model(self, dtype: str) -> UNet:
        c = self.config
        return UNet(
            c.base_width,
            c.depth,
            dtype=DTYPES[dtype],
            head_bias_prior=head_bias_prior(c.num_classes),
            num_logits=num_logits_for(c.num_classes),
        )

    def make_pool(self, n: int, size: int) -> SyntheticPool:
        c = self.config
        return SyntheticPool(n, size, c.seed, channels=c.channels, num_classes=c.num_classes)

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
