"""Per-case segmentation metrics on the host: Dice, HD95, NSD and volumes (NumPy/SciPy, no JAX).

Definitions follow MONAI's reference implementations (`monai.metrics.compute_dice`,
`compute_hausdorff_distance(percentile=95)`, `compute_surface_dice`, with their default options),
so that a number here can be set beside a published one:

* boundary of a mask = ``mask & ~scipy.ndimage.binary_erosion(mask)`` with SciPy's default
  structuring element (the face-neighbour cross, ``generate_binary_structure(ndim, 1)``) and its
  default ``border_value=0``: a foreground voxel is boundary if a face neighbour is background or
  lies outside the array (so foreground voxels on the array's edge are boundary);
* surface distances from A to B = ``scipy.ndimage.distance_transform_edt(~boundary(B),
  sampling=spacing)`` read at the boundary voxels of A: for each boundary voxel of A, the
  Euclidean distance in mm between voxel centres to the nearest boundary voxel of B;
* ``hd95`` = max(95th percentile of the prediction -> reference distances, 95th percentile of the
  reference -> prediction distances), NumPy's default (linear) percentile;
* ``nsd`` (normalised surface distance, "surface Dice") = (boundary voxels of either mask whose
  distance to the other's boundary is <= ``tolerance_mm``) / (boundary voxels of both masks);
* ``dice`` = 2 |P & R| / (|P| + |R|);
* ``volume_pred``, ``volume_ref`` = voxel count x product of the spacing (mm^3; mm^2 in 2D).

MONAI returns NaN or inf when a mask is empty; here empty masks follow the BraTS challenge's
evaluation convention instead: both empty -> dice 1, hd95 0, nsd 1; exactly one empty -> dice 0,
nsd 0 and hd95 = the diagonal of the volume in mm, sqrt(sum_i (shape_i * spacing_i)^2) (BraTS's
373.13 is that of its 240 x 240 x 155 grid at 1 mm).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["case_metrics", "multiclass_case_metrics"]


def _as_mask(mask, name: str) -> np.ndarray:
    """A bool array from a bool or integer array (any non-zero value is foreground)."""
    mask = np.asarray(mask)
    if not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer)):
        raise ValueError(
            f"{name}: expected a bool or integer mask, got dtype {mask.dtype} "
            "(threshold or round it first, e.g. probs > 0.5)"
        )
    return mask != 0


def _check_shapes(prediction: np.ndarray, reference: np.ndarray) -> None:
    if prediction.shape != reference.shape:
        raise ValueError(
            f"prediction, reference: expected the same shape, got {prediction.shape} and "
            f"{reference.shape}"
        )
    if prediction.ndim not in (2, 3):
        raise ValueError(
            f"prediction: expected a 2D or 3D array, got {prediction.ndim} dimensions "
            f"(shape {prediction.shape})"
        )


def _check_spacing(spacing, ndim: int) -> np.ndarray:
    try:
        spacing = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"spacing: expected {ndim} numbers (mm per axis), got {spacing!r}") from e
    if spacing.shape != (ndim,):
        raise ValueError(
            f"spacing: expected one value per axis ({ndim} for a {ndim}D mask), got "
            f"{spacing.tolist()}"
        )
    if not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise ValueError(f"spacing: expected positive finite values (mm), got {spacing.tolist()}")
    return spacing


def _check_tolerance(tolerance_mm) -> float:
    try:
        tolerance_mm = float(tolerance_mm)
    except (TypeError, ValueError) as e:
        raise ValueError(f"tolerance_mm: expected a number (mm), got {tolerance_mm!r}") from e
    if not tolerance_mm >= 0:  # also rejects NaN
        raise ValueError(f"tolerance_mm: expected a value >= 0 (mm), got {tolerance_mm}")
    return tolerance_mm


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a background (or out-of-array) face neighbour, as in MONAI."""
    return mask & ~ndimage.binary_erosion(mask)


