"""The records a dataset's cases pass through: a case's files (`CaseFiles`), what preprocessing
does to every case (`Settings`, made once per run from config.data and the layout's Source) and
one case's slices (`CaseSlices`). Every data module reads them from here.
"""

from __future__ import annotations

import dataclasses

import numpy as np


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
      reorient: 'canonical' (RAS+, nib.as_closest_canonical) or 'none' (the stored voxel order:
        `axis` is an array axis of the file).
      class_values: per foreground class (C >= 2) its label values: voxels of class k get index
        k (1-based), 0 = background; None = the binary target of `target_values`.
      channel_normalisation: per input channel (K >= 2) 'zscore' or 'ct_window'; None = one
        channel, normalised by `normalisation`.
      spacing: in-plane (mm, mm) of the output pixels (data.spacing): each slice is resampled
        to it (anti-aliased images, per-class labels), then centre cropped/padded to `size`;
        `resample` is then unused. None = fit by `resample` alone.
      ignore_value: the label value of unlabelled voxels (nnU-Net's `ignore`): read as
        background (never target); a slice of them alone is unlabelled (CaseSlices.labelled).
    """

    axis: int
    size: tuple[int, int]
    resample: str
    normalisation: str
    ct_window: tuple[float, float]
    keep_empty_slices: bool
    target_values: tuple[int, ...] | None
    allowed_labels: tuple[int, ...] | None
    reorient: str  # no default: every path between slices and files must say it
    class_values: tuple[tuple[int, ...], ...] | None = None
    channel_normalisation: tuple[str, ...] | None = None
    spacing: tuple[float, float] | None = None
    ignore_value: int | None = None

    @property
    def canonical(self) -> bool:
        """Whether volumes are reoriented to RAS+ before slicing."""
        return self.reorient != "none"


@dataclasses.dataclass
class CaseSlices:
    """The slices of one case, in slice order."""

    images: np.ndarray  # [n, H, W] float32, or [n, H, W, K] for K >= 2 channels
    labels: np.ndarray  # [n, H, W] uint8 class indices: {0, 1} binary, 0..C with C classes
    slice_index: np.ndarray  # [n] int32, index along `axis` of the canonical volume
    spacing: np.ndarray  # [3] float32, mm
    # `voxel_digest` of the image as read (before normalisation); None for a blank (constant)
    # image, or if not computed.
    digest: str | None = None
    # [n] bool: the slice has labels (False: its label plane is all Settings.ignore_value);
    # None = every slice of a labelled case has.
    labelled: np.ndarray | None = None
