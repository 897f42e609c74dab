"""Volume -> 2D slices: canonical orientation, slicing axis, intensity normalisation, in-plane size."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
from scipy import ndimage


class DataError(ValueError):
    """Bad input data; the message names the file and the problem."""


@dataclasses.dataclass
class Volume:
    """A canonical (RAS+) volume with its label; arrays are [X, Y, Z]."""

    image: np.ndarray  # float32
    label: np.ndarray | None  # integer label values, or None for unlabelled volumes
    spacing: np.ndarray  # [3] float32, mm
    affine: np.ndarray  # [4, 4] of the canonical image


def load_nifti(path: str, what: str = "image"):
    """nib.load with errors that name the file."""
    try:
        img = nib.load(path)
        # Touch the data now: a truncated .nii.gz only fails when read.
        img.dataobj  # noqa: B018
    except FileNotFoundError as e:
        raise DataError(f"{path}: {what} file not found") from e
    except Exception as e:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: unreadable NIfTI {what} ({type(e).__name__}: {e})") from e
    return img


def read_array(img, path: str, what: str, dtype=np.float32) -> np.ndarray:
    try:
        if dtype is None:
            return np.asarray(img.dataobj)
        return img.get_fdata(dtype=dtype)
    except Exception as e:
        raise DataError(
            f"{path}: cannot read {what} voxels, truncated or corrupt ({type(e).__name__}: {e})"
        ) from e


def normalise(image: np.ndarray, method: str, ct_window=(-160.0, 240.0)) -> np.ndarray:
    """Per-volume intensity normalisation.

    'zscore': MRI, zero mean / unit variance over the non-zero voxels (background stays 0).
    'ct_window': clip to the window [lo, hi] HU, then scale to [0, 1].
    """
    if method == "zscore":
        foreground = image != 0
        values = image[foreground] if foreground.any() else image.ravel()
        mean, std = float(values.mean()), float(values.std())
        out = np.where(foreground, (image - mean) / max(std, 1e-6), 0.0)
        return out.astype(np.float32)
    if method == "ct_window":
        lo, hi = float(ct_window[0]), float(ct_window[1])
        return ((np.clip(image, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    raise ValueError(
        f"config field data.normalisation: unknown method {method!r}; expected 'zscore' or 'ct_window'"
    )


def fit_slices(
    slices: np.ndarray, size: tuple[int, int], method: str, is_label: bool
) -> np.ndarray:
    """Brings [N, h, w] slices to [N, H, W].

    'resize': bilinear for images, nearest for labels (scipy.ndimage.zoom).
    'crop': centre crop or zero-pad.
    """
    n, h, w = slices.shape
    H, W = size
    if (h, w) == (H, W):
        return slices
    if method == "resize":
        order = 0 if is_label else 1
        zoom = (1.0, H / h, W / w)
        out = ndimage.zoom(slices, zoom, order=order, mode="nearest", grid_mode=True)
        return out[:, :H, :W].astype(slices.dtype)
    if method == "crop":
        out = np.zeros((n, H, W), slices.dtype)
        sy, sx = max((h - H) // 2, 0), max((w - W) // 2, 0)
        dy, dx = max((H - h) // 2, 0), max((W - w) // 2, 0)
        ch, cw = min(h, H), min(w, W)
        out[:, dy : dy + ch, dx : dx + cw] = slices[:, sy : sy + ch, sx : sx + cw]
        return out
    raise ValueError(
        f"config field data.resample: unknown method {method!r}; expected 'resize' or 'crop'"
    )


def to_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """[X, Y, Z] -> [n_slices, a, b] slices along `axis` (0, 1 or 2)."""
    return np.moveaxis(volume, axis, 0)
