"""Sweeps: several strategies over several seeds, fairly compared, then a report.

Layout of a sweep folder:
  supervised/            the supervised baseline (whole training split, first seed)
  seed-<s>/round0/       round 0 of seed s, trained once: model/ (orbax: model, record),
                         pool_embeddings.npz
  seed-<s>/<strategy>-<mode>[-<options>]/   one active-learning run, starting from round0's
                         model (sweep.runs and the folder names: selal_jax/verbs/run_names.py)
  report/                summary.md, summary.csv, learning_curves.png, tsne.png
  config.json            the config the sweep was last started with (`launch.py sweep
                         --workdir=W` continues with it)

All runs of a seed share the initial labelled set (drawn from the seed) and the round-0 model.
Every part resumes: rerunning the same command skips what is finished and continues the rest.
All runs read one dataset copy and one slice cache (under the sweep folder unless configured).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os

import numpy as np
from absl import logging

from selal_jax.base import atomic, schema
from selal_jax.base.errors import ConfigError, UserError
from selal_jax.core import parallel, rng
from selal_jax.data import synthetic
from selal_jax.run import checkpointing, diagnostics, lock, loop, validation
from selal_jax.run import parts as parts_lib
from selal_jax.run import state as state_lib
from selal_jax.run import workdir as workdir_lib
from selal_jax.run.parts import Parts
from selal_jax.run.state import LoopState
from selal_jax.verbs import report, report_runs, run_names


def parse_seeds(text) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).replace(" ", "").split(",") if s]
    except ValueError as e:
        raise ConfigError(
            f"config field sweep.seeds: expected comma-separated integers, got {text!r}"
        ) from e
    if not seeds:
        raise ConfigError(f"config field sweep.seeds: no seeds in {text!r}")
    return seeds


def run_config(config, workdir: str, seed: int, spec: run_names.RunSpec | None = None):
    """The config of one run of the sweep: shared data folder and cache, the given seed, and
    the run's strategy, mode and options (`spec`; None: the sweep config's)."""
    c = copy.deepcopy(config)
    c.seed = seed
    if c.data.layout == "synthetic" and not c.data.root:
        c.data.root = os.path.join(workdir, synthetic.FOLDERS[c.data.synthetic.kind])
    if not c.data.get("cache_dir"):
        c.data.cache_dir = os.path.join(workdir, workdir_lib.CACHE_DIR)
    if spec is not None:
        spec.apply(c)
    return c


def run(config, workdir: str) -> dict:
    """Runs (or resumes) the sweep and writes its report; returns the report's paths (the
    entry point prints summary.md)."""
    runs = run_names.parse_runs(config.sweep.runs)
    seeds = parse_seeds(config.sweep.seeds)
    # refuse a bad run before hours of training; a run's folder does not depend on the seed
    folders = run_folders(config, workdir, runs, seeds[0])
    with lock.hold(workdir):  # the sweep folder; each run below locks its own sub-folder
        _check_continues(config, workdir, seeds[0])
        workdir_lib.write_sweep_config(workdir, config)  # `launch.py sweep --workdir` reads it
        return _run(config, workdir, folders, seeds)


def run_folders(config, workdir: str, runs, seed: int) -> dict[run_names.RunSpec, str]:
    """{run: its folder under seed-<s>/} after checking each run's config
    (`validation.validate_config`); a ConfigError naming sweep.runs for two items that are the
    same run (the same folder: options that do not act, or the sweep's own values)."""
    folders: dict[run_names.RunSpec, str] = {}
    for spec in runs:
        c = run_config(config, workdir, seed, spec)
        validation.validate_config(c)
        name = run_names.folder(run_names.config_fields(c))
        same = [s.text for s, n in folders.items() if n == name]
        if same:
            raise ConfigError(
                f"config field sweep.runs: {same[0]!r} and {spec.text!r} are the same run "
                f"({name}); remove one"
            )
        folders[spec] = name
    return folders


def _check_continues(config, workdir: str, seed: int) -> None:
    """Refuses at once a config that the sweep's runs would refuse one by one: one whose runs'
    configs differ from those of the config the sweep was last started with (config.json)."""
    stored = workdir_lib.stored_config(workdir, required=False)
    if stored is None:
        return
    workdir_lib.check_compatible(
        schema.flatten(run_config(stored, workdir, seed)),
        "",  # no dataset fingerprint at this level: each run checks its own
        schema.flatten(run_config(config, workdir, seed)),
        "",
        where=workdir,
        # set per run; an option a run does not give is the sweep config's, checked here
        neutral=("al.strategy", "al.mode"),
        allow_change=bool(config.allow_config_change),
    )


def _run(config, workdir: str, folders: dict[run_names.RunSpec, str], seeds) -> dict:
    os.makedirs(workdir, exist_ok=True)
    if config.sweep.supervised:
        train_supervised(
            run_config(config, workdir, seeds[0]),
            os.path.join(workdir, workdir_lib.SUPERVISED_DIR),
        )
    for seed in seeds:
        seed_dir = workdir_lib.seed_dir(workdir, seed)
        round0 = os.path.join(seed_dir, workdir_lib.ROUND0_DIR)
        train_shared_round0(run_config(config, workdir, seed), round0)
        for spec, name in folders.items():
            logging.info("sweep: seed %d, %s", seed, spec.text)
            loop.run(
                run_config(config, workdir, seed, spec),
                os.path.join(seed_dir, name),
                round0=functools.partial(take_round0, round0),
            )
    return report.write_report(workdir)


def take_round0(round0_dir: str, parts: Parts, state: LoopState) -> LoopState:
    """A fresh run's `state` (its initial labelled set drawn) with the shared round 0's model
    and record (`loop.run`'s `round0`), after checking that round 0 was trained with the same
    config (but for ROUND0_NEUTRAL_KEYS), dataset and initial labelled set."""
    ckpt = checkpointing.Checkpointer(workdir_lib.round0_checkpoints(round0_dir), 1, read_only=True)
    try:
        if ckpt.latest_round() is None:
            raise UserError(f"{round0_dir}: no shared round-0 checkpoint found")
        model, stored = ckpt.restore(0, parts_lib.abstract_state(parts))
    finally:
        ckpt.close()
    workdir_lib.check_compatible(
        stored["config"],
        stored["fingerprint"],
        parts.flat_config,
        parts.splits.fingerprint,
        where=f"{round0_dir} (the shared round 0 of {parts.workdir})",
        neutral=schema.ROUND0_NEUTRAL_KEYS,
        legacy_fingerprint=parts.splits.legacy_fingerprint,
    )
    if stored["labelled_ids"] != [int(i) for i in np.flatnonzero(state.labelled)]:
        raise UserError(f"{round0_dir}: its initial labelled set differs from this run's")
    return dataclasses.replace(state, model=model, round0_record=dict(stored["record"]))


@rng.with_classic_threefry
def train_shared_round0(config, round0_dir: str) -> dict:
    """Trains round 0 once (the initial labelled set is fixed by the seed) and stores its model,
    record and the pool embeddings (for t-SNE maps) in `round0_dir`. Idempotent: an existing
    round 0 is returned without loading data or building a model."""
    with lock.hold(round0_dir):
        ckpt = checkpointing.Checkpointer(workdir_lib.round0_checkpoints(round0_dir), 1)
        try:
            if ckpt.latest_round() is not None:
                return ckpt.restore_loop(0)["record"]
            parts = parts_lib.build(config, round0_dir)
            state = state_lib.fresh_state(parts)
            record = loop.train_round(parts, state, 0)
            pool = state.pool
            features, _, _ = diagnostics.embed(
                parts.model, state.model.variables, pool.images, np.arange(len(pool)), parts.batches
            )
            target_pixels = diagnostics.target_pixel_counts(pool.labels, np.arange(len(pool)))
            path = os.path.join(round0_dir, workdir_lib.EMBEDDINGS_FILE)
            if parallel.is_primary():
                with atomic.atomic_open(path, "wb") as f:
                    np.savez(f, features=features, target_pixels=target_pixels)
            ckpt.save(
                0,
                state.model,
                {
                    "record": record,
                    "labelled_ids": [int(i) for i in np.flatnonzero(state.labelled)],
                    "config": parts.flat_config,
                    "fingerprint": parts.splits.fingerprint,
                },
            )
            return record
        finally:
            ckpt.close()


def supervised_config(config):
    """The config the supervised baseline trains with: `config` with its own budget
    (sweep.supervised_patience, sweep.supervised_max_epochs as train.patience, train.max_epochs)."""
    c = copy.deepcopy(config)
    c.train.patience = int(config.sweep.supervised_patience)
    c.train.max_epochs = int(config.sweep.supervised_max_epochs)
    return c


# Fields that do not act on the baseline: it labels the whole training split and queries nothing
# (its training budget is train.*, set by `supervised_config`).
SUPERVISED_NEUTRAL_PREFIXES = ("al.", "sweep.")


def stale_supervised(record: dict | None, parts: Parts) -> str | None:
    """Why a stored baseline `record` cannot stand for the one `parts` would train (one line
    naming the differing fields or the dataset), or None if it can. Records written before
    baselines kept their config and dataset fingerprint cannot."""
    if record is None:
        return None
    if "config" not in record or "fingerprint" not in record:
        return "written before baselines recorded their training config and dataset"
    changed = [
        k
        for k in schema.differences(record["config"], parts.flat_config)
        if not k.startswith(SUPERVISED_NEUTRAL_PREFIXES) and k != "data.root"
    ]
    if changed:
        stored = record["config"]
        details = ", ".join(
            f"{k}: {stored.get(k)!r} -> {parts.flat_config.get(k)!r}" for k in changed
        )
        return f"trained with another config ({details})"
    if record["fingerprint"] not in (parts.splits.fingerprint, parts.splits.legacy_fingerprint):
        return (
            f"trained on another dataset (fingerprint {record['fingerprint']} -> "
            f"{parts.splits.fingerprint})"
        )
    if parts.config.eval.cases and record.get("case_dice") is None:
        return "recorded without per-case metrics (eval.cases was off)"
    return None


def _read_supervised(path: str) -> dict | None:
    """The baseline record at `path`, None if absent; an unreadable one is logged and None (it
    is retrained, then replaced)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        float(record["dice"])
        return record
    except (OSError, ValueError, KeyError, TypeError) as e:
        logging.warning("%s: not a supervised baseline record (%s); retraining it", path, e)
        return None


@rng.with_classic_threefry
def train_supervised(config, workdir: str) -> dict:
    """The supervised baseline: the fit routine on the whole training split, with its own
    budget (`supervised_config`); its record, with the config and dataset fingerprint it was
    trained with, is written to <workdir>/supervised.json and returned.

    A stored baseline is returned as is when it was trained with the same config (but for
    SUPERVISED_NEUTRAL_PREFIXES and data.root) and the same data; otherwise it is retrained and
    replaced, with a warning naming the differing fields: the baseline is one JSON record,
    written atomically, that nothing else builds on, so retraining it is always safe.
    """
    config = supervised_config(config)
    path = os.path.join(workdir, workdir_lib.SUPERVISED_FILE)
    with lock.hold(workdir):
        parts = parts_lib.build(config, workdir)
        stored = _read_supervised(path)
        reason = stale_supervised(stored, parts)
        if stored is not None and reason is None:
            return stored
        if reason is not None:
            logging.warning("%s: %s; retraining the supervised baseline", path, reason)
        state = state_lib.fresh_state(parts)
        state.labelled[:] = True
        record = loop.train_round(parts, state, 0)
        record = {
            **record,
            "supervised": True,
            "seed": int(config.seed),
            "config": parts.flat_config,
            "fingerprint": parts.splits.fingerprint,
        }
        checkpointing.write_json_atomic(path, record)
    logging.info("supervised baseline: %s", report_runs.baseline_text(record))
    for note in report_runs.baseline_notes(record):
        logging.warning("%s", note)
    return record
