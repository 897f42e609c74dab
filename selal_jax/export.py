"""A run's labelled set as an nnU-Net v2 raw dataset, to train a downstream 3D model on.

`export_nnunet(config, workdir, out)` writes, for the labelled set of the run's latest round:

  dataset.json                   channel_names, labels (with "ignore", the highest value),
                                 numTraining, file_ending ".nii.gz"
  imagesTr/<case>_<XXXX>.nii.gz  each input channel of every training case with a labelled
                                 slice, in the source file's geometry (voxels and affine)
  labelsTr/<case>.nii.gz         the labels the run trained on (the dataset's, or the imported
                                 annotations of a human run) on its labelled slices, mapped back
                                 to the source geometry as the annotation export does
                                 (`label_volumes.prefill_volume`), and the ignore label everywhere
                                 else, so nnU-Net v2 trains on the sparse slices alone.

A labelled slice's pixels that the loader never showed the model (cropped away by
data.resample=crop or data.spacing) are ignore too. Class k's voxels get its label value (the
first of its values, `preprocess.label_value_table`), so the dataset's label files and the
export agree.
"""

from __future__ import annotations

import collections
import json
import os
import shutil

import nibabel as nib
import numpy as np
from absl import logging

from selal_jax import atomic, label_volumes, loop, rng
from selal_jax import workdir as workdir_lib
from selal_jax.data import loading, preprocess
from selal_jax.errors import UserError

IGNORE = "ignore"


class ExportError(UserError):
    """The export was refused; the message says why."""


def _write_channel(path: str, source: str, channel: int | None) -> None:
    """One input channel of a source file as NIfTI in the file's geometry (a 3D .nii.gz is
    copied as it is; others are converted, keeping the voxel type and NIfTI header codes)."""
    if channel is None and source.endswith(".nii.gz"):
        shutil.copyfile(source, path)
        return
    img = preprocess.load_nifti(source, "image")
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


def _labelled_slices(experiment: loop.Experiment) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{subject: (canonical slice indices, [n, H, W] training labels)} of the labelled set."""
    train = experiment.pool
    ids = np.flatnonzero(experiment.labelled)
    labels = np.asarray(train.labels[ids], np.uint8)  # an imported-labels overlay reads too
    by_subject: dict[int, list[int]] = collections.OrderedDict()
    for k, pool_id in enumerate(ids):
        by_subject.setdefault(int(train.subject[pool_id]), []).append(k)
    return {
        s: (np.asarray(train.slice_index[ids[ks]], np.int64), labels[ks])
        for s, ks in sorted(by_subject.items())
    }


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
    experiment = loop.Experiment.open(config, workdir, with_model=False)
    try:
        slices = _labelled_slices(experiment)
        source = experiment.splits.source
        channel_names = experiment.pool.channel_names
        class_names = experiment.pool.class_names
        last_round = experiment.history[-1]["round"] if experiment.history else None
    finally:
        experiment.close()
    settings = loading.make_settings(config.data, source)
    label_values = preprocess.label_value_table(settings)
    ignore = int(label_values.max()) + 1  # nnU-Net: the ignore label is the highest value
    dtype = np.uint8 if ignore <= 255 else np.uint16
    labels = {"background": 0}
    for name, value in zip(class_names, label_values[1:].tolist(), strict=True):
        labels[str(name)] = int(value)
    labels[IGNORE] = ignore
    with atomic.atomic_folder(out, prefix=".tmp-nnunet-") as tmp:
        os.makedirs(os.path.join(tmp, "imagesTr"))
        os.makedirs(os.path.join(tmp, "labelsTr"))
        cases = []
        for subject, (canonical_index, masks) in slices.items():
            case = source.cases[subject]
            geometry = label_volumes.Geometry.of(case)
            volume = label_volumes.prefill_volume(
                geometry, settings, canonical_index, masks, label_values
            )
            # Where the labels are: the labelled slices, less what the fit cropped away.
            seen = label_volumes.prefill_volume(
                geometry, settings, canonical_index, np.ones_like(masks), 1
            )
            data = np.where(seen == 1, volume, ignore).astype(dtype)
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
        }
        with open(os.path.join(tmp, "dataset.json"), "w") as f:
            json.dump(meta, f, indent=1)
    logging.info(
        "exported %d labelled slices of %d cases to %s",
        sum(len(i) for i, _ in slices.values()),
        len(cases),
        out,
    )
    return out
