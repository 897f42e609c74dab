"""Writers of small synthetic NIfTI datasets in each layout the loader reads (MSD, BraTS, paired).

Volumes are cheap to make (an ellipsoid body, a lesion, noise) so that the same writers make the
tiny volumes of the tests and the 40 x 512x512x90 cohort of benchmarks/load_time.py. (The demo's
realistic cohort is synthetic.py's.)
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np

from selal_jax.data.layouts import BRATS_MODALITIES


def make_volume(
    rng: np.random.Generator, shape: tuple[int, int, int], kind: str = "mri"
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (image [X, Y, Z], label [X, Y, Z] uint8) of one synthetic subject.

    kind 'mri': float32 intensities, 0 outside the body; label 1 = lesion.
    kind 'ct': int16 HU, -1000 outside the body; label 1 = organ.
    kind 'brats': float32 intensities; labels 2 (oedema) around 1 (necrosis) and 4 (enhancing).
    The lesion touches only some slices along the last axis, so some slices have no target.
    """
    nx, ny, nz = shape
    x = np.linspace(-1, 1, nx, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    z = np.linspace(-1, 1, nz, dtype=np.float32)[None, None, :]
    body = (x / 0.8) ** 2 + (y / 0.7) ** 2 < 1.0
    body = np.broadcast_to(body, shape)
    centre = rng.uniform(-0.3, 0.3, size=3).astype(np.float32)
    radius = rng.uniform(0.15, 0.3)
    dist = np.sqrt(
        ((x - centre[0]) / radius) ** 2
        + ((y - centre[1]) / radius) ** 2
        + ((z - centre[2]) / (1.5 * radius)) ** 2
    )
    lesion = (dist < 1.0) & body
    noise = rng.standard_normal(shape, dtype=np.float32)
    if kind == "ct":
        image = np.where(body, 40.0 + 20.0 * noise, -1000.0) + 60.0 * lesion
        return np.round(image).astype(np.int16), lesion.astype(np.uint8)
    image = np.where(body, 500.0 + 50.0 * noise + 300.0 * lesion, 0.0).astype(np.float32)
    if kind == "brats":
        label = np.where(lesion, 2, 0).astype(np.uint8)
        label[(dist < 0.6) & body] = 4
        label[(dist < 0.3) & body] = 1
        return image, label
    if kind != "mri":
        raise ValueError(f"kind: expected 'mri', 'ct' or 'brats', got {kind!r}")
    return image, lesion.astype(np.uint8)


def affine_for(spacing=(1.0, 1.0, 2.0)) -> np.ndarray:
    return np.diag([*spacing, 1.0]).astype(np.float64)


def write_nifti(path: str, array: np.ndarray, affine: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def write_msd(
    root: str,
    volumes,
    affines: list[np.ndarray] | None = None,
    modality: dict | None = None,
    labels: dict | None = None,
    names: list[str] | None = None,
) -> str:
    """Writes imagesTr/, labelsTr/ and dataset.json; returns root.

    `volumes` is an iterable of (image, label) pairs (a generator keeps big cohorts out of
    memory).
    """
    training = []
    for i, (image, label) in enumerate(volumes):
        name = names[i] if names else f"case_{i:03d}"
        affine = affines[i] if affines else affine_for()
        write_nifti(os.path.join(root, "imagesTr", f"{name}.nii.gz"), image, affine)
        write_nifti(os.path.join(root, "labelsTr", f"{name}.nii.gz"), label, affine)
        training.append(
            {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}
        )
    meta = {
        "name": "Synthetic",
        "modality": modality or {"0": "MRI"},
        "labels": labels or {"0": "background", "1": "lesion"},
        "numTraining": len(training),
        "training": training,
        "test": [],
    }
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return root


def brats_modality(image: np.ndarray, k: int) -> np.ndarray:
    return (np.abs(image) ** (1.0 + 0.5 * k)).astype(np.float32)


def write_brats(
    root: str,
    cases: dict[str, list[tuple[np.ndarray, np.ndarray]]],
    affine: np.ndarray | None = None,
) -> dict[str, list[str]]:
    """Writes <grade>/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz; returns the case ids by grade.

    Modality k (flair, t1, t1ce, t2) is `brats_modality(image, k)`: a non-linear, zero-preserving
    transform, so that even after z-scoring the modalities differ.
    """
    affine = affine_for((1.0, 1.0, 1.0)) if affine is None else affine
    ids = {}
    for grade, volumes in cases.items():
        ids[grade] = []
        for i, (image, label) in enumerate(volumes):
            case = f"BraTS19_{grade}_{i:03d}_1"
            folder = os.path.join(root, grade, case)
            for k, modality in enumerate(BRATS_MODALITIES):
                path = os.path.join(folder, f"{case}_{modality}.nii.gz")
                write_nifti(path, brats_modality(image, k), affine)
            write_nifti(os.path.join(folder, f"{case}_seg.nii.gz"), label, affine)
            ids[grade].append(case)
    return ids


def write_paired(
    root: str,
    volumes: list[tuple[np.ndarray, np.ndarray]],
    affines: list[np.ndarray] | None = None,
    images_dir: str = "images",
    labels_dir: str = "labels",
    label_suffix: str = "",
) -> list[str]:
    """Writes <images_dir>/<name>.nii.gz and <labels_dir>/<name><label_suffix>.nii.gz."""
    names = []
    for i, (image, label) in enumerate(volumes):
        affine = affines[i] if affines else affine_for()
        name = f"subject{i:02d}"
        write_nifti(os.path.join(root, images_dir, f"{name}.nii.gz"), image, affine)
        write_nifti(os.path.join(root, labels_dir, f"{name}{label_suffix}.nii.gz"), label, affine)
        names.append(name)
    return names


def write_cohort(
    root: str, layout: str, n: int, shape: tuple[int, int, int], seed: int = 0, kind: str = "mri"
) -> str:
    """Writes n synthetic subjects in `layout` (msd | brats | paired); returns root."""
    volumes = (make_volume(np.random.default_rng([seed, i]), shape, kind) for i in range(n))
    if layout == "msd":
        modality = {"0": "CT"} if kind == "ct" else {"0": "MRI"}
        write_msd(root, volumes, modality=modality)
    elif layout == "brats":
        write_brats(root, {"LGG": volumes})
    elif layout == "paired":
        write_paired(root, volumes)
    else:
        raise ValueError(f"layout: expected msd, brats or paired, got {layout!r}")
    return root
