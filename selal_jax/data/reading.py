"""Reading one volume's voxels with errors that name the file.

NIfTI .gz files are decompressed whole so that a damaged stream fails here, not silently later;
volumes come back in canonical (RAS+) orientation unless asked for the stored voxel order. Every
problem raises `DataError` with the offending file's path in the message.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import nibabel as nib
import numpy as np

from selal_jax.base.errors import DataError
from selal_jax.data import file_checks, volumes

NIFTI_EXTENSIONS = (".nii.gz", ".nii")


def load_nifti(path: str, what: str = "image", header_only: bool = False):
    """The image with errors that name the file: nib.load for NIfTI, an NRRD file as a
    Nifti1Image with its RAS affine (`volumes.load_image`); voxels are read lazily.

    A .gz file is decompressed whole with Python's gzip module, which checks the stream's CRC-32
    and length at its end (nibabel reads only as far as it needs and never reaches them, so a
    damaged stream would load silently), and the image is built from the bytes in memory. With
    `header_only` (the header pass), the header is read lazily instead: the voxel pass
    verifies the same file before anything is cached.
    """
    if path.endswith(".gz") and not header_only:
        if not os.path.isfile(path):
            raise file_checks.not_found(path, what)
        return _from_verified_gzip(path, what)
    return volumes.load_image(path, what)


def _from_verified_gzip(path: str, what: str):
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()  # raises at the end of the stream if its CRC or length differ
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: unreadable NIfTI {what}, truncated or corrupt: its gzip stream does not check out "
            f"(CRC-32 and length; {type(e).__name__}: {e})"
        ) from e
    first_error = None
    for klass in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            image = klass.from_bytes(data)
        except Exception as e:  # not this NIfTI version (or not NIfTI at all)
            first_error = first_error or e
            continue
        proxy = image.dataobj  # lazy: a declared size beyond the stream is refused unread
        file_checks.check_declared_size(path, proxy.shape, proxy.dtype, proxy.offset, len(data))
        return image
    raise DataError(
        f"{path}: unreadable NIfTI {what} ({type(first_error).__name__}: {first_error})"
    )


def non_finite_error(path: str, volume: np.ndarray) -> DataError:
    """The error for a volume read with NaN or Inf voxels. Integers have none: in an integer
    file they come from the header's scl_slope/scl_inter, which is said so."""
    bad = int(np.size(volume) - np.count_nonzero(np.isfinite(volume)))
    img = load_nifti(path, "image", header_only=True)
    dtype = np.dtype(img.get_data_dtype())
    # nibabel moves scl_slope/scl_inter from the header onto the array proxy it reads with
    slope, inter = (getattr(img.dataobj, name, None) for name in ("slope", "inter"))
    if dtype.kind in "iu" and slope is not None:
        return DataError(
            f"{path}: the header's scaling (scl_slope {float(slope):g}, scl_inter "
            f"{float(inter or 0):g}) takes {bad} of its {dtype.name} values beyond float32's "
            "range: a wrong scale factor in the header"
        )
    return DataError(f"{path}: contains {bad} NaN or Inf voxels")


def check_magnitude(image: np.ndarray, path: str) -> None:
    """Refuses finite voxel values so large that the z-score's float32 sums would overflow
    (a voxel of 3e38 passes the NaN/Inf check, then normalises to NaN): magnitudes up to
    sqrt(float32 max / (4 n)) for n voxels keep every sum of squared deviations finite."""
    limit = math.sqrt(float(np.finfo(np.float32).max) / (4.0 * max(image.size, 1)))
    lo, hi = float(image.min(initial=0.0)), float(image.max(initial=0.0))
    if max(-lo, hi) > limit:
        raise DataError(
            f"{path}: voxel values range from {lo:.4g} to {hi:.4g}; magnitudes above "
            f"{limit:.3g} overflow the normalisation of a volume of {image.size} voxels "
            "(a corrupt or wrongly scaled file?)"
        )


def read_canonical(
    path: str,
    what: str,
    channel: int | None,
    as_float: bool,
    reorient: bool = True,
    img=None,
):
    """Reads one 3D volume in canonical (RAS+) orientation; returns (array, canonical image).

    With reorient=False, the volume and image are the file's own (stored voxel order).
    `img`: the file's image if already opened (e.g. a segmentation placed on its image's grid).
    """
    img = load_nifti(path, what) if img is None else img
    try:
        if len(img.shape) == 4:
            img = img.slicer[..., channel or 0]
        if reorient:
            img = nib.as_closest_canonical(img)
        data = img.get_fdata(dtype=np.float32) if as_float else np.asanyarray(img.dataobj)
    except DataError:  # an NRRD file's own words (its voxels are read here)
        raise
    except Exception as e:  # truncated gzip streams, short files: zlib, EOF, OSError ...
        raise DataError(
            f"{path}: cannot read {what} voxels, truncated or corrupt ({type(e).__name__}: {e})"
        ) from e
    return data, img


def read_canonical_channels(
    sources: tuple[tuple[str, int | None], ...], reorient: bool = True
) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Reads K >= 2 image channels in canonical orientation: ([K, X, Y, Z] float32, first image).

    Each file is read once: a 4D file giving several channels is decompressed once, not once per
    channel. Every channel is checked for NaN/Inf voxels, naming its file. With reorient=False,
    the stored voxel order.
    """
    by_path: dict[str, list[int | None]] = {}
    for path, channel in sources:
        by_path.setdefault(path, []).append(channel)
    volumes, first = {}, None
    for path, channels in by_path.items():
        img = load_nifti(path, "image")
        try:
            if reorient:  # reorients the 3 spatial axes of a 4D image too
                img = nib.as_closest_canonical(img)
            data = img.get_fdata(dtype=np.float32)
        except DataError:
            raise
        except Exception as e:  # truncated gzip streams, short files: zlib, EOF, OSError ...
            raise DataError(
                f"{path}: cannot read image voxels, truncated or corrupt ({type(e).__name__}: {e})"
            ) from e
        for channel in channels:
            volume = data[..., channel or 0] if data.ndim == 4 else data
            volumes[path, channel] = np.ascontiguousarray(volume, np.float32)
        if first is None:
            first = img
    image = np.stack([volumes[source] for source in sources])
    for (path, _), channel in zip(sources, image, strict=True):
        if not np.all(np.isfinite(channel)):
            raise non_finite_error(path, channel)
        check_magnitude(channel, path)
    return image, first
