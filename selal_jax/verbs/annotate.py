"""A human annotator: export each round's query for a clinician, import the corrected masks.

With `al.annotator = "human"`, `loop.run` trains round r, scores the pool and stops, its
checkpoint holding the query as awaiting labels. Then:

  `export_query(config, workdir, out)` writes query.csv and query.json (one row per queried
  slice: case, source file, slice axis and index in the file's voxel axes, stream, score) and,
  per queried case, labels/<case>.nii.gz: a label volume in the source image's geometry (shape,
  affine, orientation), holding the model's predicted mask on the queried slices and 0 elsewhere,
  to open over the image and correct in ITK-SNAP or 3D Slicer;

  `import_labels(config, workdir, labels_dir)` reads the corrected volumes, checks every one
  (readable, geometry equal to the source image's, label values, nothing outside the queried
  slices), keeps the queried slices and stores them in the workdir (`label_store`): at data.size
  for training and at the source resolution (each slice's voxels of the file, with the file's
  SHA-256) for the nnU-Net export. A rejected file is named with its reason, and if any is
  rejected nothing changes. The next `loop.run` continues with round r + 1.

Geometry (`label_volumes.Geometry`, from the case and the run's settings): the loader cuts
slices from the canonical (RAS+) volume along data.axis and fits each to data.size. Export
inverts both (`fitting.unfit_slices`, then the canonical volume is reoriented to the file's
axes). Import runs the loader's own forward path on the corrected file (canonical read, label
mapping, slicing, fitting), so the true masks written into the exported volumes give exactly the
slices the loader makes from the dataset's label files. With data.reorient = 'none' the loader's
"canonical" volume is the file's own voxel order: the geometry is the identity orientation.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
import time

import numpy as np
from absl import logging

from selal_jax.base import atomic
from selal_jax.base.errors import DataError, UserError
from selal_jax.core import rng
from selal_jax.data import (
    cases,
    digests,
    fitting,
    label_maps,
    label_volumes,
    layouts,
    reading,
    volumes,
)
from selal_jax.data.cases import CaseFiles
from selal_jax.run import label_store, lock, state
from selal_jax.run import workdir as workdir_lib

QUERY_CSV, QUERY_JSON, LABELS_DIR = "query.csv", "query.json", "labels"
CSV_FIELDS = (
    "rank",
    "pool_id",
    "case_id",
    "image_file",
    "label_file",
    "axis",
    "slice_index",
    "plane",
    "stream",
    "score",
    "canonical_axis",
    "canonical_index",
)
AXIS_NOTE = (
    "axis and slice_index are 0-based voxel coordinates of the source file (axis 0 = i, 1 = j, "
    "2 = k, as 3D Slicer's IJK); canonical_axis/canonical_index are the loader's (RAS+) ones "
    "(with data.reorient = 'none' the file's own)"
)


class AnnotationError(UserError):
    """An export or import was refused; the message names each file and the reason."""


def predicted_masks(run: state.FinishedRun, ids: np.ndarray) -> np.ndarray:
    """[n, H, W] uint8 predicted class indices (binary: masks) of pool ids, by the model of the
    run's latest round (restored read-only), in the run's batches over its mesh."""
    return run.predict(ids, run.variables())


@dataclasses.dataclass
class QueriedCase:
    """The queried slices of one case, in selection order."""

    case: CaseFiles
    geometry: label_volumes.Geometry
    positions: list[int]  # positions in the query
    canonical_index: np.ndarray  # [n] along data.axis of the canonical volume
    file_axis: int
    file_index: np.ndarray  # [n] along file_axis


def queried_cases(
    run: state.FinishedRun, ids: np.ndarray, settings: cases.Settings
) -> dict[str, QueriedCase]:
    """The query grouped by case (in order of first appearance), with each case's geometry
    under the run's `settings` (`Splits.settings`)."""
    train = run.pool
    source: layouts.Source = run.splits.source
    groups: dict[int, list[int]] = collections.OrderedDict()
    for position, pool_id in enumerate(ids):
        groups.setdefault(int(train.subject[pool_id]), []).append(position)
    out = {}
    for subject, positions in groups.items():
        case = source.cases[subject]
        if case.case_id in out:
            raise AnnotationError(f"{case.image}: two queried cases named {case.case_id}")
        geometry = label_volumes.Geometry.of(case, settings)
        canonical_index = np.asarray([int(train.slice_index[ids[p]]) for p in positions])
        out[case.case_id] = QueriedCase(
            case,
            geometry,
            positions,
            canonical_index,
            geometry.file_axis,
            geometry.file_index(canonical_index),
        )
    return out


