"""Per-case evaluation at native resolution, as challenges and nnU-Net judge segmentations.

Each round, every test case (volume) is predicted slice by slice, the slices are stacked and
mapped back to the case's own voxel grid (the inverse in-plane fit and orientation that the
annotation export uses, `label_volumes.prefill_volume`), and compared with the case's label file
read the way the loader reads it (`label_volumes.label_file_classes`), per foreground class, with
`metrics.case_metrics` (Dice, HD95, NSD; MONAI's definitions, BraTS's empty-mask convention).

Slices the loader dropped (`data.keep_empty_slices=False`) count as predicted background.
Written per round: `<workdir>/evaluation/round_<r>.csv` (atomically), one row per case and
class (`CSV_FIELDS`: the unit in each name, hd95_mm, volume_pred_mm3); with `eval.save_predictions`, the predicted label volumes as
`<workdir>/evaluation/round_<r>/<case>.nii.gz` (label values of the dataset, source geometry).
"""

from __future__ import annotations

import csv
import io
import os
import time

import numpy as np

from selal_jax.base import atomic
from selal_jax.core import metrics, parallel
from selal_jax.core import train as train_lib
from selal_jax.data import cases, label_maps, label_volumes
from selal_jax.run import workdir as workdir_lib

# The CSV's column for each field of `metrics.case_metrics`, its unit in the name.
CSV_COLUMNS = {
    "dice": "dice",
    "hd95": "hd95_mm",
    "nsd": "nsd",
    "volume_pred": "volume_pred_mm3",
    "volume_ref": "volume_ref_mm3",
}
CSV_FIELDS = ("case", "class", *CSV_COLUMNS.values())


def csv_path(workdir: str, round_index: int) -> str:
    return os.path.join(workdir, workdir_lib.EVALUATION_DIR, f"round_{round_index:03d}.csv")


def file_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing (mm) along the file's own axes: the column norms of the affine."""
    return np.sqrt(np.sum(np.asarray(affine, np.float64)[:3, :3] ** 2, axis=0))


def evaluate_cases(
    model,
    variables,
    test,
    source,
    settings: cases.Settings,
    batches: parallel.Batcher,
    workdir: str,
    round_index: int,
    *,
    tolerance_mm: float = 1.0,
    save_predictions: bool = False,
) -> dict:
    """Evaluates every test case; writes the round's CSV; returns the record fields.

    Args:
      model, variables: the deterministic model (binary or class head).
      test: the test SliceSet (all its cases are labelled).
      source: the layouts.Source the slices came from (case files).
      settings: the loader's cases.Settings (slicing axis, fit, label mapping).
      batches: the run's batcher (slices per prediction call, over its mesh).
      workdir, round_index: where the CSV (and predictions) go.

    Returns:
      {'case_dice', 'case_hd95', 'case_nsd': means over cases and classes,
       'case_dice_per_class': {class name: mean over cases}, 'eval_seconds'}.
    """
    start = time.time()
    class_names = tuple(test.class_names)
    class_ids = list(range(1, len(class_names) + 1))
    index_table = np.arange(len(class_names) + 1)  # write class indices, compare indices
    rows = []
    pred_dir = os.path.join(workdir, workdir_lib.EVALUATION_DIR, f"round_{round_index:03d}")
    variables = batches.replicate(variables)
    for subject in np.unique(test.subject):
        case = source.cases[int(subject)]
        ids = np.flatnonzero(test.subject == subject)
        predicted = batches.map(
            lambda _, images: train_lib.predict_batch(variables, images, model=model),
            ids,
            test.images,
        )
        geometry = label_volumes.Geometry.of(case, settings)
        prediction = label_volumes.prefill_volume(
            geometry, test.slice_index[ids], predicted, index_table
        )
        # The file's voxel order, as the prediction; compared where the reference is known.
        reference, unknown = label_volumes.label_file_classes(case, settings)
        if unknown is not None:
            prediction = np.where(unknown, 0, prediction)
        spacing = file_spacing(geometry.affine)
        per_class = metrics.multiclass_case_metrics(
            prediction, reference, spacing, class_ids, tolerance_mm=tolerance_mm
        )
        for c, m in per_class.items():
            rows.append({"case": case.case_id, "class": class_names[c - 1], **m})
        if save_predictions and parallel.is_primary():
            os.makedirs(pred_dir, exist_ok=True)
            atomic.remove_stale(pred_dir)
            values = label_maps.label_value_table(settings)
            path = os.path.join(pred_dir, f"{case.case_id}.nii.gz")
            # never read; a killed run's is removed by the next (atomic.remove_stale)
            tmp = os.path.join(pred_dir, f".tmp-{atomic.owner_tag()}{case.case_id}.nii.gz")
            dtype = np.uint8 if values.max() <= 255 else np.uint16
            label_volumes.write_label_volume(tmp, values.astype(dtype)[prediction], case)
            os.replace(tmp, path)
    if parallel.is_primary():
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(
            {"case": r["case"], "class": r["class"], **{c: r[k] for k, c in CSV_COLUMNS.items()}}
            for r in rows
        )
        path = csv_path(workdir, round_index)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic.atomic_open(path, "w") as f:
            f.write(out.getvalue())

    def mean(key, name=None):
        values = [r[key] for r in rows if name is None or r["class"] == name]
        return float(np.mean(values)) if values else None

    return {
        "case_dice": mean("dice"),
        "case_hd95": mean("hd95"),
        "case_nsd": mean("nsd"),
        "case_dice_per_class": {name: mean("dice", name) for name in class_names},
        "eval_seconds": time.time() - start,
    }
