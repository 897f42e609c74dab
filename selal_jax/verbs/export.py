"""A run's labelled set as an nnU-Net v2 raw dataset, to train a downstream 3D model on.

`export_nnunet(config, workdir, out)` writes, for the labelled set of the run's latest round:

  dataset.json                   channel_names; labels: background 0, the run's classes 1..C
                                 (named as the run names them), ignore C + 1, as nnU-Net v2
                                 requires (consecutive values, ignore the highest); numTraining,
                                 file_ending ".nii.gz"; and label_mapping: each exported value's
                                 class and the dataset's label values it stands for
  imagesTr/<case>_<XXXX>.nii.gz  each input channel of every training case with a labelled
                                 slice, in the source file's geometry (voxels and affine)
  labelsTr/<case>.nii.gz         on each labelled slice, the labels at the source resolution:
                                 for a slice a clinician labelled (al.annotator = human), the
                                 voxels of the imported file as `import-labels` kept them; for
                                 the others, the dataset's label file, read and mapped to the
                                 classes as the loader reads it; `ignore` everywhere else, so
                                 nnU-Net v2 trains on the sparse slices alone.

Slices map to the file's voxels through `label_volumes.Geometry` (the run's orientation and
axis), as the annotation export and import do. Annotation files written before the source
resolution was kept hold only the data.size masks: their slices are written as those masks
mapped back (`label_volumes.prefill_volume`), pixels the loader never saw as ignore, with a
warning.
"""

from __future__ import annotations

import collections
import json
import os
import shutil

import nibabel as nib
import numpy as np
from absl import logging

from selal_jax.base import atomic
from selal_jax.base.errors import UserError
from selal_jax.core import rng
from selal_jax.data import cases, label_maps, label_volumes, reading
from selal_jax.run import state
from selal_jax.run import workdir as workdir_lib

IGNORE = "ignore"


class ExportError(UserError):
    """The export was refused; the message says why."""


def _write_channel(path: str, source: str, channel: int | None) -> None:
    """One input channel of a source file as NIfTI in the file's geometry (a 3D .nii.gz is
    copied as it is; others are converted, keeping the voxel type and NIfTI header codes)."""
    if channel is None and source.endswith(".nii.gz"):
        shutil.copyfile(source, path)
        return
    img = reading.load_nifti(source, "image")
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4:
        data = data[..., channel or 0]
    image = nib.Nifti1Image(np.ascontiguousarray(data), img.affine)
    header = img.header
    if getattr(img, "nrrd_header", None) is None and hasattr(header, "get_sform"):
        image.set_sform(*header.get_sform(coded=True))
        image.set_qform(*header.get_qform(coded=True))
        image.header.set_xyzt_units(*header.get_xyzt_units())
        image.header.set_slope_inter(*header.get_slope_inter())
    nib.save(image, path)


def nnunet_labels(class_names, settings: cases.Settings) -> tuple[dict, dict]:
    """(dataset.json `labels`, `label_mapping`) of the run's classes.

    nnU-Net v2 wants consecutive values with the ignore label the highest: class index k (the
    loader's) is exported as k, background 0, ignore C + 1. A name that would repeat one before
    it (or read as background or ignore) gets its value appended.
    """
    labels = {"background": 0}
    for k, name in enumerate(class_names, start=1):
        name = str(name)
        labels[name if name not in labels and name != IGNORE else f"{name}_{k}"] = k
    labels[IGNORE] = len(class_names) + 1
    if settings.class_values is not None:
        values = [list(v) for v in settings.class_values]
    else:  # the binary target: its values, or every value above 0
        values = [list(settings.target_values) if settings.target_values else "any value > 0"]
    names = list(labels)[1:-1]
    mapping = {
        "description": (
            "exported label value -> the class it stands for and the dataset's label values of "
            "that class; to write a prediction in the dataset's values, replace value k by "
            "dataset_value[k]"
        ),
        "classes": {
            str(k): {"name": name, "dataset_values": v}
            for k, (name, v) in enumerate(zip(names, values, strict=True), start=1)
        },
        "dataset_value": label_maps.label_value_table(settings).tolist(),
    }
    return labels, mapping


def _labelled_slices(run: state.FinishedRun) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{subject: (pool ids, canonical slice indices)} of the labelled set."""
    train = run.pool
    by_subject: dict[int, list[int]] = collections.OrderedDict()
    for pool_id in np.flatnonzero(run.labelled).tolist():
        by_subject.setdefault(int(train.subject[pool_id]), []).append(pool_id)
    return {
        s: (np.asarray(ids, np.int64), np.asarray(train.slice_index[ids], np.int64))
        for s, ids in sorted(by_subject.items())
    }


def _human_planes(geometry, case, pool_ids, canonical_index, native) -> np.ndarray:
    """[n, a, b] imported planes of these pool ids (all in `native`), checked against the
    geometry the run's settings give."""
    index = geometry.file_index(canonical_index)
    shape = tuple(n for a, n in enumerate(geometry.shape) if a != geometry.file_axis)
    planes = []
    for pool_id, i in zip(pool_ids.tolist(), index.tolist(), strict=True):
        axis, stored, plane = native[pool_id]
        if (axis, stored) != (geometry.file_axis, i) or plane.shape != shape:
            raise ExportError(
                f"{case.image}: the imported labels of pool slice {pool_id} are a plane of "
                f"shape {plane.shape} at axis {axis}, index {stored}; this run's geometry "
                f"gives a plane of shape {shape} at axis {geometry.file_axis}, index {i}"
            )
        planes.append(plane)
    return np.stack(planes)


