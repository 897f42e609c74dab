"""A deterministic synthetic cohort written as real NIfTI files in the MSD layout.

Each subject is a 3D "MRI" volume: an elliptical body with tissue texture, a smooth multiplicative
bias field and Rician-like noise, plus a label volume with a few small irregular lesions (some of
them faint). Lesions occupy a minority of axial slices and roughly 0.2-3 % of a positive slice,
so most slices have no target at all: the imbalance the paper is about.

The 'multiclass' kind (data.synthetic.kind) has two input channels and two classes: each lesion
is a bright core (label 2) inside a larger halo (label 1). Channel 0 ("MRI_A") shows mostly the
core, channel 1 ("MRI_B") mostly the halo, with the core a little darker than the halo there: a
different contrast per channel, so that both channels are needed to tell the classes apart.

The cohort goes through `selal_jax.data.layouts.msd_source` exactly like a downloaded MSD task.
"""

from __future__ import annotations

import json
import os
import re

import nibabel as nib
import numpy as np
from scipy import ndimage

from selal_jax.base import atomic
from selal_jax.base.errors import ConfigError, DataError, write_error

DATASET_NAME = "SyntheticLesions"
MULTICLASS_NAME = "SyntheticHaloCore"
KINDS = ("binary", "multiclass")  # data.synthetic.kind
# Default cohort folder under the workdir, per kind (the binary one is where it always was).
FOLDERS = {"binary": "synthetic_cohort", "multiclass": "synthetic_multiclass"}
MULTICLASS_LABELS = {"0": "background", "1": "halo", "2": "core"}
MULTICLASS_MODALITIES = {"0": "MRI_A", "1": "MRI_B"}


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


def _body(rng: np.random.Generator, shape, x, y, z) -> np.ndarray:
    rx = rng.uniform(0.65, 0.85) * (1 - 0.25 * z**2)
    ry = rng.uniform(0.55, 0.8) * (1 - 0.25 * z**2)
    wobble = 0.06 * _smooth_noise(rng, shape, (6, 6, 3))
    return ((x / rx) ** 2 + (y / ry) ** 2) < (1 + wobble)


def _mri(rng: np.random.Generator, image: np.ndarray, shape) -> np.ndarray:
    """Bias field, Rician-like noise and the 1000 scale of `make_subject`, for one channel."""
    image = image * np.exp(0.2 * _smooth_noise(rng, shape, (16, 16, 8)))
    sigma = 0.06
    noisy = np.sqrt(
        (image + sigma * rng.standard_normal(shape)) ** 2
        + (sigma * rng.standard_normal(shape)) ** 2
    )
    return (1000.0 * noisy).astype(np.float32)


def _ball(grid, centre, radii, distortion) -> np.ndarray:
    """A distorted ellipsoid: voxels whose scaled distance to `centre` plus `distortion` is < 1."""
    d = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)))
    return d + distortion < 1.0


