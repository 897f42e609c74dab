"""Dataset layouts -> train/val/test SliceSets, split by subject."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import nibabel as nib
import numpy as np
from absl import logging

from selal_jax.data import preprocess, synthetic
from selal_jax.data.preprocess import DataError
from selal_jax.data.slices import SliceSet, Splits


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    case_id: str
    image: str
    label: str | None


def msd_cases(root: str) -> tuple[list[CaseFiles], dict]:
    """Reads an MSD task folder's dataset.json; returns its training pairs and the metadata."""
    meta_path = os.path.join(root, "dataset.json")
    if not os.path.isfile(meta_path):
        raise DataError(f"{meta_path}: missing dataset.json (MSD layout expected at {root})")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_path}: not valid JSON ({e})") from e
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        raise DataError(
            f"{meta_path}: field 'training' must be a non-empty list of image/label pairs"
        )
    cases = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(f"{meta_path}: field 'training[{i}]' must have 'image' and 'label'")
        image = os.path.normpath(os.path.join(root, entry["image"]))
        label = os.path.normpath(os.path.join(root, entry["label"]))
        if os.path.basename(image).startswith("._"):
            continue  # macOS resource forks shipped inside the real archives
        for path, what in ((image, "image"), (label, "label")):
            if not os.path.isfile(path):
                raise DataError(
                    f"{meta_path}: field 'training[{i}].{what}' lists {path}, which does not exist"
                )
        case_id = os.path.basename(image).split(".nii")[0]
        cases.append(CaseFiles(case_id, image, label))
    return cases, meta


def choose_normalisation(data_config, meta: dict) -> str:
    method = data_config.normalisation
    if method != "auto":
        return method
    modality = " ".join(str(v) for v in (meta.get("modality") or {}).values()).upper()
    return "ct_window" if "CT" in modality.split() else "zscore"


