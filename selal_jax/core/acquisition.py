"""The query options (strategy, mode, convention, aggregation, merge, class balance, sampling,
volume limits) and their checks, shared by the config validation and `selection`."""

from __future__ import annotations

import math

from selal_jax.base.errors import ConfigError
from selal_jax.core import scoring
from selal_jax.core.sampling import SAMPLINGS

MODES = ("all", "target", "boundary", "selective")
AGGREGATIONS = ("sum", "mean")
MERGES = ("union", "interleave")


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
    *,
    sampling: str = "top_k",
    sampling_beta: float = 1.0,
    max_per_case: int = 0,
    min_slice_gap: int = 0,
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
    if strategy in scoring.RANDOM_STRATEGIES:  # nothing ranked to balance or sample
        check_acquisition("paper", sampling, sampling_beta, max_per_case, min_slice_gap)
        return
    if class_balanced:
        check_class_balanced(mode, convention)
    check_acquisition(convention, sampling, sampling_beta, max_per_case, min_slice_gap)


def check_acquisition(
    convention: str, sampling: str, sampling_beta, max_per_case, min_slice_gap
) -> None:
    """Raises ValueError naming the field of bad sampling or volume-spread options, or of one
    that the 'official' convention (the published code's deterministic top-k) refuses."""
    if sampling not in SAMPLINGS:
        raise ConfigError(
            f"config field al.sampling: unknown value {sampling!r}; expected one of {SAMPLINGS}"
        )
    beta = float(sampling_beta)
    if not (math.isfinite(beta) and beta > 0):
        raise ConfigError(f"config field al.sampling_beta: must be > 0 and finite, got {beta}")
    for field, value in (("al.max_per_case", max_per_case), ("al.min_slice_gap", min_slice_gap)):
        if int(value) < 0:
            raise ConfigError(f"config field {field}: must be >= 0 (0 = off), got {value}")
    if convention != "official":
        return
    for field, on in (
        ("al.sampling", sampling != "top_k"),
        ("al.max_per_case", int(max_per_case) > 0),
        ("al.min_slice_gap", int(min_slice_gap) > 0),
    ):
        if on:
            raise ConfigError(
                f"config field {field}: needs al.convention='paper' (the 'official' convention "
                "reproduces the published code's deterministic top-k query)"
            )
