"""One case -> 2D slices: checks, canonical orientation, class masks, normalisation, in-plane size.

Two passes over a dataset, so that bad data fails before any long work:
  `check_header`: shapes, dimensions, channel choice, affines (reads NIfTI headers only);
  `process_case`: reads the voxels, checks them (NaN/Inf, label values) and returns the slices.
Every problem raises `DataError` with the offending file's path in the message.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import zlib

import nibabel as nib
import numpy as np
from scipy import ndimage

from selal_jax.data import volumes
from selal_jax.data.volumes import DataError  # noqa: F401  (re-exported)

NIFTI_EXTENSIONS = (".nii.gz", ".nii")


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """One subject's files.

    Attributes:
      case_id: subject identifier shown in reports ("case X, slice 57").
      image: path of the (first channel's) image volume (3D, or 4D with `channel`); its header
        gives the case's geometry.
      label: path of the label volume, or None.
      channel: index along the 4th axis of a 4D image; None for 3D images.
      extra_channels: the input channels after the first, in order, each (path, index along the
        4th axis or None for a 3D file): other indices of the same 4D file (MSD) or other files
        (BraTS modalities). () = one input channel, today's single-channel path.
    """

    case_id: str
    image: str
    label: str | None
    channel: int | None = None
    extra_channels: tuple[tuple[str, int | None], ...] = ()

    @property
    def channel_sources(self) -> tuple[tuple[str, int | None], ...]:
        """(path, index or None) of every input channel, in channel order."""
        return ((self.image, self.channel), *self.extra_channels)

    @property
    def image_files(self) -> tuple[str, ...]:
        """The distinct image files of the case, the first channel's first."""
        return tuple(dict.fromkeys(path for path, _ in self.channel_sources))


@dataclasses.dataclass(frozen=True)
class Settings:
    """What `process_case` does to every case (derived from config.data and the layout).

    Attributes:
      axis: slicing axis of the canonical (RAS+) volume; 2 = axial (reorient 'none': an axis
        of the stored array).
      size: (H, W) in-plane size of the output slices, pixels.
      resample: 'resize' (bilinear images, nearest labels), 'resize_aa' (anti-aliased
        bilinear images, per-class linear labels) or 'crop' (centre crop / zero pad).
      normalisation: 'zscore' or 'ct_window' (of the first channel; of the only one if K = 1).
      ct_window: (lo, hi) HU for 'ct_window'.
      keep_empty_slices: keep slices whose normalised image is all zero (in every channel).
      target_values: label values that form the binary target; None = any value > 0.
      allowed_labels: label values a label file may contain; None = any non-negative integer.
      class_values: per foreground class (C >= 2) its label values: voxels of class k get index
        k (1-based), 0 = background; None = the binary target of `target_values`.
      channel_normalisation: per input channel (K >= 2) 'zscore' or 'ct_window'; None = one
        channel, normalised by `normalisation`.
      reorient: 'canonical' (RAS+, nib.as_closest_canonical) or 'none' (the stored voxel order:
        `axis` is an array axis of the file).
      spacing: in-plane (mm, mm) of the output pixels (data.spacing): each slice is resampled
        to it (anti-aliased images, per-class labels), then centre cropped/padded to `size`;
        `resample` is then unused. None = fit by `resample` alone.
    """

    axis: int
    size: tuple[int, int]
    resample: str
    normalisation: str
    ct_window: tuple[float, float]
    keep_empty_slices: bool
    target_values: tuple[int, ...] | None
    allowed_labels: tuple[int, ...] | None
    class_values: tuple[tuple[int, ...], ...] | None = None
    channel_normalisation: tuple[str, ...] | None = None
    spacing: tuple[float, float] | None = None
    reorient: str = "canonical"

    @property
    def canonical(self) -> bool:
        """Whether volumes are reoriented to RAS+ before slicing."""
        return self.reorient != "none"


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


@dataclasses.dataclass
class CaseSlices:
    """The slices of one case, in slice order."""

    images: np.ndarray  # [n, H, W] float32, or [n, H, W, K] for K >= 2 channels
    labels: np.ndarray  # [n, H, W] uint8 class indices: {0, 1} binary, 0..C with C classes
    slice_index: np.ndarray  # [n] int32, index along `axis` of the canonical volume
    spacing: np.ndarray  # [3] float32, mm


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
        try:
            return _from_verified_gzip(path, what)
        except FileNotFoundError as e:
            raise DataError(f"{path}: {what} file not found") from e
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
            return klass.from_bytes(data)
        except Exception as e:  # not this NIfTI version (or not NIfTI at all)
            first_error = first_error or e
    raise DataError(
        f"{path}: unreadable NIfTI {what} ({type(first_error).__name__}: {first_error})"
    )


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
            bad = int(np.size(channel) - np.count_nonzero(np.isfinite(channel)))
            raise DataError(f"{path}: contains {bad} NaN or Inf voxels")
        check_magnitude(channel, path)
    return image, first


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
        bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        raise DataError(f"{case.image}: contains {bad} NaN or Inf voxels")
    check_magnitude(image, case.image)
    label = None
    if case.label is not None:
        label, _ = read_canonical(case.label, "label", None, False, reorient)
    spacing = np.sqrt(np.sum(img.affine[:3, :3] ** 2, axis=0)).astype(np.float32)
    return Volume(image, label, spacing, img.affine)


def label_target(
    label: np.ndarray,
    path: str,
    target_values: tuple[int, ...] | None,
    allowed: tuple[int, ...] | None,
) -> np.ndarray:
    """Checks a label volume and maps it to the binary target.

    Args:
      label: integer-valued label volume (any numeric dtype).
      path: the label file, for error messages.
      target_values: values that form the target; None = any value > 0.
      allowed: values the file may contain; None = any non-negative integer.

    Returns:
      uint8 array of label's shape, 1 where the label is a target value.
    """
    label, lo, hi = integer_labels(label, path)
    if hi >= 2**16:  # too sparse for a lookup table
        allowed_set = None if allowed is None else np.asarray(allowed)
        if allowed_set is not None and not np.all(np.isin(label, allowed_set)):
            bad = np.setdiff1d(np.unique(label), allowed_set)
            raise DataError(
                f"{path}: unexpected label values {bad[:10].tolist()}; expected {allowed}"
            )
        if target_values is None:
            return (label > 0).astype(np.uint8)
        return np.isin(label, np.asarray(target_values)).astype(np.uint8)
    # One lookup-table pass: 0 = background, 1 = target, 2 = not an allowed value.
    lut = np.zeros(hi + 1, np.uint8)
    if target_values is None:
        lut[1:] = 1
    else:
        lut[[v for v in target_values if 0 <= v <= hi]] = 1
    if allowed is not None:
        unexpected = np.ones(hi + 1, bool)
        unexpected[[v for v in allowed if 0 <= v <= hi]] = False
        lut[unexpected] = 2
    codes = lut[label]
    if allowed is not None and codes.max(initial=0) == 2:
        bad = np.unique(label[codes == 2])
        raise DataError(
            f"{path}: unexpected label values {bad[:10].tolist()}; expected a subset of "
            f"{sorted(allowed)}"
        )
    return codes


def integer_labels(label: np.ndarray, path: str) -> tuple[np.ndarray, int, int]:
    """Checks that a label volume holds non-negative integers; returns (label, min, max).

    A float volume of integral values comes back as int64; integer volumes come back as they are.
    """
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)):
            raise DataError(f"{path}: label volume contains NaN or Inf voxels")
        rounded = np.round(label)
        if not np.array_equal(rounded, label):
            examples = np.unique(label[rounded != label])[:5]
            raise DataError(
                f"{path}: label values must be integers, found {examples.tolist()} "
                "(an image given as a label, or labels resampled with interpolation?)"
            )
        label = rounded.astype(np.int64)
    elif label.dtype.kind not in "iu":
        raise DataError(f"{path}: unsupported label voxel type {label.dtype}")
    lo, hi = int(label.min()), int(label.max())
    if lo < 0:
        raise DataError(f"{path}: negative label value {lo}; labels must be integers >= 0")
    return label, lo, hi


