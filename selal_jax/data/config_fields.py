"""The fields of config.data: the checks every layout relies on (ValueError naming the field),
and the preprocessing Settings they give with a layout's Source.

`validate_data_config` runs before anything is read; the layouts check the fields that depend on
the dataset (channel names, label values) against its own maps.
"""

from __future__ import annotations

import re

import numpy as np

from selal_jax.base.errors import ConfigError
from selal_jax.data import cases, sources, synthetic


def validate_data_config(data_config) -> None:
    """Checks the config fields every layout uses; raises ValueError naming the field."""
    size = tuple(data_config.size)
    if len(size) != 2 or any(int(s) < 1 for s in size):
        raise ConfigError(
            f"config field data.size: expected two positive pixel counts H,W (e.g. "
            f"--config.data.size=128,128), got {size}"
        )
    if int(data_config.axis) not in (0, 1, 2):
        raise ConfigError(f"config field data.axis: expected 0, 1 or 2, got {data_config.axis}")
    if data_config.resample not in ("resize", "resize_aa", "crop"):
        raise ConfigError(
            "config field data.resample: expected 'resize', 'resize_aa' or 'crop', got "
            f"{data_config.resample!r}"
        )
    spacing_setting(data_config)
    if data_config.normalisation not in ("auto", "zscore", "ct_window"):
        raise ConfigError(
            "config field data.normalisation: expected 'auto', 'zscore' or 'ct_window', got "
            f"{data_config.normalisation!r}"
        )
    lo, hi = (float(v) for v in data_config.ct_window)
    if not lo < hi:
        raise ConfigError(f"config field data.ct_window: expected lo < hi, got {(lo, hi)}")
    if data_config.layout == "synthetic" and int(data_config.synthetic.n_subjects) < 1:
        raise ConfigError(
            "config field data.synthetic.n_subjects: must be >= 1, got "
            f"{data_config.synthetic.n_subjects}"
        )
    kind = data_config.synthetic.get("kind", "binary")
    if kind not in synthetic.KINDS:
        raise ConfigError(
            f"config field data.synthetic.kind: expected one of {synthetic.KINDS}, got {kind!r}"
        )
    # The syntax of the class fields; the layout checks them against the dataset's labels.
    classes = str(data_config.get("classes", "") or "").strip()
    if classes.lower() != "all":
        sources.parse_classes(classes)
    sources.parse_values(data_config.get("background_values", ""), "data.background_values")
    validate_split_fields(data_config)


REORIENT = ("canonical", "none")
SPLIT_TOLERANCE = 1e-6  # how far the three data.split fractions may sum from 1 (rounding)


def split_fractions(split) -> np.ndarray:
    """data.split as three float64 fractions train, val, test: each >= 0, train > 0, summing to
    1 within SPLIT_TOLERANCE (0.5,0.5,0.5 is not 'half each'; 0.7,0.15,0.15 passes). Raises
    ConfigError naming the field."""
    fractions = np.asarray(tuple(split), np.float64).ravel()
    if len(fractions) != 3 or np.any(~np.isfinite(fractions)) or np.any(fractions < 0):
        raise ConfigError(
            "config field data.split: expected three fractions train,val,test >= 0 with "
            f"train > 0, got {tuple(split)}"
        )
    if fractions[0] <= 0 or abs(fractions.sum() - 1.0) > SPLIT_TOLERANCE:
        raise ConfigError(
            "config field data.split: expected three fractions train,val,test >= 0 with "
            f"train > 0 that sum to 1 (e.g. 0.7,0.15,0.15), got {tuple(split)} "
            f"(sum {fractions.sum():g})"
        )
    return fractions


def validate_split_fields(data_config) -> None:
    """Checks data.split, data.split_file, data.group_regex and data.reorient (their syntax; the
    split file's content is checked against the cases when the split is drawn)."""
    split_fractions(data_config.split)
    reorient = data_config.get("reorient", "canonical")
    if reorient not in REORIENT:
        raise ConfigError(
            f"config field data.reorient: expected one of {REORIENT}, got {reorient!r}"
        )
    split_file = data_config.get("split_file", None)
    if split_file is not None and (not isinstance(split_file, str) or not split_file.strip()):
        raise ConfigError(
            f"config field data.split_file: expected the path of a JSON file, got {split_file!r}"
        )
    group_pattern(data_config)


def group_pattern(data_config) -> re.Pattern | None:
    """data.group_regex compiled ('' -> None); a config error unless it has a group."""
    text = str(data_config.get("group_regex", "") or "")
    if not text:
        return None
    try:
        pattern = re.compile(text)
    except re.error as e:
        raise ConfigError(
            f"config field data.group_regex: not a regular expression ({e}), got {text!r}"
        ) from e
    if pattern.groups < 1:
        raise ConfigError(
            "config field data.group_regex: needs a group, (...), whose match names the "
            f"patient (e.g. '^(sub-\\d+)_'), got {text!r}"
        )
    return pattern


def make_settings(data_config, source: sources.Source) -> cases.Settings:
    method = data_config.normalisation
    channel_normalisation = source.channel_normalisation
    if channel_normalisation is not None and method != "auto":
        channel_normalisation = (str(method),) * len(channel_normalisation)
    return cases.Settings(
        axis=int(data_config.axis),
        size=tuple(int(s) for s in data_config.size),
        resample=str(data_config.resample),
        normalisation=source.normalisation if method == "auto" else str(method),
        ct_window=tuple(float(v) for v in data_config.ct_window),
        keep_empty_slices=bool(data_config.keep_empty_slices),
        target_values=source.target_values,
        allowed_labels=source.allowed_labels,
        class_values=source.class_values,
        channel_normalisation=channel_normalisation,
        reorient=str(data_config.get("reorient", "canonical")),
        spacing=spacing_setting(data_config),
        ignore_value=source.ignore_value,
    )


def spacing_setting(data_config) -> tuple[float, float] | None:
    """data.spacing -> (mm, mm) of the output pixels, or None for () (off)."""
    spacing = tuple(data_config.get("spacing", ()) or ())
    if not spacing:
        return None
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ConfigError(
            "config field data.spacing: expected () (off) or two positive in-plane spacings in "
            f"mm (e.g. --config.data.spacing=1.0,1.0), got {spacing}"
        )
    return values