def make_multiclass_subject(
    rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (image [X, Y, Z, 2] float32, label [X, Y, Z] uint8 in {0, 1, 2}).

    One to three lesions per subject: a halo (label 1) of in-plane radius about 4-8 voxels at
    64x64 (scaled with the in-plane size) around a core (label 2) of radius about 2-4. Channel 0:
    core +1.0, halo +0.05 over the tissue; channel 1: halo +0.8, core +0.3.
    """
    nx, ny, nz = shape
    x, y, z = np.meshgrid(
        np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), np.linspace(-1, 1, nz), indexing="ij"
    )
    body = _body(rng, shape, x, y, z)
    tissue = []
    for _ in range(2):  # each channel its own texture
        texture = 0.5 + 0.12 * _smooth_noise(rng, shape, (2, 2, 1))
        classes = _smooth_noise(rng, shape, (5, 5, 2)) > 0.3
        tissue.append(np.where(body, texture + 0.15 * classes, 0.0))
    label = np.zeros(shape, np.uint8)
    scale = min(nx, ny) / 64.0
    grid = np.arange(nx)[:, None, None], np.arange(ny)[None, :, None], np.arange(nz)[None, None, :]
    for _ in range(rng.integers(1, 4)):
        for _attempt in range(50):
            c = np.array(
                [rng.uniform(0.25, 0.75) * n for n in (nx, ny)] + [rng.uniform(0.2, 0.8) * nz]
            )
            if body[tuple(c.astype(int))]:
                break
        halo_r = max(rng.uniform(4.0, 8.0) * scale, 2.5)
        core_r = max(rng.uniform(0.4, 0.55) * halo_r, 1.5)
        half_depth = rng.uniform(1.5, 3.5)  # slices: halos span about 3-7 slices
        distortion = 0.25 * _smooth_noise(rng, shape, (2, 2, 1))

        halo = _ball(grid, c, (halo_r, halo_r, half_depth), distortion) & body
        core = _ball(grid, c, (core_r, core_r, max(0.6 * half_depth, 1.0)), distortion) & halo
        label[halo & (label == 0)] = 1
        label[core] = 2
    halo, core = label == 1, label == 2
    for k, (halo_gain, core_gain) in enumerate(((0.05, 1.0), (0.8, 0.3))):
        lesion = halo_gain * halo + core_gain * core
        tissue[k] = tissue[k] + ndimage.gaussian_filter(lesion.astype(np.float32), 0.7)
    image = np.stack([_mri(rng, t, shape) for t in tissue], axis=-1)
    return image, label


def write_cohort(
    root: str,
    n_subjects: int = 32,
    shape: tuple[int, int, int] = (64, 64, 32),
    seed: int = 0,
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.0),
    kind: str = "binary",
) -> str:
    """Writes the cohort to `root` (imagesTr/, labelsTr/, dataset.json) and returns `root`.

    The write is atomic: the cohort is built in a temporary sibling folder and renamed into place,
    so an interrupted generation leaves nothing at `root`. An existing complete cohort is kept
    if it was written with the same parameters; one of another kind, size, shape, seed or
    spacing is an error (`check_existing`).
    """
    if kind not in KINDS:
        raise ConfigError(
            f"config field data.synthetic.kind: expected one of {KINDS}, got {kind!r}"
        )
    meta_path = os.path.join(root, "dataset.json")
    parameters = {
        "kind": kind,
        "n_subjects": int(n_subjects),
        "shape": [int(s) for s in shape],
        "seed": int(seed),
        "spacing": [float(s) for s in spacing],
    }
    if os.path.exists(meta_path):
        check_existing(root, parameters)
        return root
    if kind == "multiclass":
        # Its own stream ("multiclass" salt): not the binary cohort's subjects.
        return _write_msd_cohort(
            root,
            n_subjects,
            spacing,
            lambda i: make_multiclass_subject(np.random.default_rng([seed, i, 2]), tuple(shape)),
            "halo",
            {
                "name": MULTICLASS_NAME,
                "description": (
                    f"selal-jax synthetic halo/core cohort (seed {seed}, shape {list(shape)}, "
                    "2 channels)"
                ),
                "tensorImageSize": "4D",
                "modality": dict(MULTICLASS_MODALITIES),
                "labels": dict(MULTICLASS_LABELS),
            },
        )
    return _write_msd_cohort(
        root,
        n_subjects,
        spacing,
        lambda i: make_subject(np.random.default_rng([seed, i]), tuple(shape), spacing),
        "synth",
        {
            "name": DATASET_NAME,
            "description": f"selal-jax synthetic lesion cohort (seed {seed}, shape {list(shape)})",
            "tensorImageSize": "3D",
            "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "lesion"},
        },
    )


def _stored_meta(meta_path: str) -> dict:
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{meta_path}: unreadable dataset.json of a synthetic cohort ({e})") from e
    return meta if isinstance(meta, dict) else {}


def _stored_parameters(root: str, meta: dict) -> dict:
    """What an existing cohort was written with, as its dataset.json (name, description with
    seed and shape, numTraining) and first image (spacing) say. (dataset.json stays as it
    always was: the same cohort gives the same bytes, and so the same dataset fingerprint.)"""
    stored = {"kind": "multiclass" if meta.get("name") == MULTICLASS_NAME else "binary"}
    found = re.search(r"seed (-?\d+), shape \[([\d, ]+)\]", str(meta.get("description", "")))
    if found:
        stored["seed"] = int(found.group(1))
        stored["shape"] = [int(v) for v in found.group(2).split(",")]
    if isinstance(meta.get("numTraining"), int):
        stored["n_subjects"] = meta["numTraining"]
    training = meta.get("training") or [{}]
    image = os.path.join(root, str(training[0].get("image", "")))
    if os.path.isfile(image):
        stored["spacing"] = [float(z) for z in nib.load(image).header.get_zooms()[:3]]
    return stored


def check_existing(root: str, parameters: dict) -> None:
    """Refuses an existing cohort at `root` written with other parameters than the config asks
    for (data.synthetic.kind, n_subjects, shape, seed or spacing): it would be used as it is
    while the cache key says otherwise."""
    meta_path = os.path.join(root, "dataset.json")
    stored = _stored_parameters(root, _stored_meta(meta_path))
    for field, wanted in parameters.items():
        have = stored.get(field)
        same = have == wanted
        if field == "spacing" and have is not None:
            same = np.allclose(have, wanted, rtol=1e-5)
        if have is not None and not same:
            raise DataError(
                f"{meta_path}: holds another synthetic cohort ({field} {have}) than config "
                f"field data.synthetic.{field} asks for ({wanted}); choose another data.root "
                "(or delete the folder to have it written anew)"
            )


def _write_msd_cohort(root: str, n_subjects: int, spacing, subject, prefix: str, meta: dict) -> str:
    """Writes `subject(i)` -> (image, label) for i < n_subjects as <prefix>_<i>.nii.gz in the MSD
    layout with `meta` in dataset.json, atomically (an incomplete earlier attempt at `root`, with
    no dataset.json, is replaced)."""
    try:
        _write_msd_files(root, n_subjects, spacing, subject, prefix, meta)
    except OSError as e:  # a full disk, a read-only folder: nothing is left at `root`
        parent = os.path.dirname(os.path.abspath(root))
        raise write_error(e, parent, f"the synthetic cohort {os.path.basename(root)}") from e
    return root


def _write_msd_files(root: str, n_subjects: int, spacing, subject, prefix: str, meta: dict):
    with atomic.atomic_folder(root, prefix=".synthetic-", replace=True) as tmp:
        os.makedirs(os.path.join(tmp, "imagesTr"))
        os.makedirs(os.path.join(tmp, "labelsTr"))
        affine = np.diag([*spacing, 1.0]).astype(np.float64)
        training = []
        for i in range(n_subjects):
            image, label = subject(i)
            name = f"{prefix}_{i:03d}.nii.gz"
            nib.save(nib.Nifti1Image(image, affine), os.path.join(tmp, "imagesTr", name))
            nib.save(nib.Nifti1Image(label, affine), os.path.join(tmp, "labelsTr", name))
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        meta = {**meta, "numTraining": n_subjects, "numTest": 0, "training": training, "test": []}
        with open(os.path.join(tmp, "dataset.json"), "w") as f:
            json.dump(meta, f, indent=2)
