"""Sweeps: several strategies over several seeds, fairly compared, then a report.

Layout of a sweep folder:
  supervised/            the supervised baseline (whole training split, first seed)
  seed-<s>/round0/       round 0 of seed s, trained once: model, record, pool embeddings
  seed-<s>/<strategy>-<mode>/   one active-learning run, starting from round0's model
  report/                summary.md, summary.csv, learning_curves.png, tsne.png

All runs of a seed share the initial labelled set (drawn from the seed) and the round-0 model.
Every part resumes: rerunning the same command skips what is finished and continues the rest.
All runs read one dataset copy and one slice cache (under the sweep folder unless configured).
"""

from __future__ import annotations

import copy
import os

from absl import logging

from selal_jax import lock, loop, report
from selal_jax.data import synthetic


def parse_runs(text: str) -> list[tuple[str, str]]:
    """'random:all,entropy:selective' -> [('random', 'all'), ('entropy', 'selective')]."""
    runs = []
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        strategy, _, mode = item.partition(":")
        runs.append((strategy.strip(), (mode or "selective").strip()))
    if not runs:
        raise ValueError(f"config field sweep.runs: no strategy:mode pairs in {text!r}")
    return runs


def parse_seeds(text) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).replace(" ", "").split(",") if s]
    except ValueError as e:
        raise ValueError(
            f"config field sweep.seeds: expected comma-separated integers, got {text!r}"
        ) from e
    if not seeds:
        raise ValueError(f"config field sweep.seeds: no seeds in {text!r}")
    return seeds


def run_config(
    config, workdir: str, seed: int, strategy: str | None = None, mode: str | None = None
):
    """The config of one run of the sweep: shared data folder and cache, the given seed/strategy."""
    c = copy.deepcopy(config)
    c.seed = seed
    if c.data.layout == "synthetic" and not c.data.root:
        c.data.root = os.path.join(workdir, synthetic.FOLDERS[c.data.synthetic.kind])
    if not c.data.get("cache_dir"):
        c.data.cache_dir = os.path.join(workdir, "cache")
    if strategy is not None:
        c.al.strategy, c.al.mode = strategy, mode
    return c


def run(config, workdir: str) -> dict:
    """Runs (or resumes) the sweep and writes its report; returns the report's paths (the
    entry point prints summary.md)."""
    runs = parse_runs(config.sweep.runs)
    seeds = parse_seeds(config.sweep.seeds)
    for strategy, mode in runs:  # refuse a bad name before hours of training
        loop.validate_config(run_config(config, workdir, seeds[0], strategy, mode))
    with lock.hold(workdir):  # the sweep folder; each run below locks its own sub-folder
        return _run(config, workdir, runs, seeds)


def _run(config, workdir: str, runs, seeds) -> dict:
    os.makedirs(workdir, exist_ok=True)
    if config.sweep.supervised:
        loop.train_supervised(
            run_config(config, workdir, seeds[0]), os.path.join(workdir, "supervised")
        )
    for seed in seeds:
        seed_dir = os.path.join(workdir, f"seed-{seed}")
        round0 = os.path.join(seed_dir, "round0")
        loop.train_shared_round0(run_config(config, workdir, seed), round0)
        for strategy, mode in runs:
            logging.info("sweep: seed %d, %s %s", seed, strategy, mode)
            loop.run(
                run_config(config, workdir, seed, strategy, mode),
                os.path.join(seed_dir, f"{strategy}-{mode}"),
                round0_dir=round0,
            )
    return report.write_report(workdir)
