"""Slice sets: the host-side NumPy arrays of a split, with where each slice came from."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class SliceSet:
    """2D slices of one split.

    Attributes:
      images: [N, H, W] float32 normalised intensities (may be a read-only memmap).
      labels: [N, H, W] uint8 binary target masks (may be a read-only memmap).
      subject: [N] int32 index into `cases` of the volume each slice came from.
      slice_index: [N] int32 index of the slice along the slicing axis of the canonical volume.
      spacing: [N, 3] float32 voxel spacing (mm) of the source volume, canonical axis order.
      cases: case identifiers (e.g. file stems), indexed by `subject`.
    """

    images: np.ndarray
    labels: np.ndarray
    subject: np.ndarray
    slice_index: np.ndarray
    spacing: np.ndarray
    cases: list[str]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:])

    def describe(self, i: int) -> str:
        """'case X, slice 57' for pool id i."""
        return f"case {self.cases[self.subject[i]]}, slice {int(self.slice_index[i])}"


@dataclasses.dataclass
class Splits:
    train: SliceSet
    val: SliceSet
    test: SliceSet
    fingerprint: str  # hash of the source files and preprocessing config
