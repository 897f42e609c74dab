"""The benchmark's configuration: `BenchConfig`, the backend defaults and their validation.

Each field's help text (with its unit) lives in the field's metadata, and `__main__` makes one
absl flag of each field from it, so a flag and its field are described in one place only.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from selal_jax.base.errors import ConfigError
from selal_jax.core import scoring, selection

SECTIONS = ("scoring", "scaling", "reference", "train", "mc_reuse", "peer", "loop")
# `peer` (PyTorch beside the product) and `loop` (whole rounds of the loop over pools of up to
# 64k slices; needs the run and data layers) run only when asked for: --sections=peer,loop.
DEFAULT_SECTIONS = SECTIONS[:-2]
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
# The parts of a round that the loop section times (`loop.TIMED`).
LOOP_PARTS = ("train", "score", "select", "diagnostics", "evaluation", "checkpoint", "records")
# Host memory the loop may keep per pool slice, bytes (the loop section's memory allowance is
# one batch of slices plus this per added slice). At its largest, while the query is ranked,
# the loop keeps about 100: the labelled and has-label flags (2), the unlabelled mask and the
# candidate ids (9), the per-slice scores (8 float32 fields: 32, and 32 more while the fetched
# groups are concatenated), the ranking's scores, empty flags and orders (about 50). The pool's
# subject, slice index and spacing stay in the memory-mapped cache. See docs/performance.md.
BUDGET_BYTES_PER_SLICE = 256


def _field(default, help_text: str):
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Sizes and choices of one benchmark run; `field_help()` describes each field."""

    image_size: int = _field(240, "slice height = width, pixels")
    batch_size: int = _field(
        256, "slices per scoring call (single-pass strategies, reference forward)"
    )
    mc_batch_size: int = _field(64, "slices per scoring call for mc_dropout and bald")
    pool_size: int = _field(4096, "slices per scoring measurement")
    mc_passes: int = _field(10, "Monte-Carlo passes of mc_dropout and bald")
    base_width: int = _field(32, "U-Net channels of the first level")
    depth: int = _field(4, "U-Net pooling steps")
    num_classes: int = _field(
        1, "foreground classes C: 1 = the binary sigmoid head, C >= 2 = a C+1-logit softmax head"
    )
    channels: int = _field(1, "input channels K of the synthetic images")
    dtypes: tuple[str, ...] = _field(("float32", "bfloat16"), "compute dtypes: float32,bfloat16")
    strategies: tuple[str, ...] = _field(
        scoring.UNCERTAINTY_STRATEGIES, "uncertainty strategies of the scoring section"
    )
    modes: tuple[str, ...] = _field(("all", "selective"), "selection modes of the scoring section")
    scaling_pools: tuple[int, ...] = _field(
        (1024, 4096, 16384, 65536), "pool sizes of the scaling section"
    )
    scaling_image_size: int = _field(240, "slice size of the scaling section, pixels")
    train_batches: tuple[int, ...] = _field((16, 32), "batch sizes of the train section")
    train_steps: int = _field(50, "timed train steps per repeat")
    repeats: int = _field(3, "timed repetitions per measurement (median reported)")
    query_size: int = _field(256, "slices selected per query")
    sections: tuple[str, ...] = _field(
        DEFAULT_SECTIONS, f"sections to run, of {','.join(SECTIONS)} (default: all but peer)"
    )
    loop_pools: tuple[int, ...] = _field(
        (1024, 4096, 16384, 65536), "pool sizes of the loop section, slices"
    )
    loop_image_size: int = _field(240, "slice size of the loop section, pixels")
    loop_base_width: int = _field(32, "U-Net channels of the first level, loop section")
    loop_depth: int = _field(4, "U-Net pooling steps, loop section")
    loop_batch_size: int = _field(
        256, "slices per scoring and evaluation call of the loop section (train.eval_batch_size)"
    )
    loop_train_steps: int = _field(
        20, "train steps of the loop section's round (one epoch, batch train_batches[0])"
    )
    loop_labelled: int = _field(64, "labelled slices of the loop section's round")
    loop_repeats: int = _field(
        4,
        "rounds per pool size in the loop section, sizes ascending then descending (median)",
    )
    quick: bool = _field(False, "tiny sizes (a smoke run for tests)")
    seed: int = _field(0, "seed of parameters, keys and synthetic images")


def field_help() -> dict[str, str]:
    """{field name: help text} of BenchConfig, in field order."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(BenchConfig)}


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
            loop_pools=(64, 128),
            loop_image_size=32,
            loop_base_width=4,
            loop_depth=2,
            loop_batch_size=16,
            loop_train_steps=2,
            loop_labelled=8,
            loop_repeats=1,
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
            # The loop section on a CPU: 32x32 slices and a small U-Net, pools of 1k-64k.
            loop_image_size=32,
            loop_base_width=8,
            loop_depth=3,
            loop_batch_size=64,
        )
    return BenchConfig()


def validate_config(config: BenchConfig) -> None:
    """Raises ConfigError (a ValueError) naming the bench config field (its flag) and its
    offending value."""

    def fail(field, expected):
        raise ConfigError(
            f"bench config field {field}: {expected}, got {getattr(config, field)!r} (--{field})"
        )

    for field in (
        "image_size",
        "batch_size",
        "mc_batch_size",
        "pool_size",
        "mc_passes",
        "base_width",
        "depth",
        "num_classes",
        "channels",
        "scaling_image_size",
        "train_steps",
        "repeats",
        "query_size",
        "loop_image_size",
        "loop_base_width",
        "loop_depth",
        "loop_batch_size",
        "loop_train_steps",
        "loop_labelled",
        "loop_repeats",
    ):
        if int(getattr(config, field)) < 1:
            fail(field, "expected a positive integer")
    for field in ("image_size", "scaling_image_size"):
        if getattr(config, field) % 2**config.depth:
            fail(field, f"expected a multiple of 2**depth = {2**config.depth}")
    if config.loop_image_size % 2**config.loop_depth:
        fail("loop_image_size", f"expected a multiple of 2**loop_depth = {2**config.loop_depth}")
    for field, allowed in (
        ("dtypes", tuple(DTYPES)),
        ("strategies", scoring.UNCERTAINTY_STRATEGIES),
        ("modes", selection.MODES),
        ("sections", SECTIONS),
    ):
        values = getattr(config, field)
        if not values or any(v not in allowed for v in values):
            fail(field, f"expected a non-empty list of {allowed}")
    for field in ("scaling_pools", "train_batches", "loop_pools"):
        values = getattr(config, field)
        if not values or any(int(v) < 1 for v in values):
            fail(field, "expected a non-empty list of positive integers")
    smallest = config.loop_labelled + config.query_size
    if min(config.loop_pools) < smallest:
        fail("loop_pools", f"expected pools of at least loop_labelled + query_size = {smallest}")
