"""Label volumes in a case's own geometry: how the loader's slices map onto the file's voxel
grid (`Geometry`, built from the case and the run's settings), the inverse of the loader's
slicing and fitting (`prefill_volume`), the case's label file as class indices in its own voxel
order, and writing masks beside the source image. The annotator's export and import, the
nnU-Net export and the per-case evaluation all map slices through here.
"""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
from nibabel import orientations

from selal_jax.data import cases, fitting, label_maps, preprocess, reading
from selal_jax.data.cases import CaseFiles

PLANES = ("sagittal", "coronal", "axial")  # slicing along canonical (RAS) axis 0, 1, 2
RAS = orientations.axcodes2ornt("RAS")
IDENTITY = RAS  # as an orientation: file axis i is loader axis i, not reversed


@dataclasses.dataclass(frozen=True)
class Geometry:
    """One case's slices and its source voxels: the run's settings (orientation, slicing axis,
    in-plane fit and spacing) and the file's voxel grid, whose canonical (RAS+) volume the loader
    slices. Every path between a slice and the source file goes through here: the annotation
    export and import, the per-case evaluation and its prediction volumes, the nnU-Net export.

    Attributes:
      shape: (3,) voxel shape of the file (its spatial axes).
      affine: [4, 4] voxel-to-world matrix of the file.
      ornt: [3, 2] nib.io_orientation(affine): file axis i is canonical axis ornt[i, 0],
        reversed where ornt[i, 1] == -1 (what nib.as_closest_canonical applies); the identity
        with data.reorient = 'none', where the loader slices the stored array.
      settings: the loader's settings the slices were made with.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    ornt: np.ndarray
    settings: cases.Settings

    @classmethod
    def of(cls, case: CaseFiles, settings: cases.Settings) -> Geometry:
        """From the image file's header and the run's settings (`Splits.settings`; its
        `reorient` decides the orientation, so no caller can leave it out)."""
        shape = preprocess.check_header(dataclasses.replace(case, label=None))
        affine = np.asarray(reading.load_nifti(case.image, header_only=True).affine, np.float64)
        ornt = nib.io_orientation(affine) if settings.canonical else IDENTITY.copy()
        return cls(shape, affine, ornt, settings)

    @property
    def file_axis(self) -> int:
        """The file's voxel axis the slices are cut along (the loader's settings.axis)."""
        return int(np.flatnonzero(self.ornt[:, 0] == self.settings.axis)[0])

    def file_index(self, canonical_index) -> np.ndarray:
        """[n] indices along `file_axis` of slices at `canonical_index` ([n], along the loader's
        axis of the canonical volume)."""
        canonical_index = np.asarray(canonical_index, np.int64)
        if self.ornt[self.file_axis, 1] < 0:
            return self.shape[self.file_axis] - 1 - canonical_index
        return canonical_index

    def plane(self, file_axis: int) -> str:
        """sagittal, coronal or axial: the anatomical plane of slices along a file axis."""
        return PLANES[int(nib.io_orientation(self.affine)[file_axis, 0])]

    def canonical_shape(self) -> tuple[int, int, int]:
        out = [0, 0, 0]
        for i in range(3):
            out[int(self.ornt[i, 0])] = self.shape[i]
        return tuple(out)

    def canonical_spacing(self) -> np.ndarray:
        """[3] float32 mm along the canonical axes: the loader's `Volume.spacing` of the case."""
        spacing = np.zeros(3)
        spacing[self.ornt[:, 0].astype(int)] = np.sqrt(np.sum(self.affine[:3, :3] ** 2, 0))
        return spacing.astype(np.float32)

    def to_file(self, canonical: np.ndarray) -> np.ndarray:
        """Canonical [X, Y, Z] array -> the file's voxel order."""
        return orientations.apply_orientation(
            canonical, orientations.ornt_transform(RAS, self.ornt)
        )

    def file_planes(self, volume: np.ndarray, canonical_index) -> np.ndarray:
        """The source voxels of slices: [n, a, b] planes of a volume in the file's voxel order
        (`shape`), plane k along `file_axis` at the file index of canonical_index[k], its axes
        the file's other two in order."""
        return np.moveaxis(volume, self.file_axis, 0)[self.file_index(canonical_index)]

    def put_planes(self, volume: np.ndarray, canonical_index, planes: np.ndarray) -> None:
        """The inverse of `file_planes`: writes [n, a, b] planes into `volume` in place."""
        np.moveaxis(volume, self.file_axis, 0)[self.file_index(canonical_index)] = planes


def prefill_volume(
    geometry: Geometry,
    canonical_index: np.ndarray,
    masks: np.ndarray,
    label_values: np.ndarray,
) -> np.ndarray:
    """Masks at data.size back on the source grid, in the file's voxel order: the inverse of the
    loader's slicing and in-plane fit (`fitting.unfit_case_slices`) and orientation.

    Args:
      geometry: the case's geometry (its settings: axis, size, resample, spacing).
      canonical_index: [n] indices of the slices along settings.axis (canonical).
      masks: [n, H, W] class indices of those slices at data.size ({0, 1} for one class).
      label_values: [C + 1] label value written for each class index
        (`label_maps.label_value_table`), or one int: the value of a binary mask's 1.

    Returns:
      uint8 (uint16 for label values above 255) array of geometry.shape: each class's label
      value on the slices, 0 elsewhere.
    """
    settings = geometry.settings
    label_values = np.asarray(label_values)
    if label_values.ndim == 0:
        label_values = np.asarray([0, int(label_values)])
    dtype = np.uint8 if label_values.max() <= 255 else np.uint16
    canonical = np.zeros(geometry.canonical_shape(), dtype)
    stack = np.moveaxis(canonical, settings.axis, 0)  # a view, as preprocess.to_slices cuts it
    planes = fitting.unfit_case_slices(
        np.asarray(masks, np.uint8), stack.shape[1:], settings, geometry.canonical_spacing()
    )
    stack[np.asarray(canonical_index)] = label_values.astype(dtype)[planes]
    return geometry.to_file(canonical)


def label_file_classes(
    case: CaseFiles, settings: cases.Settings
) -> tuple[np.ndarray, np.ndarray | None]:
    """The case's label file as the loader maps it (`label_maps.label_indices`: the binary
    target or the classes, with its value checks), in the file's own voxel order. (The loader
    reads the same voxels reoriented; the map is per voxel, so the two agree voxel for voxel.)

    Returns:
      (uint8 class indices of the file's shape, bool mask of its unlabelled voxels: those of
      `settings.ignore_value`, which read as 0; None when the file has none).
    """
    label, _ = reading.read_canonical(case.label, "label", None, as_float=False, reorient=False)
    unknown = None if settings.ignore_value is None else label == settings.ignore_value
    classes = label_maps.label_indices(label, case.label, settings)
    return classes, (unknown if unknown is not None and unknown.any() else None)


def write_label_volume(path: str, data: np.ndarray, case: CaseFiles) -> None:
    """Saves `data` as NIfTI with the source image's affine, qform/sform codes and units."""
    source = reading.load_nifti(case.image, header_only=True)
    image = nib.Nifti1Image(np.ascontiguousarray(data), source.affine)
    header = source.header
    if hasattr(header, "get_sform"):  # NIfTI sources: viewers read the codes, keep them
        image.set_sform(*header.get_sform(coded=True))
        image.set_qform(*header.get_qform(coded=True))
        image.header.set_xyzt_units(*header.get_xyzt_units())
    nib.save(image, path)
