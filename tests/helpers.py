"""Writers of small synthetic NIfTI datasets in each layout the loader reads (MSD, BraTS, paired).

Volumes are cheap to make (an ellipsoid body, a lesion, noise) so that the same helpers write the
tiny volumes of the tests and the 40 x 512x512x90 cohort of benchmarks/load_time.py.

Also the helpers the test files share: the repository path, smoke configs, config files parsed
as launch.py parses them, and a run's records and final state.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np

BRATS_MODALITIES = ("flair", "t1", "t1ce", "t2")
# Record fields that measure time: they differ between otherwise identical runs.
TIMING_FIELDS = ("train_seconds", "score_seconds", "eval_seconds")
# The repository root (launch.py, configs/): the working directory of the subprocess tests.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def set_fields(config, fields: dict, sep: str = "."):
    """Sets nested config fields named by joined keys, e.g. {'al.strategy': 'bald'}."""
    for key, value in fields.items():
        node = config
        *parents, leaf = key.split(sep)
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def smoke_config(**overrides):
    """configs/default.py:smoke with dotted-key overrides, e.g. {'al.strategy': 'bald'}."""
    from configs import default

    return set_fields(default.get_config("smoke"), overrides)


def config_from_flags(argv: list[str]):
    """The config that launch.py's --config flag gives for `argv` (e.g. ['--config=path:cpu',
    '--config.data.size=96,128'])."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["launch.py", *argv]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    values(argv)
    return values.config


def comparable(history: list[dict]) -> list[dict]:
    """Records without their TIMING_FIELDS, as JSON holds them (tuples become lists): what two
    runs that chose, trained and evaluated alike have in common."""
    return json.loads(
        json.dumps([{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in history])
    )


def read_records(workdir: str) -> list[dict]:
    """The records (one dict per round) of the run folder `workdir`."""
    from selal_jax import report

    return report.read_records(os.path.join(workdir, report.RECORDS_FILE))


def restore_final(config, workdir: str):
    """(train state, loop record) of the newest checkpoint in <workdir>/checkpoints, restored
    into the structure of `config`'s model (arrays fetched to the host)."""
    import jax

    from selal_jax import checkpointing
    from selal_jax.models import build_model, init_variables
    from selal_jax.train import create_train_state, make_optimizer

    state = create_train_state(
        init_variables(build_model(config.model), jax.random.key(0), *config.data.size),
        make_optimizer(1e-3),  # the optimizer state's structure does not depend on the rate
    )
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), 2)
    try:
        restored, loop_record = ckpt.restore(
            ckpt.latest_round(), checkpointing.abstract_like(state)
        )
    finally:
        ckpt.close()
    return jax.device_get(restored), loop_record


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


def flip_xz(shape: tuple[int, ...]) -> np.ndarray:
    """Voxel map of a file stored with its first and last spatial axes reversed: file voxel i is
    voxel flip_xz @ i of the original (`affine @ flip_xz` keeps the world coordinates)."""
    nx, _, nz = shape[:3]
    return np.array([[-1, 0, 0, nx - 1], [0, 1, 0, 0], [0, 0, -1, nz - 1], [0, 0, 0, 1.0]])


def swap_xy() -> np.ndarray:
    """Voxel map of a file stored with its first two axes swapped."""
    return np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])


def stored_as(array: np.ndarray, how: str) -> np.ndarray:
    """The voxels of `array` ([X, Y, Z] or [X, Y, Z, K]) as a file mapped by `flip_xz` or
    `swap_xy` holds them."""
    if how == "flip_xz":
        return np.ascontiguousarray(array[::-1, :, ::-1])
    if how == "swap_xy":
        return np.ascontiguousarray(np.swapaxes(array, 0, 1))
    raise ValueError(f"how: expected flip_xz or swap_xy, got {how!r}")


