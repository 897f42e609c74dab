"""The `loop` section: one full round of the real loop on a generated pool of N slices.

For each pool size N (`loop_pools`), the pool is written to the slice cache (`data.cache.Builder`,
memory-mapped .npy files, read back with `data.cache.read`, as a run reads its data) and round 0
of `run.loop.run_round` runs on it: train, evaluate on the test split (slice Dice and per case),
score the unlabelled pool, select the query, its diagnostics, the checkpoint and the records.
Each part's wall time is measured by instrumenting the loop's own functions (`TIMED`), and the
process's anonymous memory (`RssAnon`: not the page cache through which the memory-mapped pool
is read) is sampled while the run is opened and its round runs (`measure.PeakAnon`).

What grows with N and what does not:
* the pool: its slices are the training slices of a small synthetic NIfTI cohort (the bank),
  repeated to N and cut into cases of CASE_SLICES slices (a BraTS volume's axial slices);
* fixed: the cohort's validation and test cases (real NIfTI files, so that the per-case
  evaluation reads source volumes), the labelled set (`loop_labelled` slices), training (one
  epoch of `loop_train_steps` steps), the query (`query_size` slices).

An untimed round at each size first compiles every program, so that compilation is neither
in the times nor in the memory of the rows; the measured rounds follow (`loop_rows`).

This module imports the run and data layers (nibabel, ml_collections); `sections.loop_section`
imports it only when the section runs, so the other sections need neither.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import os
import shutil
import tempfile
import time

import numpy as np

from selal_jax.base import schema
from selal_jax.bench.config import BUDGET_BYTES_PER_SLICE, LOOP_PARTS, BenchConfig
from selal_jax.bench.measure import PeakAnon, load_average, release_free_memory, wall_seconds
from selal_jax.core import scoring
from selal_jax.data import cache, loading
from selal_jax.data.slices import SliceSet, Splits
from selal_jax.run import checkpointing, diagnostics, rounds
from selal_jax.run import fit as fit_lib
from selal_jax.run import loop as loop_lib
from selal_jax.run import parts as parts_lib
from selal_jax.run import state as state_lib
from selal_jax.run import workdir as workdir_lib

# (module, function, part): the loop's functions whose time is a part's. A function's time
# excludes that of the timed functions it calls (rounds.query's is the candidates and the
# selection: scoring inside it is timed apart; state.save_round's is the checkpoint: the records
# it writes are timed apart).
TIMED = (
    (fit_lib, "validation_loss", "train"),  # round 0's untrained yardstick
    (fit_lib, "fit", "train"),
    (rounds, "test_metrics", "evaluation"),
    (rounds, "case_metrics", "evaluation"),
    (rounds, "query", "select"),
    (scoring, "score_pool", "score"),
    (rounds, "query_fields", "diagnostics"),
    (diagnostics, "labelled_target_pixels", "diagnostics"),
    (diagnostics, "label_diagnostics", "diagnostics"),
    (state_lib, "save_round", "checkpoint"),
    (workdir_lib, "write_records", "records"),
    (workdir_lib, "write_epoch_metrics", "records"),
)
CASE_SLICES = 155  # slices per generated case: a BraTS volume's axial slices
COHORT_SUBJECTS = 8  # the synthetic NIfTI cohort: 4 training (the bank), 2 val, 2 test cases
COHORT_SPLIT = (0.5, 0.25, 0.25)
COHORT_DEPTH = 16  # slices per cohort volume


class PartTimer:
    """Wall seconds per part of the round, from instrumented functions (`installed`).

    A call's time goes to its part, less the time of the timed calls it makes, so that every
    second is counted once. `calls` counts the calls of each (module, function).
    """

    def __init__(self, timed=TIMED, clock=time.perf_counter):
        self.timed, self.clock = timed, clock
        self.seconds = dict.fromkeys(LOOP_PARTS, 0.0)
        self.calls = collections.Counter()
        self._nested: list[float] = []  # per open call: the time of the timed calls inside it

    def _wrap(self, fn, name: str, part: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = self.clock()
            self._nested.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                total = self.clock() - start
                self.seconds[part] += total - self._nested.pop()
                if self._nested:
                    self._nested[-1] += total
                self.calls[name] += 1

        return timed

    @contextlib.contextmanager
    def installed(self):
        """Replaces each timed function by its timed wrapper for the `with` block."""
        originals = []
        try:
            for module, attribute, part in self.timed:
                fn = getattr(module, attribute)
                originals.append((module, attribute, fn))
                setattr(module, attribute, self._wrap(fn, f"{module.__name__}.{attribute}", part))
            yield self
        finally:
            for module, attribute, fn in reversed(originals):
                setattr(module, attribute, fn)

    def check_all_called(self) -> None:
        """Raises if a timed function was never called (the loop no longer calls it: its part's
        time would silently read 0)."""
        missing = [
            f"{m.__name__}.{a}" for m, a, _ in self.timed if not self.calls[f"{m.__name__}.{a}"]
        ]
        if missing:
            raise RuntimeError(f"bench loop: never called in the round (update TIMED): {missing}")


def round_config(c: BenchConfig, folder: str):
    """The run's config: the project's defaults with the cohort, model and the fixed work of the
    section (one epoch of `loop_train_steps`, `loop_labelled` labelled slices, `query_size`)."""
    config = schema.defaults()
    config.seed = c.seed
    data, train, al = config.data, config.train, config.al
    data.root = os.path.join(folder, "cohort")  # the synthetic layout writes its cohort there
    data.cache_dir = os.path.join(folder, "cohort-cache")
    data.synthetic.n_subjects = COHORT_SUBJECTS
    data.synthetic.shape = (c.loop_image_size, c.loop_image_size, COHORT_DEPTH)
    data.size = (c.loop_image_size, c.loop_image_size)
    data.split = COHORT_SPLIT
    config.model.base_width, config.model.depth = c.loop_base_width, c.loop_depth
    train.batch_size = c.train_batches[0]
    train.eval_batch_size = c.loop_batch_size
    train.max_epochs, train.patience = 1, 1
    train.min_steps_per_epoch = c.loop_train_steps
    al.initial_size = c.loop_labelled
    al.query_size = c.query_size
    al.rounds = 1  # round 0 queries (its last round would not)
    config.eval.cases = True
    return config


def write_pool(bank: SliceSet, n: int, cache_dir: str) -> str:
    """Writes a pool of n slices (the bank's, repeated) into a slice cache under `cache_dir`,
    one case of CASE_SLICES slices at a time; returns its key."""
    key = f"bench-pool-{n}"
    images, labels = np.asarray(bank.images), np.asarray(bank.labels)
    starts = range(0, n, CASE_SLICES)
    with cache.Builder(cache_dir, key, bank.shape, n, bank.channels) as builder:
        for subject, start in enumerate(starts):
            rows = np.arange(start, min(start + CASE_SLICES, n)) % len(bank)
            builder.add(subject, images[rows], labels[rows], np.arange(len(rows)), bank.spacing[0])
        builder.commit(
            {
                "version": cache.CACHE_VERSION,
                "fingerprint": key,
                "n_slices": n,
                "cases": [f"pool-{s:05d}" for s in range(len(starts))],
                "ranges": {"train": [0, n]},
            }
        )
    return key


def open_pool(cache_dir: str, key: str, bank: SliceSet) -> SliceSet:
    """The pool `write_pool` wrote, memory-mapped (`cache.read`), as `loading.load_dataset` makes
    a training split of its cache."""
    found = cache.read(cache_dir, key)
    if found is None:
        raise RuntimeError(f"{os.path.join(cache_dir, key)}: the pool's cache is unreadable")
    meta, arrays = found
    return SliceSet(
        images=arrays["images"],
        labels=arrays["labels"],
        subject=np.asarray(arrays["subject"]),
        slice_index=np.asarray(arrays["slice_index"]),
        spacing=np.asarray(arrays["spacing"]),
        cases=list(meta["cases"]),
        class_names=bank.class_names,
        channel_names=bank.channel_names,
    )


def measure_round(config, cohort: Splits, pool_cache: str, key: str, folder: str) -> dict:
    """Opens a run on the pool `write_pool` wrote under `pool_cache` as `key` (with the cohort's
    validation and test splits) in a new workdir under `folder` and runs its round 0; returns its
    measurements (`median_row` combines those of one pool size)."""
    workdir = tempfile.mkdtemp(prefix="run-", dir=folder)
    release_free_memory()  # what earlier rounds left free in malloc is not this round's
    timer = PartTimer()
    with PeakAnon() as anon:
        start = time.perf_counter()
        pool = open_pool(pool_cache, key, cohort.train)
        parts = parts_lib.build(config, workdir, dataclasses.replace(cohort, train=pool))
        ckpt = checkpointing.Checkpointer(state_lib.checkpoints(workdir), 1)
        try:
            state = state_lib.open_state(parts, ckpt)  # the initial set: reads every label
            open_s = time.perf_counter() - start
            with timer.installed():
                round_s, query = wall_seconds(lambda: loop_lib.run_round(parts, state, ckpt, 0))
        finally:
            ckpt.close()
    timer.check_all_called()
    n = len(pool)
    if query is None or len(query.ids) != int(config.al.query_size):
        raise RuntimeError(f"bench loop: round 0 of a pool of {n} queried {query}")
    shutil.rmtree(workdir)
    candidates = n - int(config.al.initial_size)
    return {
        "pool_size": n,
        "seconds": timer.seconds,
        "round_s": round_s,
        "score_us_per_slice": 1e6 * timer.seconds["score"] / candidates,
        "peak_anon_mib": anon.peak / 2**20,
        "start_anon_mib": anon.start / 2**20,
        "open_s": open_s,
        "load_average_1m": (load_average() or [None])[0],  # the machine's, the last minute
    }


def median_row(runs: list[dict]) -> dict:
    """One pool size's row from its rounds: the median of every timing, of the peak and of the
    load average, with each round's peak (`peak_anon_mib_runs`)."""
    row = {"pool_size": runs[0]["pool_size"], "repeats": len(runs)}
    row["seconds"] = {k: float(np.median([r["seconds"][k] for r in runs])) for k in LOOP_PARTS}
    for key in (
        "round_s",
        "open_s",
        "score_us_per_slice",
        "peak_anon_mib",
        "start_anon_mib",
        "load_average_1m",
    ):
        row[key] = float(np.median([r[key] for r in runs]))
    row["peak_anon_mib_runs"] = [r["peak_anon_mib"] for r in runs]
    return row


def compare_rows(rows: list[dict], batch_bytes: int) -> list[dict]:
    """Each row against the smallest pool's: its scoring time per slice as a ratio, its peak
    anonymous memory's growth, and the allowance for it (one batch of slices plus
    BUDGET_BYTES_PER_SLICE per added slice).

    The growth is paired by repeat (each repeat measures every size): the median over repeats
    of the row's peak less the smallest pool's peak in the same repeat (`anon_growth_mib_runs`),
    so that the process's drift from repeat to repeat cancels.
    """
    first = rows[0]
    out = []
    for row in rows:
        added = row["pool_size"] - first["pool_size"]
        allowance = (batch_bytes + BUDGET_BYTES_PER_SLICE * added) / 2**20
        paired = [
            peak - base
            for peak, base in zip(
                row["peak_anon_mib_runs"], first["peak_anon_mib_runs"], strict=True
            )
        ]
        growth = float(np.median(paired))
        out.append(
            {
                **row,
                "score_per_slice_ratio": row["score_us_per_slice"] / first["score_us_per_slice"],
                "anon_growth_mib": growth,
                "anon_growth_mib_runs": paired,
                "allowance_mib": allowance,
                "within_budget": bool(growth < allowance),
            }
        )
    return out


def batch_bytes(config, cohort: Splits) -> int:
    """Host bytes of one batch of pool slices: train.eval_batch_size images (as float32) and
    labels (uint8)."""
    h, w = cohort.train.shape
    return int(config.train.eval_batch_size) * h * w * (4 * cohort.train.channels + 1)


def loop_rows(c: BenchConfig) -> list[dict]:
    """The section's rows, one per pool size of `loop_pools`, ascending (`median_row`,
    `compare_rows`), each with the seconds its pool took to write (`write_cache_s`).

    Each pool is written once. One untimed round at each size first compiles every program,
    those whose shapes follow the pool's size included (the initial set's permutations). Then
    `loop_repeats` rounds per size, the sizes ascending in even repeats and descending in odd
    ones, so that what the process accumulates from round to round (about 1.5 MiB a round on
    XLA:CPU) falls on every size alike.
    """
    folder = tempfile.mkdtemp(prefix="selal-jax-bench-loop-")
    try:
        config = round_config(c, folder)
        cohort = loading.load_dataset(config.data, folder)
        pool_cache = os.path.join(folder, "pool-cache")
        pools = sorted(int(n) for n in c.loop_pools)
        written = {
            n: wall_seconds(lambda n=n: write_pool(cohort.train, n, pool_cache)) for n in pools
        }
        for n in pools:
            measure_round(config, cohort, pool_cache, written[n][1], folder)  # compiles
        runs = {n: [] for n in pools}
        for repeat in range(c.loop_repeats):
            for n in pools if repeat % 2 == 0 else pools[::-1]:
                runs[n].append(measure_round(config, cohort, pool_cache, written[n][1], folder))
        rows = [{**median_row(runs[n]), "write_cache_s": written[n][0]} for n in pools]
        return compare_rows(rows, batch_bytes(config, cohort))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
