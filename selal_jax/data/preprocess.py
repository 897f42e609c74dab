"""One case -> 2D slices: checks, canonical orientation, class masks, normalisation, in-plane size.

Two passes over a dataset, so that bad data fails before any long work:
  `check_header`: shapes, dimensions, channel choice, affines (reads NIfTI headers only);
  `process_case`: reads the voxels, checks them (NaN/Inf, label values, a blank image with
  target) and returns the slices.
Every problem raises `DataError` with the offending file's path in the message.

The steps' own modules: reading.py (voxels, canonical orientation), label_maps.py (label values ->
class indices), fitting.py (in-plane size and spacing); the records they pass are in cases.py.
This module holds the header checks and the slicing pipeline that strings the steps together.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from selal_jax.base.errors import ConfigError, DataError
from selal_jax.data.cases import CaseFiles, CaseSlices, Settings
from selal_jax.data.checks import check_informative, is_constant, voxel_digest
from selal_jax.data.fitting import fit_case_slices
from selal_jax.data.label_maps import label_indices
from selal_jax.data.reading import (
    check_magnitude,
    load_nifti,
    non_finite_error,
    read_canonical,
    read_canonical_channels,
)


@dataclasses.dataclass
class Volume:
    """A canonical (RAS+) volume with its label; arrays are [X, Y, Z] (the stored voxel order
    with data.reorient = 'none').

    With K >= 2 input channels the image is channel-first, [K, X, Y, Z], so that each channel is
    one contiguous volume (normalised in place on its own).
    """

    image: np.ndarray  # float32, [X, Y, Z] or [K, X, Y, Z]
    label: np.ndarray | None  # integer label values, or None for unlabelled volumes
    spacing: np.ndarray  # [3] float32, mm, canonical axis order
    affine: np.ndarray  # [4, 4] of the canonical image


def check_finite_slices(slices: CaseSlices, case: CaseFiles) -> None:
    """After preprocessing: any non-finite slice is an error naming its case."""
    images = slices.images
    bad = ~np.isfinite(images).reshape(len(images), int(np.prod(images.shape[1:]))).all(axis=1)
    if bad.any():
        raise DataError(
            f"{case.image}: case {case.case_id}: {int(bad.sum())} slices are not finite after "
            f"preprocessing (slice indices {slices.slice_index[bad][:10].tolist()})"
        )


def _spatial_shape(img, path: str, what: str, channel: int | None) -> tuple[int, int, int]:
    """The 3D shape of an image, checking its dimensions against the channel choice."""
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1 and channel in (None, 0):
        return shape[:3]  # a 4D file holding a single volume
    if len(shape) == 4 and what == "image":
        if channel is None:
            raise DataError(
                f"{path}: 4D image with {shape[3]} channels and no modality chosen; "
                "set --config.data.modality to a channel name (MSD dataset.json 'modality') "
                "or index"
            )
        if not 0 <= channel < shape[3]:
            raise DataError(
                f"{path}: modality channel {channel} out of range for a 4D image with "
                f"{shape[3]} channels"
            )
        return shape[:3]
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3D {what} volume, got shape {shape}")
    if channel not in (None, 0) and what == "image":
        raise DataError(f"{path}: modality channel {channel} chosen but the image is 3D")
    return shape


def _check_affine(affine: np.ndarray, path: str) -> None:
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{path}: degenerate affine (voxel-to-world matrix) {affine.tolist()}")


def check_header(case: CaseFiles) -> tuple[int, int, int]:
    """Checks a case from the NIfTI headers alone; returns the image's 3D shape (file order)."""
    img = load_nifti(case.image, "image", header_only=True)
    if img.get_data_dtype().kind not in "iuf":
        raise DataError(f"{case.image}: unsupported voxel type {img.get_data_dtype()}")
    shape = _spatial_shape(img, case.image, "image", case.channel)
    _check_affine(img.affine, case.image)
    headers = {case.image: img}
    for path, channel in case.extra_channels:  # every channel: the first one's shape and affine
        if path not in headers:
            headers[path] = load_nifti(path, "image", header_only=True)
            if headers[path].get_data_dtype().kind not in "iuf":
                raise DataError(f"{path}: unsupported voxel type {headers[path].get_data_dtype()}")
        other = headers[path]
        other_shape = _spatial_shape(other, path, "image", channel)
        if other_shape != shape:
            raise DataError(
                f"{path}: image shape {other_shape} differs from the first channel's {shape} "
                f"({case.image})"
            )
        if not np.allclose(other.affine, img.affine, rtol=1e-4, atol=1e-3):
            raise DataError(
                f"{path}: image affine differs from the first channel's ({case.image}):\n"
                f"channel {np.round(other.affine, 4).tolist()}\n"
                f"first   {np.round(img.affine, 4).tolist()}"
            )
    if case.label is None:
        return shape
    lab = load_nifti(case.label, "label", header_only=True)
    if lab.get_data_dtype().kind not in "iuf":
        raise DataError(f"{case.label}: unsupported label voxel type {lab.get_data_dtype()}")
    lab_shape = _spatial_shape(lab, case.label, "label", None)
    if lab_shape != shape:
        raise DataError(
            f"{case.label}: label shape {lab_shape} differs from image shape {shape} ({case.image})"
        )
    if not np.allclose(lab.affine, img.affine, rtol=1e-4, atol=1e-3):
        raise DataError(
            f"{case.label}: label affine differs from the image's ({case.image}):\n"
            f"label {np.round(lab.affine, 4).tolist()}\nimage {np.round(img.affine, 4).tolist()}"
        )
    return shape