def label_volume(
    geometry: label_volumes.Geometry,
    case: cases.CaseFiles,
    pool_ids: np.ndarray,
    canonical_index: np.ndarray,
    native: dict,
    resampled: dict,
    ignore: int,
) -> np.ndarray:
    """One case's exported label volume, in the file's voxel order.

    Args:
      pool_ids, canonical_index: [n] the case's labelled slices.
      native: {pool id: (file axis, file index, [a, b] class indices)} of imported labels.
      resampled: {pool id: [H, W] training mask} of imported labels without the source
        resolution (older annotation files).
      ignore: the value of every voxel not on a labelled slice.

    Returns:
      uint8 (uint16 above 255) class indices of geometry.shape, `ignore` off the slices.
    """
    dtype = np.uint8 if ignore <= 255 else np.uint16
    volume = np.full(geometry.shape, ignore, dtype)
    human = np.asarray([i in native for i in pool_ids.tolist()], bool)
    old = np.asarray([i in resampled for i in pool_ids.tolist()], bool)
    dataset = ~human & ~old
    if dataset.any():
        if case.label is None:
            raise ExportError(
                f"{case.image}: labelled slices without imported labels or a label file"
            )
        classes, unknown = label_volumes.label_file_classes(case, geometry.settings)
        if unknown is not None:  # the dataset's own unlabelled voxels stay unlabelled
            classes = np.where(unknown, ignore, classes).astype(dtype)
        rows = canonical_index[dataset]
        geometry.put_planes(volume, rows, geometry.file_planes(classes, rows))
    if human.any():
        planes = _human_planes(geometry, case, pool_ids[human], canonical_index[human], native)
        geometry.put_planes(volume, canonical_index[human], planes)
    if old.any():
        rows = canonical_index[old]
        masks = np.stack([resampled[i] for i in pool_ids[old].tolist()])
        values = np.arange(ignore)  # class indices as they are
        back = label_volumes.prefill_volume(geometry, rows, masks, values)
        # Where the loader saw the slice: the rest was cropped away by data.resample or spacing.
        seen = label_volumes.prefill_volume(geometry, rows, np.ones_like(masks), 1)
        planes = np.where(seen == 1, back, ignore)
        geometry.put_planes(volume, rows, geometry.file_planes(planes, rows))
    return volume


@rng.with_classic_threefry
def export_nnunet(config, workdir: str, out: str) -> str:
    """Writes the run's labelled set as an nnU-Net v2 raw dataset in `out`; returns `out`.

    `out` must not exist or be empty; it is written in a temporary sibling and renamed.
    """
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ExportError(f"{out}: already exists and is not empty; choose another --out")
    if not workdir_lib.has_checkpoint(workdir):
        raise ExportError(f"{workdir}: no checkpoint; run the experiment first (`launch.py run`)")
    run = state.open_finished(config, workdir)  # read-only: the workdir may be mounted so
    slices = _labelled_slices(run)
    native, resampled = {}, {}
    annotator = run.labels.annotator
    if annotator is not None:
        native, older = annotator.native_labels()
        for r in older:
            ids, masks = annotator.store.read(r)
            resampled.update(zip(ids.tolist(), masks, strict=True))
            logging.warning(
                "%s: written before imports kept the source resolution; its %d slices are "
                "exported as their %s training masks mapped back to the source grid",
                annotator.store.path(r),
                len(ids),
                "x".join(str(s) for s in masks.shape[1:]),
            )
    source, settings = run.parts.splits.source, run.parts.settings
    channel_names, class_names = run.pool.channel_names, run.pool.class_names
    last_round = run.history[-1]["round"] if run.history else None
    labels, mapping = nnunet_labels(class_names, settings)
    ignore = labels[IGNORE]
    with atomic.atomic_folder(out, prefix=".tmp-nnunet-") as tmp:
        os.makedirs(os.path.join(tmp, "imagesTr"))
        os.makedirs(os.path.join(tmp, "labelsTr"))
        cases = []
        for subject, (pool_ids, canonical_index) in slices.items():
            case = source.cases[subject]
            geometry = label_volumes.Geometry.of(case, settings)
            data = label_volume(
                geometry, case, pool_ids, canonical_index, native, resampled, ignore
            )
            label_volumes.write_label_volume(
                os.path.join(tmp, "labelsTr", f"{case.case_id}.nii.gz"), data, case
            )
            for c, (path, channel) in enumerate(case.channel_sources):
                name = f"{case.case_id}_{c:04d}.nii.gz"
                _write_channel(os.path.join(tmp, "imagesTr", name), path, channel)
            cases.append(case.case_id)
        meta = {
            "channel_names": {str(i): str(n) for i, n in enumerate(channel_names)},
            "labels": labels,
            "numTraining": len(cases),
            "file_ending": ".nii.gz",
            "name": os.path.basename(out),
            "description": (
                f"labelled slices of round {last_round} of the active-learning run "
                f"{os.path.abspath(workdir)}; every other voxel is {IGNORE} ({ignore})"
            ),
            "label_mapping": mapping,
        }
        with open(os.path.join(tmp, "dataset.json"), "w") as f:
            json.dump(meta, f, indent=1)
    logging.info(
        "exported %d labelled slices of %d cases to %s",
        sum(len(ids) for ids, _ in slices.values()),
        len(cases),
        out,
    )
    return out
