"""Label volumes -> class indices: the value checks and the maps of the binary target and of
data.classes, and their inverse for writing label files."""

from __future__ import annotations

import numpy as np

from selal_jax.base.errors import DataError
from selal_jax.data.cases import Settings


def label_target(
    label: np.ndarray,
    path: str,
    target_values: tuple[int, ...] | None,
    allowed: tuple[int, ...] | None,
) -> np.ndarray:
    """Checks a label volume and maps it to the binary target.

    Args:
      label: integer-valued label volume (any numeric dtype).
      path: the label file, for error messages.
      target_values: values that form the target; None = any value > 0.
      allowed: values the file may contain; None = any non-negative integer.

    Returns:
      uint8 array of label's shape, 1 where the label is a target value.
    """
    label, lo, hi = integer_labels(label, path)
    if hi >= 2**16:  # too sparse for a lookup table
        allowed_set = None if allowed is None else np.asarray(allowed)
        if allowed_set is not None and not np.all(np.isin(label, allowed_set)):
            bad = np.setdiff1d(np.unique(label), allowed_set)
            raise DataError(
                f"{path}: unexpected label values {bad[:10].tolist()}; expected {allowed}"
            )
        if target_values is None:
            return (label > 0).astype(np.uint8)
        return np.isin(label, np.asarray(target_values)).astype(np.uint8)
    # One lookup-table pass: 0 = background, 1 = target, 2 = not an allowed value.
    lut = np.zeros(hi + 1, np.uint8)
    if target_values is None:
        lut[1:] = 1
    else:
        lut[[v for v in target_values if 0 <= v <= hi]] = 1
    if allowed is not None:
        unexpected = np.ones(hi + 1, bool)
        unexpected[[v for v in allowed if 0 <= v <= hi]] = False
        lut[unexpected] = 2
    codes = lut[label]
    if allowed is not None and codes.max(initial=0) == 2:
        bad = np.unique(label[codes == 2])
        raise DataError(
            f"{path}: unexpected label values {bad[:10].tolist()}; expected a subset of "
            f"{sorted(allowed)}"
        )
    return codes


def integer_labels(label: np.ndarray, path: str) -> tuple[np.ndarray, int, int]:
    """Checks that a label volume holds non-negative integers; returns (label, min, max).

    A float volume of integral values comes back as int64; integer volumes come back as they are.
    """
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)):
            raise DataError(f"{path}: label volume contains NaN or Inf voxels")
        rounded = np.round(label)
        if not np.array_equal(rounded, label):
            examples = np.unique(label[rounded != label])[:5]
            raise DataError(
                f"{path}: label values must be integers, found {examples.tolist()} "
                "(an image given as a label, or labels resampled with interpolation?)"
            )
        label = rounded.astype(np.int64)
    elif label.dtype.kind not in "iu":
        raise DataError(f"{path}: unsupported label voxel type {label.dtype}")
    lo, hi = int(label.min()), int(label.max())
    if lo < 0:
        raise DataError(f"{path}: negative label value {lo}; labels must be integers >= 0")
    return label, lo, hi


def label_classes(
    label: np.ndarray,
    path: str,
    class_values: tuple[tuple[int, ...], ...],
    allowed: tuple[int, ...] | None,
) -> np.ndarray:
    """Checks a label volume and maps it to class indices.

    Args:
      label: integer-valued label volume (any numeric dtype).
      path: the label file, for error messages.
      class_values: per foreground class its label values; class k (1-based) gets index k.
      allowed: values the file may contain (0, the class values and any background values);
        None = any non-negative integer, values outside every class being background.

    Returns:
      uint8 array of label's shape: 0 = background, k = class k.
    """
    label, _, hi = integer_labels(label, path)
    values = np.asarray([v for group in class_values for v in group], np.int64)
    index = np.repeat(np.arange(1, len(class_values) + 1), [len(g) for g in class_values])
    allowed_set = None if allowed is None else np.asarray(sorted(allowed), np.int64)
    if hi >= 2**16:  # too sparse for a lookup table
        if allowed_set is not None and not np.all(np.isin(label, allowed_set)):
            bad = np.setdiff1d(np.unique(label), allowed_set)
            raise DataError(
                f"{path}: unexpected label values {bad[:10].tolist()}; expected a subset of "
                f"{allowed_set.tolist()} (classes {[list(g) for g in class_values]}; list "
                "values to ignore in data.background_values)"
            )
        out = np.zeros(label.shape, np.uint8)
        for value, k in zip(values.tolist(), index.tolist(), strict=True):
            out[label == value] = k
        return out
    # One lookup-table pass: class index per value, 255 = not an allowed value.
    lut = np.zeros(hi + 1, np.uint8)
    if allowed_set is not None:
        lut[:] = 255
        lut[allowed_set[allowed_set <= hi]] = 0
    keep = values <= hi
    lut[values[keep]] = index[keep]
    codes = lut[label]
    if allowed_set is not None and codes.max(initial=0) == 255:
        bad = np.unique(label[codes == 255])
        raise DataError(
            f"{path}: unexpected label values {bad[:10].tolist()}; expected a subset of "
            f"{allowed_set.tolist()} (classes {[list(g) for g in class_values]}; list values to "
            "ignore in data.background_values)"
        )
    return codes


def label_indices(label: np.ndarray, path: str, settings: Settings) -> np.ndarray:
    """A label volume (of the file `path`) -> uint8 class indices as the loader maps them: the
    binary target (C = 1) or the classes of `settings.class_values`; bad values raise
    DataError naming the file. Voxels of `settings.ignore_value` (unlabelled) map to 0: never
    target."""
    ignore = getattr(settings, "ignore_value", None)
    if ignore is not None:
        label = np.where(np.asarray(label) == ignore, 0, label)
    if settings.class_values is None:
        return label_target(label, path, settings.target_values, settings.allowed_labels)
    return label_classes(label, path, settings.class_values, settings.allowed_labels)


def label_value_table(settings: Settings) -> np.ndarray:
    """The inverse map for writing label files: entry c is the label value of class index c
    (0 = background; a class of several values writes its first)."""
    if settings.class_values is None:
        target = settings.target_values
        return np.asarray([0, int(target[0]) if target else 1], np.int64)
    return np.asarray([0, *(int(values[0]) for values in settings.class_values)], np.int64)
