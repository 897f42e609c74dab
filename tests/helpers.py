"""What the test files share. Writers of small volumes in each layout (the MSD/BraTS/paired
writers are `selal_jax.data.writers`, which benchmarks/load_time.py uses too; re-exported here),
files stored in other voxel orders, NRRD files as 3D Slicer writes them, nnU-Net v2 datasets.

Also the helpers the test files share: the repository path, smoke configs, config files parsed
as launch.py parses them, and a run's records and final state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

# The layout writers live in the package (benchmarks use them too); tests call them helpers.X.
from selal_jax.data.writers import (  # noqa: F401  (re-exported)
    BRATS_MODALITIES,
    affine_for,
    brats_modality,
    make_volume,
    write_brats,
    write_cohort,
    write_msd,
    write_nifti,
    write_paired,
)

# Record fields that measure time: they differ between otherwise identical runs.
TIMING_FIELDS = ("train_seconds", "score_seconds", "eval_seconds")
# The repository root (launch.py, configs/): the working directory of the subprocess tests.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, env=None, timeout=600, wrapper=None):
    """launch.py in a subprocess (cwd: the repository); `wrapper` is Python code run before it
    (a fault to inject)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("SELAL_JAX_KILL_AT", None)
    command = [sys.executable]
    if wrapper:
        command += [
            "-c",
            wrapper + "\nimport runpy, sys\nsys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')",
        ]
    command += [os.path.join(REPO, "launch.py"), *args]
    return subprocess.run(
        command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def run_on_devices(module: str, *args: str, devices: int = 4, timeout: int = 900):
    """`python -m module args` (cwd: the repository) with `devices` fake CPU devices
    (XLA_FLAGS=--xla_force_host_platform_device_count); asserts that it succeeds."""
    flag = f"--xla_force_host_platform_device_count={devices}"
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip())
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def failing_mkdir(fragment: str, errno: int, message: str) -> str:
    """Wrapper code for `launch`: os.mkdir of a path containing `fragment` raises
    OSError(errno, message), as a full disk or a read-only mount does (orbax's save threads
    create each step's folder with it)."""
    return (
        "import os\n"
        "real_mkdir = os.mkdir\n"
        "def mkdir(path, *args, **kwargs):\n"
        f"    if {fragment!r} in os.fspath(path):\n"
        f"        raise OSError({errno}, {message!r}, os.fspath(path))\n"
        "    return real_mkdir(path, *args, **kwargs)\n"
        "os.mkdir = mkdir\n"
    )


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
    from selal_jax.run import workdir as workdir_lib
    from selal_jax.verbs import report

    return report.read_records(os.path.join(workdir, workdir_lib.RECORDS_FILE))


def restore_final(config, workdir: str):
    """(train state, loop record) of the newest checkpoint in <workdir>/checkpoints, restored
    into the structure of `config`'s model (arrays fetched to the host)."""
    import jax

    from selal_jax.core import parallel
    from selal_jax.core.models import build_model, init_variables
    from selal_jax.core.train import create_train_state, make_optimizer
    from selal_jax.run import checkpointing
    from selal_jax.run import workdir as workdir_lib

    def state():
        return create_train_state(
            init_variables(build_model(config.model), jax.random.key(0), *config.data.size),
            make_optimizer(1e-3),  # the optimizer state's structure does not depend on the rate
        )

    directory = os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR)
    ckpt = checkpointing.Checkpointer(directory, read_only=True)
    try:
        target = checkpointing.abstract_target(state, parallel.state_sharding(None))
        restored, loop_record = ckpt.restore(ckpt.latest_round(), target)
    finally:
        ckpt.close()
    return jax.device_get(restored), loop_record


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


def all_eqns(jaxpr):
    """Every equation of a jaxpr in program order, nested jaxprs (jit, vmap, custom_vjp, loops)
    included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", None)
            if inner is not None:
                yield from all_eqns(getattr(inner, "jaxpr", inner))
