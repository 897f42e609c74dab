"""Fitting slices to the in-plane size: resize, anti-aliased resize, centre crop/pad, resampling
to a pixel spacing, and the inverse of each for label masks (back onto a case's own grid)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from selal_jax.base.errors import ConfigError
from selal_jax.data.cases import Settings


def _centre_windows(source_hw, target_hw):
    """Index windows of a centre crop/pad from [N, h, w] to [N, H, W]: (source, target), such
    that `out[target] = slices[source]` (and the inverse `back[source] = out[target]`)."""
    (h, w), (H, W) = source_hw, target_hw
    sy, sx = max((h - H) // 2, 0), max((w - W) // 2, 0)
    dy, dx = max((H - h) // 2, 0), max((W - w) // 2, 0)
    ch, cw = min(h, H), min(w, W)
    source = (slice(None), slice(sy, sy + ch), slice(sx, sx + cw))
    target = (slice(None), slice(dy, dy + ch), slice(dx, dx + cw))
    return source, target


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
        source, target = _centre_windows((h, w), (H, W))
        out[target] = slices[source]
        return out
    if method == "resize_aa":
        if is_label:
            return resize_per_class(slices, (H, W))
        return resize_anti_aliased(slices, (H, W)).astype(slices.dtype)
    raise ConfigError(
        f"config field data.resample: unknown method {method!r}; expected 'resize', "
        "'resize_aa' or 'crop'"
    )


def unfit_slices(slices: np.ndarray, shape: tuple[int, int], method: str) -> np.ndarray:
    """Inverse of `fit_slices` for label masks: [N, H, W] -> [N, h, w].

    'resize': nearest-neighbour zoom back to (h, w). 'crop': the centre region goes back where
    `fit_slices` took it from; pixels it cropped away are 0.
    """
    n, H, W = slices.shape
    h, w = shape
    if (h, w) == (H, W):
        return slices
    if method == "resize":
        out = ndimage.zoom(slices, (1.0, h / H, w / W), order=0, mode="nearest", grid_mode=True)
        # zoom rounds the output size; make it exact (at most one row or column off).
        out = np.pad(
            out[:, :h, :w],
            ((0, 0), (0, h - min(h, out.shape[1])), (0, w - min(w, out.shape[2]))),
            mode="edge",
        )
        return out.astype(slices.dtype)
    if method == "crop":
        out = np.zeros((n, h, w), slices.dtype)
        source, target = _centre_windows((h, w), (H, W))
        out[source] = slices[target]
        return out
    if method == "resize_aa":
        return resize_per_class(slices, (h, w))
    raise ConfigError(
        f"config field data.resample: unknown method {method!r}; expected 'resize', "
        "'resize_aa' or 'crop'"
    )


def _zoom_to(slices: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
    """ndimage.zoom of [N, h, w] to exactly [N, H, W] (edge-replicated where zoom rounds the
    size one pixel short), pixel areas aligned (grid_mode) as skimage.transform.resize does."""
    n, h, w = slices.shape
    H, W = size
    out = ndimage.zoom(slices, (1.0, H / h, W / w), order=order, mode="nearest", grid_mode=True)
    out = out[:, :H, :W]
    pad = ((0, 0), (0, H - out.shape[1]), (0, W - out.shape[2]))
    return np.pad(out, pad, mode="edge") if any(p[1] for p in pad) else out


def resize_anti_aliased(slices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[N, h, w] -> [N, H, W] float32: bilinear, after a Gaussian prefilter where downsampling.

    As skimage.transform.resize(order=1, anti_aliasing=True, mode='edge') per slice: sigma =
    max(0, (factor - 1) / 2) per axis with factor = input / output pixels.
    """
    n, h, w = slices.shape
    sigma = [0.0, *(max(0.0, (a / b - 1.0) / 2.0) for a, b in ((h, size[0]), (w, size[1])))]
    image = np.asarray(slices, np.float32)
    if any(sigma):
        image = ndimage.gaussian_filter(image, sigma, mode="nearest")
    return _zoom_to(image, size, order=1)


def resize_per_class(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[N, h, w] class indices -> [N, H, W] uint8: each class's one-hot mask resampled
    bilinearly, then the argmax (ties to the lower class index), instead of nearest neighbour,
    which shifts and thins boundaries when the factor is not an integer."""
    labels = np.asarray(labels)
    best = np.full((len(labels), *size), -1.0, np.float32)
    out = np.zeros((len(labels), *size), np.uint8)
    for c in np.unique(labels).tolist():
        weight = _zoom_to((labels == c).astype(np.float32), size, order=1)
        better = weight > best
        out[better], best[better] = c, weight[better]
    return out


def in_plane_spacing(spacing: np.ndarray, axis: int) -> np.ndarray:
    """[3] canonical spacing -> [2] mm of a slice's two axes (those other than `axis`)."""
    return np.asarray([spacing[i] for i in range(3) if i != axis], np.float64)


def spacing_shape(shape, spacing: np.ndarray, target) -> tuple[int, int]:
    """In-plane pixels (h', w') of a slice of `shape` pixels at `spacing` mm resampled to
    `target` mm per pixel."""
    return tuple(
        max(1, int(round(n * float(s) / float(t))))
        for n, s, t in zip(shape, spacing, target, strict=True)
    )


def fit_case_slices(
    slices: np.ndarray, settings: Settings, spacing: np.ndarray, is_label: bool
) -> np.ndarray:
    """The loader's in-plane fit of a case's [N, h, w] slices to [N, H, W] = settings.size.

    With settings.spacing: resampled to that mm per pixel (anti-aliased bilinear images,
    per-class labels), then centre cropped or zero-padded; else `fit_slices` by
    settings.resample.

    Args:
      spacing: [3] float32 canonical spacing of the case (Volume.spacing), mm.
    """
    if settings.spacing is None:
        return fit_slices(slices, settings.size, settings.resample, is_label)
    shape = spacing_shape(
        slices.shape[1:], in_plane_spacing(spacing, settings.axis), settings.spacing
    )
    if shape != tuple(slices.shape[1:]):
        if is_label:
            slices = resize_per_class(slices, shape)
        else:
            slices = resize_anti_aliased(slices, shape).astype(slices.dtype)
    return fit_slices(slices, settings.size, "crop", is_label)


def unfit_case_slices(
    masks: np.ndarray, shape: tuple[int, int], settings: Settings, spacing: np.ndarray
) -> np.ndarray:
    """Inverse of `fit_case_slices` for label masks: [N, H, W] -> [N, h, w] class indices (crop
    back, then per-class resampling back, with settings.spacing; else `unfit_slices`)."""
    if settings.spacing is None:
        return unfit_slices(masks, shape, settings.resample)
    resampled = spacing_shape(shape, in_plane_spacing(spacing, settings.axis), settings.spacing)
    masks = unfit_slices(masks, resampled, "crop")
    if resampled != tuple(shape):
        masks = resize_per_class(masks, tuple(shape))
    return masks