def load_volume(case: CaseFiles) -> preprocess.Volume:
    """Loads one case in canonical orientation, checking it."""
    img = nib.as_closest_canonical(preprocess.load_nifti(case.image, "image"))
    image = preprocess.read_array(img, case.image, "image")
    if image.ndim != 3:
        raise DataError(f"{case.image}: expected a 3D volume, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise DataError(f"{case.image}: contains NaN or Inf voxels")
    label = None
    if case.label is not None:
        lab_img = nib.as_closest_canonical(preprocess.load_nifti(case.label, "label"))
        label = preprocess.read_array(lab_img, case.label, "label", dtype=None)
        if label.shape != image.shape:
            raise DataError(
                f"{case.label}: label shape {label.shape} differs from image shape {image.shape} ({case.image})"
            )
        if not np.allclose(lab_img.affine, img.affine, atol=1e-3):
            raise DataError(f"{case.label}: label affine differs from the image's ({case.image})")
    spacing = np.asarray(img.header.get_zooms()[:3], np.float32)
    return preprocess.Volume(image, label, spacing, img.affine)


def binary_target(label: np.ndarray, label_values, path: str) -> np.ndarray:
    if not np.all(np.isfinite(label)) or not np.all(np.equal(np.mod(label, 1), 0)):
        raise DataError(f"{path}: label values must be integers")
    if label_values:
        return np.isin(label, np.asarray(list(label_values))).astype(np.uint8)
    return (label > 0).astype(np.uint8)


def volume_slices(volume: preprocess.Volume, case: CaseFiles, data_config, method: str):
    """Canonical volume -> (images [n, H, W] f32, labels [n, H, W] u8, slice indices [n])."""
    axis = int(data_config.axis)
    size = tuple(int(s) for s in data_config.size)
    image = preprocess.normalise(volume.image, method, tuple(data_config.ct_window))
    images = preprocess.fit_slices(
        preprocess.to_slices(image, axis), size, data_config.resample, False
    )
    target = binary_target(volume.label, tuple(data_config.label_values), case.label)
    labels = preprocess.fit_slices(
        preprocess.to_slices(target, axis), size, data_config.resample, True
    )
    index = np.arange(len(images), dtype=np.int32)
    if not data_config.keep_empty_slices:
        keep = images.reshape(len(images), -1).any(axis=1)
        images, labels, index = images[keep], labels[keep], index[keep]
    return images.astype(np.float32), labels.astype(np.uint8), index


def split_subjects(
    n_subjects: int, fractions, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded subject split; each part gets at least one subject."""
    fractions = np.asarray(fractions, np.float64)
    if len(fractions) != 3 or np.any(fractions <= 0):
        raise ValueError(
            f"config field data.split: expected three positive fractions, got {tuple(fractions)}"
        )
    if n_subjects < 3:
        raise DataError(
            f"only {n_subjects} subject(s): a train/val/test split by subject needs at least 3"
        )
    fractions = fractions / fractions.sum()
    order = np.random.default_rng(seed).permutation(n_subjects)
    n_val = max(1, int(round(fractions[1] * n_subjects)))
    n_test = max(1, int(round(fractions[2] * n_subjects)))
    n_train = n_subjects - n_val - n_test
    if n_train < 1:
        raise DataError(
            f"{n_subjects} subjects leave no training subject after the split {tuple(fractions)}"
        )
    return (
        np.sort(order[:n_train]),
        np.sort(order[n_train : n_train + n_val]),
        np.sort(order[n_train + n_val :]),
    )


def fingerprint(cases: list[CaseFiles], data_config) -> str:
    """Hash of the source files' names, sizes and mtimes and of the preprocessing config."""
    h = hashlib.sha256()
    for case in cases:
        for path in (case.image, case.label):
            if path is None:
                continue
            st = os.stat(path)
            h.update(f"{os.path.basename(path)}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(json.dumps(data_config.to_dict(), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def resolve_root(data_config, workdir: str) -> str:
    if data_config.layout == "synthetic":
        root = data_config.root or os.path.join(workdir, "synthetic_cohort")
        syn = data_config.synthetic
        return synthetic.write_cohort(
            root,
            int(syn.n_subjects),
            tuple(int(s) for s in syn.shape),
            int(syn.seed),
            tuple(syn.spacing),
        )
    if not data_config.root:
        raise ValueError(f"config field data.root: required for layout {data_config.layout!r}")
    return data_config.root


def load_dataset(data_config, workdir: str) -> Splits:
    """Reads the configured dataset and returns its train/val/test slice sets."""
    root = resolve_root(data_config, workdir)
    if data_config.layout in ("synthetic", "msd"):
        cases, meta = msd_cases(root)
    else:
        raise ValueError(f"config field data.layout: unknown layout {data_config.layout!r}")
    method = choose_normalisation(data_config, meta)
    per_case = []
    for case in cases:
        volume = load_volume(case)
        per_case.append(volume_slices(volume, case, data_config, method) + (volume.spacing,))
    train_s, val_s, test_s = split_subjects(
        len(cases), tuple(data_config.split), int(data_config.split_seed)
    )
    case_ids = [c.case_id for c in cases]

    def gather(subjects) -> SliceSet:
        parts = [per_case[s] for s in subjects]
        n = [len(p[0]) for p in parts]
        return SliceSet(
            images=np.concatenate([p[0] for p in parts]),
            labels=np.concatenate([p[1] for p in parts]),
            subject=np.repeat(np.asarray(subjects, np.int32), n),
            slice_index=np.concatenate([p[2] for p in parts]),
            spacing=np.repeat(np.stack([p[3] for p in parts]), n, axis=0),
            cases=case_ids,
        )

    splits = Splits(gather(train_s), gather(val_s), gather(test_s), fingerprint(cases, data_config))
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        if len(part) == 0:
            raise DataError(f"{root}: the {name} split is empty after filtering")
    logging.info(
        "dataset %s: %d subjects, slices train/val/test = %d/%d/%d of %s",
        root,
        len(cases),
        len(splits.train),
        len(splits.val),
        len(splits.test),
        splits.train.shape,
    )
    return splits