def make_classes_volume(
    rng: np.random.Generator, shape: tuple[int, int, int], channels: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """(image [X, Y, Z, K] float32, label [X, Y, Z] uint8 in {0, 1, 2, 4}) with K channels.

    Nested regions as in BraTS (2 around 4 around 1), all three present; channel k is
    `brats_modality(image, k)` of one base image, so the channels differ after z-scoring.
    """
    image, label = make_volume(rng, shape, "brats")
    cx, cy, cz = (s // 2 for s in shape)
    label[cx - 4 : cx + 4, cy - 4 : cy + 4, cz - 2 : cz + 2] = 2
    label[cx - 2 : cx + 2, cy - 2 : cy + 2, cz - 1 : cz + 1] = 4
    label[cx - 1 : cx + 1, cy - 1 : cy + 1, cz] = 1
    return np.stack([brats_modality(image, k) for k in range(channels)], axis=-1), label


# NRRD `space` -> sign of each RAS world axis (LPS negates x and y).
NRRD_SPACE_SIGNS = {"RAS": (1, 1, 1), "LPS": (-1, -1, 1), "left-posterior-superior": (-1, -1, 1)}


def nrrd_header(affine: np.ndarray, space: str = "LPS", channel_axis: int | None = None) -> dict:
    """The NRRD geometry fields of a RAS `affine`, in `space` (RAS, LPS or its long name): axis
    i's `space directions` vector is the affine's column i, signs flipped into `space`."""
    signs = np.asarray(NRRD_SPACE_SIGNS[space], np.float64)
    directions = (signs[:, None] * np.asarray(affine, np.float64)[:3, :3]).T
    kinds = ["domain"] * 3
    if channel_axis is not None:
        directions = np.insert(directions, channel_axis, np.nan, axis=0)
        kinds.insert(channel_axis, "list")
    return {
        "space": space,
        "space directions": directions,
        "space origin": signs * np.asarray(affine, np.float64)[:3, 3],
        "kinds": kinds,
    }


def write_nrrd(
    path: str,
    array: np.ndarray,
    affine: np.ndarray,
    space: str = "LPS",
    channel_axis: int | None = None,
    detached: bool = False,
    extra: dict | None = None,
) -> str:
    """Writes `array` ([X, Y, Z] or [X, Y, Z, K]) as NRRD with the geometry of the RAS `affine`
    (what a NIfTI file of the same array and affine holds). A 4D array's channels go on axis
    `channel_axis` of the file (Slicer puts a 'list' axis first)."""
    import nrrd

    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = np.asarray(array)
    if data.ndim == 4:
        channel_axis = 0 if channel_axis is None else channel_axis
        data = np.moveaxis(data, 3, channel_axis)
    header = {
        **nrrd_header(affine, space, channel_axis if data.ndim == 4 else None),
        **(extra or {}),
    }
    nrrd.write(path, np.ascontiguousarray(data), header, detached_header=detached)
    return path


def write_seg_nrrd(path: str, label: np.ndarray, affine: np.ndarray, layers=None) -> str:
    """Writes `label` as 3D Slicer does: cropped to the segments' extent, the origin shifted by
    the crop, one segment per label value (all in layer 0 unless `layers` maps value -> layer,
    which makes a 4D file of one label map per layer)."""
    values = [int(v) for v in np.unique(label) if v]
    nz = np.argwhere(label > 0)
    lo, hi = nz.min(axis=0), nz.max(axis=0) + 1
    crop = label[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    cropped = affine.copy()
    cropped[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    layers = layers or {v: 0 for v in values}
    n_layers = max(layers.values()) + 1
    extra = {"Segmentation_ReferenceImageExtentOffset": " ".join(str(int(v)) for v in lo)}
    for n, v in enumerate(values):
        where = np.argwhere(crop == v)
        extent = " ".join(f"{a} {b}" for a, b in zip(where.min(0), where.max(0), strict=True))
        extra.update(
            {
                f"Segment{n}_ID": f"Segment_{v}",
                f"Segment{n}_Name": f"label {v}",
                f"Segment{n}_LabelValue": str(v),
                f"Segment{n}_Layer": str(layers[v]),
                f"Segment{n}_Extent": extent,
            }
        )
    if n_layers == 1:
        data = crop.astype(np.uint8)
    else:
        data = np.zeros((*crop.shape, n_layers), np.uint8)
        for v, layer in layers.items():
            data[..., layer][crop == v] = v
    return write_nrrd(path, data, cropped, "LPS", channel_axis=0, extra=extra)


def write_nnunetv2(
    root: str,
    volumes,
    channel_names: dict,
    labels: dict,
    affines: list[np.ndarray] | None = None,
    file_ending: str = ".nii.gz",
    names: list[str] | None = None,
    **meta,
) -> str:
    """Writes an nnU-Net v2 raw dataset: imagesTr/<case>_<XXXX><ending> per channel of each
    [X, Y, Z, K] image (or [X, Y, Z], one channel), labelsTr/<case><ending>, dataset.json."""
    n = 0
    for i, (image, label) in enumerate(volumes):
        name = names[i] if names else f"case_{i:03d}"
        affine = affines[i] if affines else affine_for()
        image = image[..., None] if image.ndim == 3 else image
        write = write_nifti if file_ending.startswith(".nii") else write_nrrd
        for c in range(image.shape[3]):
            write(
                os.path.join(root, "imagesTr", f"{name}_{c:04d}{file_ending}"),
                image[..., c],
                affine,
            )
        if label is not None:
            write(os.path.join(root, "labelsTr", f"{name}{file_ending}"), label, affine)
        n += 1
    contents = {
        "channel_names": channel_names,
        "labels": labels,
        "numTraining": n,
        "file_ending": file_ending,
        **meta,
    }
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump(contents, f, indent=1)
    return root
