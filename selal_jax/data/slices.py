"""Slice sets: the host-side NumPy arrays of a split, with where each slice came from."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class SliceSet:
    """2D slices of one split.

    Attributes:
      images: [N, H, W] float32 normalised intensities of one input channel, or [N, H, W, K]
        for K >= 2 channels (may be a read-only memmap).
      labels: [N, H, W] uint8 class indices 0..C, 0 = background: binary {0, 1} target masks
        when C = 1 (may be a read-only memmap).
      subject: [N] int32 index into `cases` of the volume each slice came from.
      slice_index: [N] int32 index of the slice along the slicing axis of the canonical volume
        (with data.reorient = 'none': of the stored volume).
      spacing: [N, 3] float32 voxel spacing (mm) of the source volume, canonical axis order
        (with data.reorient = 'none': stored axis order).
      cases: case identifiers (e.g. file stems), indexed by `subject`.
      has_label: [N] bool, False for slices of cases without a label file (their `labels` are
        0 and mean nothing); None at construction means every slice has one.
      class_names: the C >= 1 foreground class names; label k is class_names[k - 1].
      channel_names: the K input channel names, in channel order.
    """

    images: np.ndarray
    labels: np.ndarray
    subject: np.ndarray
    slice_index: np.ndarray
    spacing: np.ndarray
    cases: list[str]
    has_label: np.ndarray | None = None
    class_names: tuple[str, ...] = ("target",)
    channel_names: tuple[str, ...] = ("image",)

    def __post_init__(self):
        if self.has_label is None:
            self.has_label = np.ones(len(self.images), bool)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the slices."""
        return tuple(self.images.shape[1:3])

    @property
    def num_classes(self) -> int:
        """C, the foreground classes (1 = the binary target)."""
        return len(self.class_names)

    @property
    def channels(self) -> int:
        """K, the input channels."""
        return 1 if self.images.ndim == 3 else int(self.images.shape[3])

    def describe(self, i: int) -> str:
        """'case X, slice 57' for pool id i."""
        return f"case {self.cases[self.subject[i]]}, slice {int(self.slice_index[i])}"


@dataclasses.dataclass
class Splits:
    train: SliceSet
    val: SliceSet
    test: SliceSet
    fingerprint: str  # hash of the source files' contents and the preprocessing config
    # The layouts.Source the slices came from (case files, label semantics); None if unknown.
    source: Any = None
    # The case names of each split, {"train": [...], "val": [...], "test": [...]}, as the cache
    # recorded them (cases left out by data.split_file are in none); None for older caches.
    split_cases: dict[str, list[str]] | None = None
    # Per split, its labelled slices with any target, as the cache counted them; None for
    # older caches.
    target_slices: dict[str, int] | None = None
    # The fingerprint of the same files before it hashed contents (sizes and mtimes instead):
    # a run that stored it resumes (`workdir.check_compatible`).
    legacy_fingerprint: str | None = None
    # The preprocessing the slices were made with (`config_fields.make_settings` of the config
    # and the source, made once per load): slicing axis, fit, label map. None if unknown.
    settings: Any = None