def label_classes(
    label: np.ndarray,
    path: str,
    class_values: tuple[tuple[int, ...], ...],
    allowed: tuple[int, ...] | None,
) -> np.ndarray:
    """Checks a label volume and maps it to class indices.

    Args:
      label: integer-valued label volume (any numeric dtype).
      path: the label file, for error messages.
      class_values: per foreground class its label values; class k (1-based) gets index k.
      allowed: values the file may contain (0, the class values and any background values);
        None = any non-negative integer, values outside every class being background.

    Returns:
      uint8 array of label's shape: 0 = background, k = class k.
    """
    label, _, hi = integer_labels(label, path)
    values = np.asarray([v for group in class_values for v in group], np.int64)
    index = np.repeat(np.arange(1, len(class_values) + 1), [len(g) for g in class_values])
    allowed_set = None if allowed is None else np.asarray(sorted(allowed), np.int64)
    if hi >= 2**16:  # too sparse for a lookup table
        if allowed_set is not None and not np.all(np.isin(label, allowed_set)):
            bad = np.setdiff1d(np.unique(label), allowed_set)
            raise DataError(
                f"{path}: unexpected label values {bad[:10].tolist()}; expected a subset of "
                f"{allowed_set.tolist()} (classes {[list(g) for g in class_values]}; list "
                "values to ignore in data.background_values)"
            )
        out = np.zeros(label.shape, np.uint8)
        for value, k in zip(values.tolist(), index.tolist(), strict=True):
            out[label == value] = k
        return out
    # One lookup-table pass: class index per value, 255 = not an allowed value.
    lut = np.zeros(hi + 1, np.uint8)
    if allowed_set is not None:
        lut[:] = 255
        lut[allowed_set[allowed_set <= hi]] = 0
    keep = values <= hi
    lut[values[keep]] = index[keep]
    codes = lut[label]
    if allowed_set is not None and codes.max(initial=0) == 255:
        bad = np.unique(label[codes == 255])
        raise DataError(
            f"{path}: unexpected label values {bad[:10].tolist()}; expected a subset of "
            f"{allowed_set.tolist()} (classes {[list(g) for g in class_values]}; list values to "
            "ignore in data.background_values)"
        )
    return codes


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
    raise ValueError(
        f"config field data.normalisation: unknown method {method!r}; expected 'zscore' or 'ct_window'"
    )


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
    raise ValueError(
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
    raise ValueError(
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
    )


def case_labels(volume: Volume, case: CaseFiles, settings: Settings) -> np.ndarray:
    """The [X, Y, Z] uint8 class indices of a case (the binary target when C = 1)."""
    shape = volume.image.shape[-3:]
    if volume.label is None:  # an unlabelled case: its masks stay 0 (SliceSet.has_label says so)
        return np.zeros(shape, np.uint8)
    return label_indices(volume.label, case.label, settings)


def label_indices(label: np.ndarray, path: str, settings: Settings) -> np.ndarray:
    """A label volume (of the file `path`) -> uint8 class indices as the loader maps them: the
    binary target (C = 1) or the classes of `settings.class_values`; bad values raise
    DataError naming the file."""
    if settings.class_values is None:
        return label_target(label, path, settings.target_values, settings.allowed_labels)
    return label_classes(label, path, settings.class_values, settings.allowed_labels)


def label_value_table(settings: Settings) -> np.ndarray:
    """The inverse map for writing label files: entry c is the label value of class index c
    (0 = background; a class of several values writes its first)."""
    if settings.class_values is None:
        target = settings.target_values
        return np.asarray([0, int(target[0]) if target else 1], np.int64)
    return np.asarray([0, *(int(values[0]) for values in settings.class_values)], np.int64)


def _slice_channels(volume: Volume, case: CaseFiles, settings: Settings) -> CaseSlices:
    """`slice_volume` for K >= 2 input channels ([K, X, Y, Z] image): each channel normalised,
    sliced and fitted on its own exactly as a single channel is; slices [n, H, W, K]."""
    image = volume.image
    if image.ndim != 4 or len(image) != len(settings.channel_normalisation):
        raise ValueError(
            f"{case.image}: {len(settings.channel_normalisation)} channels expected, got an "
            f"image of shape {image.shape}"
        )
    labels = to_slices(case_labels(volume, case, settings), settings.axis)
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
    )


def process_case(case: CaseFiles, settings: Settings) -> CaseSlices:
    """Reads, checks and slices one case (an unlabelled case gets all-zero masks)."""
    return slice_volume(load_volume(case, settings.canonical), case, settings)
