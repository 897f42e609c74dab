"""A dry run of the data: what a run would load, without training (`launch.py inspect`).

`describe(config, workdir)` validates the config and loads (and caches) the dataset exactly as
`run.parts.build` does, then returns a JSON-able summary: the cases of each split, slices per
split, channels, classes with their voxel counts, the fraction of slices with target, and per
case its header geometry (orientation code, in-plane size and spacing before resampling).
`format_text` renders that summary for a terminal. Named inspect_data, not inspect, so that it
does not shadow the standard library's module.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from selal_jax.core import parallel
from selal_jax.data import cache, checks, loading, preprocess, reading, splitting
from selal_jax.data.cases import CaseFiles
from selal_jax.run import validation

CHUNK = 256  # slices per pass when counting labels of a memory-mapped split


def _class_counts(labels: np.ndarray, keep: np.ndarray, n_values: int) -> tuple[np.ndarray, int]:
    """(voxels per class index 0..C, slices with any foreground) over the slices where `keep`,
    read in chunks so that a large memory-mapped split is never loaded whole."""
    counts, with_target = np.zeros(n_values, np.int64), 0
    for start in range(0, len(labels), CHUNK):
        rows = np.flatnonzero(keep[start : start + CHUNK]) + start
        if not len(rows):
            continue
        chunk = np.asarray(labels[rows])
        counts += np.bincount(chunk.ravel(), minlength=n_values)[:n_values]
        with_target += int(chunk.reshape(len(rows), -1).any(axis=1).sum())
    return counts, with_target


def case_geometry(case: CaseFiles, axis: int, reorient: str) -> dict:
    """A case's image header as the loader sees it, before any resampling.

    Returns:
      shape and spacing (mm) per file axis, the orientation code (nib.aff2axcodes), and the
      in-plane size and spacing of the slices along `axis` of the loader's volume (canonical
      RAS+, or the stored array with reorient 'none'), with the number of slices along it.
    """
    shape = preprocess.check_header(case)
    affine = np.asarray(reading.load_nifti(case.image, header_only=True).affine, np.float64)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if reorient == "none":
        loader_axis = np.arange(3)
    else:  # file axis i becomes canonical axis ornt[i, 0] (nib.as_closest_canonical)
        loader_axis = nib.io_orientation(affine)[:, 0].astype(int)
    loader_shape, loader_spacing = [0, 0, 0], [0.0, 0.0, 0.0]
    for i in range(3):
        loader_shape[loader_axis[i]] = int(shape[i])
        loader_spacing[loader_axis[i]] = float(spacing[i])
    plane = [a for a in range(3) if a != axis]
    return {
        "orientation": "".join(nib.aff2axcodes(affine)),
        "shape": [int(s) for s in shape],
        "spacing": [round(float(s), 6) for s in spacing],
        "in_plane_size": [loader_shape[a] for a in plane],
        "in_plane_spacing": [round(loader_spacing[a], 6) for a in plane],
        "slices_along_axis": loader_shape[axis],
    }


def describe(config, workdir: str) -> dict:
    """Loads the dataset as a run would and summarises it (see the module docstring).

    The same checks as a run, in the same order: `validation.validate_config`, then
    `loading.load_dataset(config.data, workdir)` (its cache under <workdir>/cache unless
    data.cache_dir is set). Raises what a run would raise for a bad config or bad data.

    Returns:
      a JSON-able dict: splits ({split: [case names]}), left_out (cases in no list of
      data.split_file), n_slices ({split: n}), channels ([names]), classes ([{index, name,
      label_values, voxels: {split: n, total: n}}], voxels at data.size over the labelled
      slices), background_voxels, target_slice_fraction ({split: fraction of its labelled slices
      with any class, or None}), cases ([per case: split, labelled, slices loaded, orientation,
      shape, spacing, in_plane_size, in_plane_spacing, slices_along_axis, image, label]),
      warnings ([what the load logged about the splits]) and dataset (layout, root, workdir, fingerprint, cache folder and the slicing settings).
    """
    validation.validate_config(config)
    os.makedirs(workdir, exist_ok=True)
    # Multi-host: process 0 writes the synthetic cohort and the slice cache, the rest read them.
    splits = parallel.primary_first(lambda: loading.load_dataset(config.data, workdir))
    data, source = config.data, splits.source
    axis, reorient = int(data.axis), str(data.get("reorient", "canonical"))
    parts = dict(zip(splitting.SPLIT_NAMES, (splits.train, splits.val, splits.test), strict=True))
    split_cases = splits.split_cases or {  # caches written before the split was recorded
        name: sorted({part.cases[s] for s in np.unique(part.subject)})
        for name, part in parts.items()
    }
    class_names = splits.train.class_names
    class_values = source.class_label_values() or [None] * len(class_names)
    counts, fraction, slices_of_case, target_slices = {}, {}, {}, {}
    for name, part in parts.items():
        keep = np.asarray(part.has_label, bool)
        counts[name], target_slices[name] = _class_counts(part.labels, keep, len(class_names) + 1)
        fraction[name] = target_slices[name] / int(keep.sum()) if keep.any() else None
        ids, n = np.unique(np.asarray(part.subject), return_counts=True)
        slices_of_case.update({part.cases[i]: int(c) for i, c in zip(ids, n, strict=True)})
    total = sum(counts.values())
    classes = [
        {
            "index": k,
            "name": class_names[k - 1],
            "label_values": None if class_values[k - 1] is None else list(class_values[k - 1]),
            "voxels": {**{name: int(counts[name][k]) for name in parts}, "total": int(total[k])},
        }
        for k in range(1, len(class_names) + 1)
    ]
    split_of = {c: name for name, cases in split_cases.items() for c in cases}
    cases = [
        {
            "case": case.case_id,
            "split": split_of[case.case_id],
            "labelled": case.label is not None,
            "slices": slices_of_case.get(case.case_id, 0),
            **case_geometry(case, axis, reorient),
            "image": os.path.abspath(case.image),
            "label": None if case.label is None else os.path.abspath(case.label),
        }
        for case in source.cases
        if case.case_id in split_of
    ]
    cache_dir = cache.cache_dir(data, workdir)
    return {
        "dataset": {
            "layout": str(data.layout),
            "root": os.path.abspath(source.root),
            "workdir": os.path.abspath(workdir),
            "fingerprint": splits.fingerprint,
            "cache": os.path.abspath(os.path.join(cache_dir, splits.fingerprint)),
            "reorient": reorient,
            "axis": axis,
            "size": [int(s) for s in data.size],
            "resample": str(data.resample),
            "split_file": data.get("split_file", None),
            "group_regex": str(data.get("group_regex", "") or ""),
        },
        "splits": {name: list(split_cases[name]) for name in parts},
        "left_out": [c.case_id for c in source.cases if c.case_id not in split_of],
        "n_slices": {name: len(part) for name, part in parts.items()},
        "channels": list(splits.train.channel_names),
        "classes": classes,
        "background_voxels": {
            **{name: int(counts[name][0]) for name in parts},
            "total": int(total[0]),
        },
        "target_slice_fraction": fraction,
        "cases": cases,
        # what the load logged: a split without target, a test split on one case or few
        # lesion slices (`data.checks.split_notes`)
        "warnings": checks.split_notes(target_slices, list(split_cases["test"])),
    }


def _table(header: list[str], rows: list[list]) -> list[str]:
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


def format_text(info: dict) -> str:
    """The summary of `describe` as plain text for a terminal."""
    d = info["dataset"]
    height, width = d["size"]
    volume = "stored array (data.reorient=none)" if d["reorient"] == "none" else "RAS+ volume"
    lines = [
        f"dataset {d['root']} (layout {d['layout']}), cache {d['cache']}",
        f"slices along axis {d['axis']} of each {volume}, fitted to {height}x{width} by "
        f"{d['resample']}",
        f"channels ({len(info['channels'])}): {', '.join(info['channels'])}",
        "",
    ]
    split_rows = []
    for name, cases in info["splits"].items():
        f = info["target_slice_fraction"][name]
        split_rows.append(
            [name, len(cases), info["n_slices"][name], "-" if f is None else f"{100 * f:.1f}%"]
        )
    lines += _table(["split", "cases", "slices", "slices with target"], split_rows)
    names = [*info["splits"], "total"]
    class_rows = [["0 background", *(info["background_voxels"][n] for n in names)]]
    for c in info["classes"]:
        values = "" if c["label_values"] is None else f" (label values {c['label_values']})"
        class_rows.append([f"{c['index']} {c['name']}{values}", *(c["voxels"][n] for n in names)])
    lines += ["", f"voxels per class (labelled slices at {height}x{width}):"]
    lines += _table(["class", *names], class_rows)
    case_rows = [
        [
            c["case"],
            c["split"] + ("" if c["labelled"] else " (unlabelled)"),
            c["orientation"],
            "x".join(str(s) for s in c["in_plane_size"]),
            " x ".join(f"{s:g}" for s in c["in_plane_spacing"]),
            c["slices"],
        ]
        for c in info["cases"]
    ]
    lines += ["", "cases (header geometry before resampling):"]
    lines += _table(
        ["case", "split", "orientation", "in-plane size", "in-plane spacing (mm)", "slices"],
        case_rows,
    )
    if info["left_out"]:
        lines += ["", f"left out by the split file: {', '.join(info['left_out'])}"]
    if info["warnings"]:
        lines += [""] + [f"warning: {note}" for note in info["warnings"]]
    return "\n".join(lines)