def load_volume(case: CaseFiles, reorient: bool = True) -> Volume:
    """Reads a case in canonical orientation and checks its voxels (not its label values).

    One input channel gives an [X, Y, Z] image, K >= 2 channels a [K, X, Y, Z] one. With
    reorient=False, every array (and the spacing) is in the files' stored axis order.
    """
    if case.extra_channels:
        image, img = read_canonical_channels(case.channel_sources, reorient)
    else:
        image, img = read_canonical(case.image, "image", case.channel, True, reorient)
    if not np.all(np.isfinite(image)):
        raise non_finite_error(case.image, image)
    check_magnitude(image, case.image)
    label = None
    if case.label is not None:
        label, _ = read_canonical(case.label, "label", None, False, reorient)
    spacing = np.sqrt(np.sum(img.affine[:3, :3] ** 2, axis=0)).astype(np.float32)
    return Volume(image, label, spacing, img.affine)


def normalise(
    image: np.ndarray, method: str, ct_window=(-160.0, 240.0), in_place: bool = False
) -> np.ndarray:
    """Per-volume intensity normalisation of a float32 volume.

    'zscore': MRI, zero mean / unit variance over the non-zero voxels (background stays 0).
    'ct_window': clip to the window [lo, hi] HU, then scale to [0, 1].
    With in_place=True the result overwrites `image` (saves two volume-sized copies).
    """
    out = image if in_place else np.array(image, np.float32)
    if method == "zscore":
        foreground = out != 0
        values = out[foreground] if foreground.any() else out.ravel()
        mean, std = float(values.mean()), float(values.std())
        out -= np.float32(mean)
        out /= np.float32(max(std, 1e-6))
        out[~foreground] = 0.0
        return out
    if method == "ct_window":
        lo, hi = float(ct_window[0]), float(ct_window[1])
        np.clip(out, lo, hi, out=out)
        out -= np.float32(lo)
        out /= np.float32(hi - lo)
        return out
    raise ConfigError(
        f"config field data.normalisation: unknown method {method!r}; expected 'zscore' or 'ct_window'"
    )


def to_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """[X, Y, Z] -> [n_slices, a, b] slices along `axis` (0, 1 or 2)."""
    return np.moveaxis(volume, axis, 0)