def _open(config, workdir: str) -> state.FinishedRun:
    """The run in `workdir`, read-only, which must be a human-annotator run with a checkpoint."""
    if not workdir_lib.has_checkpoint(workdir):
        raise AnnotationError(f"{workdir}: no checkpoint; start the run with `launch.py run`")
    if config.al.annotator != "human":
        raise AnnotationError(
            f"{workdir}: config field al.annotator is {config.al.annotator!r}; export and import "
            "need a run started with --config.al.annotator=human"
        )
    return state.open_finished(config, workdir)


def _awaited(run: state.FinishedRun) -> tuple[int, np.ndarray]:
    """(round, query ids in selection order) awaiting labels; raises if none is."""
    if run.awaiting is None:
        last = run.history[-1]["round"] if run.history else None
        raise AnnotationError(
            f"{run.parts.workdir}: no query awaits labels (last round {last}: its labels are "
            "imported or it queried nothing); `launch.py run` continues the run"
        )
    return run.awaiting, np.asarray(run.history[-1]["queried"], np.int64)


@rng.with_classic_threefry
def export_query(config, workdir: str, out: str | None = None) -> str:
    """Writes the awaited round's query for the annotator; returns the folder written.

    `out` defaults to <workdir>/queries/round_<r>; it must not exist yet or be empty (an earlier
    export there may hold corrections). It is written in a temporary sibling and renamed.
    """
    with lock.hold(workdir, create=False, read_only=True):
        run = _open(config, workdir)
        r, ids = _awaited(run)
        record = run.history[-1]
        masks = predicted_masks(run, ids)
        settings = run.parts.settings
        cases = queried_cases(run, ids, settings)
    label_values = label_maps.label_value_table(settings)
    class_names = ("background", *run.pool.class_names)
    out = os.path.abspath(out or os.path.join(workdir, workdir_lib.QUERIES_DIR, f"round_{r:03d}"))
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise AnnotationError(
            f"{out}: already exists; it may hold corrected labels: remove it or choose another "
            "output folder"
        )
    with atomic.atomic_folder(out, prefix=".tmp-query-") as tmp:
        os.makedirs(os.path.join(tmp, LABELS_DIR))
        rows: list[dict] = [{} for _ in ids]
        for case_id, qc in cases.items():
            name = os.path.join(LABELS_DIR, f"{case_id}.nii.gz")
            data = label_volumes.prefill_volume(
                qc.geometry, qc.canonical_index, masks[qc.positions], label_values
            )
            label_volumes.write_label_volume(os.path.join(tmp, name), data, qc.case)
            for k, position in enumerate(qc.positions):
                rows[position] = {
                    "rank": position + 1,
                    "pool_id": int(ids[position]),
                    "case_id": case_id,
                    "image_file": os.path.abspath(qc.case.image),
                    "label_file": name,
                    "axis": qc.file_axis,
                    "slice_index": int(qc.file_index[k]),
                    "plane": qc.geometry.plane(qc.file_axis),
                    "stream": record["queried_streams"][position],
                    "score": record["queried_scores"][position],  # None (random): empty cell
                    "canonical_axis": settings.axis,
                    "canonical_index": int(qc.canonical_index[k]),
                }
        with open(os.path.join(tmp, QUERY_CSV), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        summary = {
            "round": r,
            "workdir": os.path.abspath(workdir),
            "n_slices": len(ids),
            "label_values": dict(zip(class_names[1:], label_values[1:].tolist(), strict=True)),
            "axis_note": AXIS_NOTE,
            "cases": [
                {
                    "case_id": case_id,
                    "image_file": os.path.abspath(qc.case.image),
                    "label_file": os.path.join(LABELS_DIR, f"{case_id}.nii.gz"),
                    "axis": qc.file_axis,
                    "slice_indices": [int(i) for i in qc.file_index],
                }
                for case_id, qc in cases.items()
            ],
            "slices": rows,
        }
        with open(os.path.join(tmp, QUERY_JSON), "w") as f:
            json.dump(summary, f, indent=1)
    logging.info("round %d: exported %d slices of %d cases to %s", r, len(ids), len(cases), out)
    return out


def read_correction(
    path: str, qc: QueriedCase, allow_changes_outside_query: bool = False
) -> tuple[tuple[np.ndarray, np.ndarray] | None, list[str]]:
    """Reads and checks one corrected label volume.

    Returns:
      ((masks, planes), []) if the file is accepted, else (None, reasons), each reason naming
      the file. masks: [n, H, W] uint8 class indices of the queried slices at data.size (the
      loader's preprocessing, what training reads); planes: [n, a, b] uint8 class indices of the
      same slices at the source resolution (`Geometry.file_planes`: the file's voxels).
    """
    geometry = qc.geometry
    settings = geometry.settings
    try:
        if volumes.is_segmentation(path):  # 3D Slicer: its (cropped) extent on the image grid
            header = volumes.load_segmentation(path, geometry.shape, geometry.affine)
        else:
            header = reading.load_nifti(path, "label")
        shape = tuple(int(s) for s in header.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if shape != tuple(geometry.shape):
            return None, [
                f"{path}: shape {shape} differs from the source image's {geometry.shape} "
                f"({qc.case.image})"
            ]
        if not np.allclose(header.affine, geometry.affine, rtol=1e-4, atol=1e-3):
            return None, [
                f"{path}: affine (orientation, spacing or origin) differs from the source "
                f"image's ({qc.case.image}):\nfile   {np.round(header.affine, 4).tolist()}\n"
                f"source {np.round(geometry.affine, 4).tolist()}"
            ]
        label, _ = reading.read_canonical(
            path, "label", None, as_float=False, reorient=settings.canonical, img=header
        )
    except DataError as e:  # unreadable, truncated: the message names the file
        return None, [str(e)]
    reasons, target = [], None
    try:
        target = label_maps.label_indices(label, path, settings)
    except DataError as e:  # non-integer, negative or values outside the classes
        reasons.append(str(e))
    stack = np.moveaxis(label, settings.axis, 0)
    outside = np.ones(len(stack), bool)
    outside[qc.canonical_index] = False
    changed = np.flatnonzero(outside & stack.reshape(len(stack), -1).any(axis=1))
    if len(changed) and not allow_changes_outside_query:
        where = sorted(geometry.file_index(changed).tolist())
        reasons.append(
            f"{path}: non-zero voxels on {len(changed)} slices outside the query (axis "
            f"{qc.file_axis}, slices {where[:10]}{' ...' if len(where) > 10 else ''}); only "
            f"slices {sorted(int(i) for i in qc.file_index)} were asked for: erase the rest, "
            "or allow changes outside the query to ignore them"
        )
    if reasons:
        return None, reasons
    planes = np.moveaxis(target, settings.axis, 0)[qc.canonical_index]
    masks = fitting.fit_case_slices(planes, settings, geometry.canonical_spacing(), True)
    native = geometry.file_planes(geometry.to_file(target), qc.canonical_index)
    return (masks, np.ascontiguousarray(native, np.uint8)), []


def _find_files(labels_dir: str, case_ids) -> tuple[dict[str, str | None], list[str], list[str]]:
    """({case_id: path, or None if it has two}, problems, ignored files) of a folder of
    corrected volumes."""
    names = [n for n in sorted(os.listdir(labels_dir)) if layouts.is_nifti(n)]
    by_case = collections.defaultdict(list)
    for name in names:
        by_case[layouts.strip_nifti(name)].append(os.path.join(labels_dir, name))
    found, problems = {}, []
    for case_id in case_ids:
        paths = by_case.get(case_id, [])
        if len(paths) > 1:
            problems.append(f"{', '.join(paths)}: two files for queried case {case_id}; keep one")
            found[case_id] = None
        elif paths:
            found[case_id] = paths[0]
    ignored = [p for c, ps in by_case.items() if c not in case_ids for p in ps]
    return found, problems, ignored


@rng.with_classic_threefry
def import_labels(
    config, workdir: str, labels_dir: str, allow_changes_outside_query: bool = False
) -> dict:
    """Imports the corrected label volumes of the awaited round's query; returns a summary.

    `labels_dir` holds <case>.nii.gz (or .nii, a plain .nrrd label map, or a 3D Slicer
    segmentation <case>.seg.nrrd) per queried case: the export's labels/ folder, or the export
    folder itself. Every file is checked before anything is written; if any is
    rejected, an AnnotationError lists each rejected file with its reason and nothing changes.
    With `allow_changes_outside_query`, voxels outside the queried slices are ignored instead.
    """
    labels_dir = os.path.abspath(labels_dir)
    if os.path.isfile(os.path.join(labels_dir, QUERY_JSON)):
        labels_dir = os.path.join(labels_dir, LABELS_DIR)  # given the export folder
    if not os.path.isdir(labels_dir):
        raise AnnotationError(f"{labels_dir}: labels folder not found")
    with lock.hold(workdir, create=False):
        run = _open(config, workdir)
        r, ids = _awaited(run)
        settings = run.parts.settings
        cases = queried_cases(run, ids, settings)
        found, problems, ignored = _find_files(labels_dir, list(cases))
        masks = np.zeros((len(ids), *settings.size), np.uint8)
        native = label_store.NativeLabels(
            np.zeros(len(ids), np.int64), np.zeros(len(ids), np.int64), [None] * len(ids)
        )
        file_digests = {}
        for case_id, qc in cases.items():
            if case_id in found and found[case_id] is None:
                continue  # two files: reported
            if case_id not in found:
                expected = os.path.join(labels_dir, f"{case_id}.nii.gz")
                problems.append(
                    f"{expected}: missing; case {case_id} was queried (axis {qc.file_axis}, "
                    f"slices {sorted(int(i) for i in qc.file_index)})"
                )
                continue
            labels, reasons = read_correction(found[case_id], qc, allow_changes_outside_query)
            problems += reasons
            if labels is not None:
                file_digests[case_id] = digests.sha256_file(found[case_id])
                masks[qc.positions] = labels[0]
                native.axis[qc.positions] = qc.file_axis
                native.index[qc.positions] = qc.file_index
                for k, position in enumerate(qc.positions):
                    native.planes[position] = labels[1][k]
        if problems:
            raise AnnotationError(
                f"import of round {r}'s labels from {labels_dir} rejected, nothing changed "
                f"({len(problems)} problems):\n" + "\n".join(problems)
            )
        if ignored:
            logging.warning("ignored files of cases not in round %d's query: %s", r, ignored)
        note = {
            "round": r,
            "labels_dir": labels_dir,
            "files": found,
            "sha256": file_digests,  # of each file, as read
            "allow_changes_outside_query": bool(allow_changes_outside_query),
            "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        run.labels.accept(r, ids, masks, native, note, run.history[-1], workdir)
        workdir_lib.write_records(workdir, run.history)
        record = run.history[-1]
    summary = {
        "round": r,
        "n_slices": len(ids),
        "n_cases": len(cases),
        "queried_with_target": record["queried_with_target"],
        "store": run.labels.annotator.store.path(r),
        "n_labelled": int(run.labelled.sum()),
    }
    logging.info("imported round %d's labels: %s", r, summary)
    return summary
