"""A deterministic synthetic cohort written as real NIfTI files in the MSD layout.

Each subject is a 3D "MRI" volume: an elliptical body with tissue texture, a smooth multiplicative
bias field and Rician-like noise, plus a label volume with a few small irregular lesions (some of
them faint). Lesions occupy a minority of axial slices and roughly 0.2-3 % of a positive slice,
so most slices have no target at all: the imbalance the paper is about.

The cohort goes through `selal_jax.data.layouts.msd_source` exactly like a downloaded MSD task.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import nibabel as nib
import numpy as np
from scipy import ndimage

DATASET_NAME = "SyntheticLesions"


def _smooth_noise(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (field.std() + 1e-8)


def make_subject(rng: np.random.Generator, shape: tuple[int, int, int], spacing=(1.0, 1.0, 2.0)):
    """Returns (image [X, Y, Z] float32, label [X, Y, Z] uint8) of one synthetic subject."""
    nx, ny, nz = shape
    x, y, z = np.meshgrid(
        np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), np.linspace(-1, 1, nz), indexing="ij"
    )
    # Body: an ellipsoid-ish cylinder whose radii vary along z, with a wobbly outline.
    rx = rng.uniform(0.65, 0.85) * (1 - 0.25 * z**2)
    ry = rng.uniform(0.55, 0.8) * (1 - 0.25 * z**2)
    wobble = 0.06 * _smooth_noise(rng, shape, (6, 6, 3))
    body = ((x / rx) ** 2 + (y / ry) ** 2) < (1 + wobble)
    # Tissue: two classes of texture plus a darker inner structure.
    texture = 0.5 + 0.12 * _smooth_noise(rng, shape, (2, 2, 1))
    tissue_classes = _smooth_noise(rng, shape, (5, 5, 2)) > 0.3
    inner = ((x / (0.5 * rx)) ** 2 + ((y + 0.1) / (0.4 * ry)) ** 2) < 1
    image = np.where(body, texture + 0.15 * tissue_classes - 0.2 * inner, 0.0)

    label = np.zeros(shape, np.uint8)
    n_lesions = rng.integers(1, 4)
    for _ in range(n_lesions):
        # A lesion centre inside the body; radius in voxels such that a slice through it covers
        # about 0.2-3 % of the slice.
        for _attempt in range(50):
            c = np.array(
                [
                    rng.uniform(0.15, 0.85) * nx,
                    rng.uniform(0.15, 0.85) * ny,
                    rng.uniform(0.2, 0.8) * nz,
                ]
            )
            if body[tuple(c.astype(int))]:
                break
        area_frac = np.exp(rng.uniform(np.log(0.004), np.log(0.03)))
        radius = np.sqrt(area_frac * nx * ny / np.pi)
        half_depth = rng.uniform(1.0, 3.5)  # in slices: lesions span about 2-7 slices
        distortion = _smooth_noise(rng, shape, (2, 2, 1))
        dist = np.sqrt(
            ((np.arange(nx)[:, None, None] - c[0]) / radius) ** 2
            + ((np.arange(ny)[None, :, None] - c[1]) / radius) ** 2
            + ((np.arange(nz)[None, None, :] - c[2]) / half_depth) ** 2
        )
        lesion = (dist + 0.35 * distortion < 1.0) & body
        label[lesion] = 1
        # Contrast: most lesions are bright, some are faint (about twice the texture's standard deviation).
        contrast = rng.choice([1.0, 0.7, 0.4], p=[0.4, 0.35, 0.25])
        soft = ndimage.gaussian_filter(lesion.astype(np.float32), 0.7)
        image = image + contrast * soft

    # Smooth multiplicative bias field and noise (magnitude of complex Gaussian noise).
    bias = np.exp(0.2 * _smooth_noise(rng, shape, (16, 16, 8)))
    image = image * bias
    sigma = 0.06
    noisy = np.sqrt(
        (image + sigma * rng.standard_normal(shape)) ** 2
        + (sigma * rng.standard_normal(shape)) ** 2
    )
    image = (1000.0 * noisy).astype(np.float32)
    return image, label


def write_cohort(
    root: str,
    n_subjects: int = 32,
    shape: tuple[int, int, int] = (64, 64, 32),
    seed: int = 0,
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.0),
) -> str:
    """Writes the cohort to `root` (imagesTr/, labelsTr/, dataset.json) and returns `root`.

    The write is atomic: the cohort is built in a temporary sibling folder and renamed into place,
    so an interrupted generation leaves nothing at `root`. An existing complete cohort is kept.
    """
    if os.path.exists(os.path.join(root, "dataset.json")):
        return root
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".synthetic-", dir=parent)
    try:
        os.makedirs(os.path.join(tmp, "imagesTr"))
        os.makedirs(os.path.join(tmp, "labelsTr"))
        affine = np.diag([*spacing, 1.0]).astype(np.float64)
        training = []
        for i in range(n_subjects):
            rng = np.random.default_rng([seed, i])
            image, label = make_subject(rng, tuple(shape), spacing)
            name = f"synth_{i:03d}.nii.gz"
            nib.save(nib.Nifti1Image(image, affine), os.path.join(tmp, "imagesTr", name))
            nib.save(nib.Nifti1Image(label, affine), os.path.join(tmp, "labelsTr", name))
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        meta = {
            "name": DATASET_NAME,
            "description": f"selal-jax synthetic lesion cohort (seed {seed}, shape {list(shape)})",
            "tensorImageSize": "3D",
            "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "lesion"},
            "numTraining": n_subjects,
            "numTest": 0,
            "training": training,
            "test": [],
        }
        with open(os.path.join(tmp, "dataset.json"), "w") as f:
            json.dump(meta, f, indent=2)
        if os.path.exists(root):
            shutil.rmtree(root)  # an incomplete earlier attempt (no dataset.json)
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