def slice_volume(volume: Volume, case: CaseFiles, settings: Settings) -> CaseSlices:
    """Canonical volume -> normalised, fitted slices (and the slice indices kept).

    Normalises `volume.image` in place. K >= 2 channels (settings.channel_normalisation set) give
    [n, H, W, K] images; labels are class indices either way.
    """
    if settings.channel_normalisation is not None:
        return _slice_channels(volume, case, settings)
    target = case_labels(volume, case, settings)
    check_informative(volume.image, target, case)
    labelled = labelled_slices(volume, settings)
    image = normalise(volume.image, settings.normalisation, settings.ct_window, in_place=True)
    images = to_slices(image, settings.axis)
    labels = to_slices(target, settings.axis)
    index = np.arange(len(images), dtype=np.int32)
    if not settings.keep_empty_slices:
        keep = images.reshape(len(images), -1).any(axis=1)
        images, labels, index = images[keep], labels[keep], index[keep]
    images = fit_case_slices(images, settings, volume.spacing, is_label=False)
    labels = fit_case_slices(labels, settings, volume.spacing, is_label=True)
    return CaseSlices(
        np.ascontiguousarray(images, np.float32),
        np.ascontiguousarray(labels, np.uint8),
        index,
        volume.spacing,
        labelled=None if labelled is None else labelled[index],
    )


def labelled_slices(volume: Volume, settings: Settings) -> np.ndarray | None:
    """[n] bool along settings.axis: False where the label plane is all the ignore value (an
    unlabelled slice of a sparsely labelled case); None without an ignore value or label."""
    if settings.ignore_value is None or volume.label is None:
        return None
    ignored = to_slices(volume.label == settings.ignore_value, settings.axis)
    return ~ignored.reshape(len(ignored), -1).all(axis=1)


def case_labels(volume: Volume, case: CaseFiles, settings: Settings) -> np.ndarray:
    """The [X, Y, Z] uint8 class indices of a case (the binary target when C = 1)."""
    shape = volume.image.shape[-3:]
    if volume.label is None:  # an unlabelled case: its masks stay 0 (SliceSet.has_label says so)
        return np.zeros(shape, np.uint8)
    return label_indices(volume.label, case.label, settings)


def _slice_channels(volume: Volume, case: CaseFiles, settings: Settings) -> CaseSlices:
    """`slice_volume` for K >= 2 input channels ([K, X, Y, Z] image): each channel normalised,
    sliced and fitted on its own exactly as a single channel is; slices [n, H, W, K]."""
    image = volume.image
    if image.ndim != 4 or len(image) != len(settings.channel_normalisation):
        raise ValueError(
            f"{case.image}: {len(settings.channel_normalisation)} channels expected, got an "
            f"image of shape {image.shape}"
        )
    target = case_labels(volume, case, settings)
    check_informative(image, target, case)
    labelled = labelled_slices(volume, settings)
    labels = to_slices(target, settings.axis)
    channels = []
    for channel, method in zip(image, settings.channel_normalisation, strict=True):
        normalise(channel, method, settings.ct_window, in_place=True)
        channels.append(to_slices(channel, settings.axis))
    index = np.arange(len(labels), dtype=np.int32)
    if not settings.keep_empty_slices:  # a slice is empty when every channel is
        keep = np.any([c.reshape(len(c), -1).any(axis=1) for c in channels], axis=0)
        channels, labels, index = [c[keep] for c in channels], labels[keep], index[keep]
    fitted = [fit_case_slices(c, settings, volume.spacing, is_label=False) for c in channels]
    labels = fit_case_slices(labels, settings, volume.spacing, is_label=True)
    return CaseSlices(
        np.ascontiguousarray(np.stack(fitted, axis=-1), np.float32),
        np.ascontiguousarray(labels, np.uint8),
        index,
        volume.spacing,
        labelled=None if labelled is None else labelled[index],
    )


def process_case(case: CaseFiles, settings: Settings) -> CaseSlices:
    """Reads, checks and slices one case (an unlabelled case gets all-zero masks); the slices
    carry the `voxel_digest` of the image as read."""
    volume = load_volume(case, settings.canonical)
    # Before slice_volume normalises it in place. Blank scans carry nothing a copy could leak:
    # no digest, so several of them are no duplicates.
    digest = None if is_constant(volume.image) else voxel_digest(volume.image)
    return dataclasses.replace(slice_volume(volume, case, settings), digest=digest)
