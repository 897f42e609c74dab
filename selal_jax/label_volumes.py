"""Label volumes in a case's own geometry: how its canonical (RAS+) volume maps onto the file's
voxel grid (`Geometry`), the inverse of the loader's slicing and fitting (`prefill_volume`), the
model's masks (`predict_batch`) and writing them beside the source image. The annotator's export,
the nnU-Net export and the per-case evaluation all write their volumes through here.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
from nibabel import orientations

from selal_jax.data import preprocess
from selal_jax.data.preprocess import CaseFiles

PLANES = ("sagittal", "coronal", "axial")  # slicing along canonical (RAS) axis 0, 1, 2
RAS = orientations.axcodes2ornt("RAS")
IDENTITY = RAS  # as an orientation: file axis i is loader axis i, not reversed


@dataclasses.dataclass(frozen=True)
class Geometry:
    """A case's voxel grid and how its canonical (RAS+) volume maps onto it.

    Attributes:
      shape: (3,) voxel shape of the file (its spatial axes).
      affine: [4, 4] voxel-to-world matrix of the file.
      ornt: [3, 2] nib.io_orientation(affine): file axis i is canonical axis ornt[i, 0],
        reversed where ornt[i, 1] == -1 (what nib.as_closest_canonical applies); the identity
        with data.reorient = 'none', where the loader slices the stored array.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    ornt: np.ndarray

    @classmethod
    def of(cls, case: CaseFiles, reorient: str = "canonical") -> Geometry:
        """From the image file's header; `reorient` as data.reorient."""
        shape = preprocess.check_header(dataclasses.replace(case, label=None))
        affine = np.asarray(preprocess.load_nifti(case.image, header_only=True).affine, np.float64)
        ornt = IDENTITY.copy() if reorient == "none" else nib.io_orientation(affine)
        return cls(shape, affine, ornt)

    def plane(self, file_axis: int) -> str:
        """sagittal, coronal or axial: the anatomical plane of slices along a file axis."""
        return PLANES[int(nib.io_orientation(self.affine)[file_axis, 0])]

    def canonical_shape(self) -> tuple[int, int, int]:
        out = [0, 0, 0]
        for i in range(3):
            out[int(self.ornt[i, 0])] = self.shape[i]
        return tuple(out)

    def file_slice(self, canonical_axis: int, canonical_index: int) -> tuple[int, int]:
        """(file voxel axis, index along it) of a canonical slice."""
        axis = int(np.flatnonzero(self.ornt[:, 0] == canonical_axis)[0])
        flipped = self.ornt[axis, 1] < 0
        return axis, (self.shape[axis] - 1 - canonical_index) if flipped else canonical_index

    def to_file(self, canonical: np.ndarray) -> np.ndarray:
        """Canonical [X, Y, Z] array -> the file's voxel order."""
        return orientations.apply_orientation(
            canonical, orientations.ornt_transform(RAS, self.ornt)
        )


def canonical_spacing(geometry: Geometry) -> np.ndarray:
    """[3] float32 mm along the canonical axes: the loader's `Volume.spacing` of the case."""
    spacing = np.zeros(3)
    spacing[geometry.ornt[:, 0].astype(int)] = np.sqrt(np.sum(geometry.affine[:3, :3] ** 2, 0))
    return spacing.astype(np.float32)


def prefill_volume(
    geometry: Geometry,
    settings: preprocess.Settings,
    canonical_index: np.ndarray,
    masks: np.ndarray,
    label_values: np.ndarray,
) -> np.ndarray:
    """The label volume to export, in the file's voxel order.

    Args:
      geometry: the case's file geometry.
      settings: the loader's settings (axis, size, resample).
      canonical_index: [n] indices of the queried slices along settings.axis (canonical).
      masks: [n, H, W] class indices of those slices at data.size ({0, 1} for one class).
      label_values: [C + 1] label value written for each class index
        (`preprocess.label_value_table`), or one int: the value of a binary mask's 1.

    Returns:
      uint8 (uint16 for label values above 255) array of geometry.shape: each class's label
      value on the queried slices, 0 elsewhere.
    """
    label_values = np.asarray(label_values)
    if label_values.ndim == 0:
        label_values = np.asarray([0, int(label_values)])
    dtype = np.uint8 if label_values.max() <= 255 else np.uint16
    canonical = np.zeros(geometry.canonical_shape(), dtype)
    stack = np.moveaxis(canonical, settings.axis, 0)  # a view, as preprocess.to_slices cuts it
    planes = preprocess.unfit_case_slices(
        np.asarray(masks, np.uint8), stack.shape[1:], settings, canonical_spacing(geometry)
    )
    stack[np.asarray(canonical_index)] = label_values.astype(dtype)[planes]
    return geometry.to_file(canonical)


def write_label_volume(path: str, data: np.ndarray, case: CaseFiles) -> None:
    """Saves `data` as NIfTI with the source image's affine, qform/sform codes and units."""
    source = preprocess.load_nifti(case.image, header_only=True)
    image = nib.Nifti1Image(np.ascontiguousarray(data), source.affine)
    header = source.header
    if hasattr(header, "get_sform"):  # NIfTI sources: viewers read the codes, keep them
        image.set_sform(*header.get_sform(coded=True))
        image.set_qform(*header.get_qform(coded=True))
        image.header.set_xyzt_units(*header.get_xyzt_units())
    nib.save(image, path)


@functools.partial(jax.jit, static_argnames=("model",))
def predict_batch(variables, images: jax.Array, *, model) -> jax.Array:
    """Images [batch, H, W(, K)] -> [batch, H, W] uint8 class indices of the deterministic
    model: P > 0.5 for the binary head, the argmax class for several classes."""
    logits = model.apply(variables, images, False)
    if logits.ndim == 4:
        return jnp.argmax(logits, axis=-1).astype(jnp.uint8)
    return (logits > 0).astype(jnp.uint8)