def _surface_distances(
    from_boundary: np.ndarray, to_boundary: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
    """[n_from] float64 mm: each voxel of `from_boundary` to the nearest of `to_boundary`."""
    distance_to = ndimage.distance_transform_edt(~to_boundary, sampling=spacing)
    return distance_to[from_boundary]


def _case_metrics(
    prediction: np.ndarray, reference: np.ndarray, spacing: np.ndarray, tolerance_mm: float
) -> dict:
    """case_metrics on validated bool masks, float64 spacing and float tolerance."""
    n_pred = int(np.count_nonzero(prediction))
    n_ref = int(np.count_nonzero(reference))
    voxel_volume = float(np.prod(spacing))
    volumes = {"volume_pred": n_pred * voxel_volume, "volume_ref": n_ref * voxel_volume}
    if n_pred == 0 and n_ref == 0:
        return {"dice": 1.0, "hd95": 0.0, "nsd": 1.0, **volumes}
    if n_pred == 0 or n_ref == 0:
        diagonal = math.sqrt(float(np.sum((np.asarray(prediction.shape) * spacing) ** 2)))
        return {"dice": 0.0, "hd95": diagonal, "nsd": 0.0, **volumes}

    n_both = int(np.count_nonzero(prediction & reference))
    boundary_pred = _boundary(prediction)
    boundary_ref = _boundary(reference)
    # A non-empty mask always has a boundary voxel (its last voxel along any axis), so both
    # distance arrays are non-empty and both distance transforms have a zero to measure from.
    pred_to_ref = _surface_distances(boundary_pred, boundary_ref, spacing)
    ref_to_pred = _surface_distances(boundary_ref, boundary_pred, spacing)
    hd95 = max(float(np.percentile(pred_to_ref, 95)), float(np.percentile(ref_to_pred, 95)))
    n_close = int(np.count_nonzero(pred_to_ref <= tolerance_mm)) + int(
        np.count_nonzero(ref_to_pred <= tolerance_mm)
    )
    nsd = n_close / (pred_to_ref.size + ref_to_pred.size)
    return {"dice": 2 * n_both / (n_pred + n_ref), "hd95": hd95, "nsd": nsd, **volumes}


def case_metrics(
    prediction, reference, spacing: Sequence[float], *, tolerance_mm: float = 1.0
) -> dict:
    """Dice, HD95, NSD and volumes of one case (definitions in the module docstring).

    Args:
      prediction: [height, width] or [depth, height, width] bool or integer mask; any non-zero
        value is foreground.
      reference: the ground-truth mask, same shape and conventions as `prediction`.
      spacing: [ndim] voxel size in mm along each axis of the masks, positive and finite.
      tolerance_mm: NSD tolerance in mm (a boundary voxel counts if its distance is <= it), >= 0.

    Returns:
      {'dice', 'hd95' (mm), 'nsd', 'volume_pred', 'volume_ref' (mm^3, or mm^2 in 2D)}, Python
      floats.

    Raises:
      ValueError: naming the argument, if the masks differ in shape, are not 2D or 3D or not bool
        or integer, the spacing has the wrong length or a non-positive or non-finite value, or the
        tolerance is negative or NaN.
    """
    prediction = _as_mask(prediction, "prediction")
    reference = _as_mask(reference, "reference")
    _check_shapes(prediction, reference)
    spacing = _check_spacing(spacing, prediction.ndim)
    tolerance_mm = _check_tolerance(tolerance_mm)
    return _case_metrics(prediction, reference, spacing, tolerance_mm)


def multiclass_case_metrics(
    prediction,
    reference,
    spacing: Sequence[float],
    class_ids: Iterable[int],
    *,
    tolerance_mm: float = 1.0,
) -> dict[int, dict]:
    """case_metrics of each class c, on ``prediction == c`` against ``reference == c``.

    Args:
      prediction: [height, width] or [depth, height, width] integer label map.
      reference: the ground-truth label map, same shape as `prediction`.
      spacing: [ndim] voxel size in mm along each axis, positive and finite.
      class_ids: the labels to evaluate (e.g. (1, 2, 3); 0 is usually background); distinct
        integers. A class absent from both maps scores by the both-empty convention.
      tolerance_mm: NSD tolerance in mm, >= 0.

    Returns:
      {class id: case_metrics dict}, in the order of `class_ids`.
    """
    prediction = np.asarray(prediction)
    reference = np.asarray(reference)
    for name, labels in (("prediction", prediction), ("reference", reference)):
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{name}: expected an integer label map, got dtype {labels.dtype} "
                "(cast it first, e.g. np.rint(labels).astype(np.int32))"
            )
    _check_shapes(prediction, reference)
    spacing = _check_spacing(spacing, prediction.ndim)
    tolerance_mm = _check_tolerance(tolerance_mm)
    class_ids = list(class_ids)
    if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in class_ids):
        raise ValueError(f"class_ids: expected integers, got {class_ids!r}")
    class_ids = [int(c) for c in class_ids]
    if len(set(class_ids)) != len(class_ids):
        raise ValueError(f"class_ids: expected distinct labels, got {class_ids}")
    return {
        c: _case_metrics(prediction == c, reference == c, spacing, tolerance_mm) for c in class_ids
    }
