"""One reader for every volume format: NIfTI through nibabel, NRRD (3D Slicer's) through pynrrd.

`load_image(path)` returns a `nib.Nifti1Image` (voxels read lazily) whatever the format, so the
loader's code (`nib.as_closest_canonical`, `img.slicer`, `get_fdata`, `dataobj`, `affine`,
`get_data_dtype()`) works unchanged. NIfTI files are opened with `nib.load` exactly as before.
An NRRD file (.nrrd, or a detached .nhdr header) is wrapped into an in-memory Nifti1Image whose
affine is the RAS one nibabel would give the same data written as NIfTI: column i of the affine
is the file's `space directions` vector of axis i, its translation the `space origin`, both
converted from the file's `space` (LPS, LAS or RAS) to RAS. A non-spatial axis (a multi-component
volume, `space directions` "none") becomes the 4th axis, like a 4D NIfTI's channels.

pynrrd was chosen over SimpleITK: it is small and pure Python (NumPy only), reads the header
alone (`read_header`, no voxels, as the loader's header checks need), keeps every key-value pair
(Slicer's `Segment<N>_*` keys of .seg.nrrd files) and gives the voxels in the file's own axis
order, so the affine is a plain function of the header that a test can check by hand.

`load_segmentation(path, shape, affine)` reads a Slicer segmentation (.seg.nrrd) into a label
map on a reference image's grid (see its docstring).
"""

from __future__ import annotations

import os
import re

import nibabel as nib
import numpy as np

from selal_jax.base.errors import DataError
from selal_jax.data.file_checks import (
    bad_nrrd_header_line,
    check_declared_size,
    not_found,
    nrrd_data_file,
)

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
NRRD_EXTENSIONS = (".seg.nrrd", ".nrrd", ".nhdr")  # .seg.nrrd first: it is stripped whole
VOLUME_EXTENSIONS = NIFTI_EXTENSIONS + NRRD_EXTENSIONS
SEGMENTATION_EXTENSION = ".seg.nrrd"
# NRRD `space` values -> the sign of each world axis in RAS (x, y, z); '-time' spaces are 3D
# spaces with a time axis, which the loader does not use.
SPACE_SIGNS = {
    "right-anterior-superior": (1, 1, 1),
    "ras": (1, 1, 1),
    "left-anterior-superior": (-1, 1, 1),
    "las": (-1, 1, 1),
    "left-posterior-superior": (-1, -1, 1),
    "lps": (-1, -1, 1),
}
# NRRD `type` values (the format's spellings) -> NumPy codes; 'block' has no voxel type.
NRRD_TYPES = {
    **dict.fromkeys(("signed char", "int8", "int8_t"), "i1"),
    **dict.fromkeys(("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
    **dict.fromkeys(
        ("short", "short int", "signed short", "signed short int", "int16", "int16_t"), "i2"
    ),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), "u2"),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t"), "i4"),
    **dict.fromkeys(("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
    **dict.fromkeys(
        (
            "longlong",
            "long long",
            "long long int",
            "signed long long",
            "signed long long int",
            "int64",
            "int64_t",
        ),
        "i8",
    ),
    **dict.fromkeys(
        ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), "u8"
    ),
    "float": "f4",
    "double": "f8",
}


def is_nrrd(path: str) -> bool:
    return os.path.basename(path).lower().endswith((".nrrd", ".nhdr"))


def is_segmentation(path: str) -> bool:
    return os.path.basename(path).lower().endswith(SEGMENTATION_EXTENSION)


def strip_extension(name: str) -> str:
    """'case.nii.gz' -> 'case' (also .nii, .seg.nrrd, .nrrd, .nhdr); other names unchanged."""
    for ext in VOLUME_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def load_image(path: str, what: str = "image") -> nib.Nifti1Image:
    """The image at `path` (NIfTI or NRRD), voxels read lazily; DataError naming the file."""
    if is_nrrd(path):
        return load_nrrd(path, what)
    if not os.path.isfile(path):
        raise not_found(path, what)
    try:
        image = nib.load(path)
    except FileNotFoundError as e:
        raise not_found(path, what) from e
    except Exception as e:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: unreadable NIfTI {what} ({type(e).__name__}: {e})") from e
    proxy = image.dataobj
    if hasattr(proxy, "offset"):  # an ArrayProxy: the voxels are still in the file
        encoding = "gzip" if path.endswith(".gz") else "raw"
        held = os.path.getsize(path)
        check_declared_size(path, proxy.shape, proxy.dtype, proxy.offset, held, encoding)
    return image


def _space_signs(header: dict, path: str) -> np.ndarray:
    space = str(header.get("space", "")).strip().lower()
    if not space:
        raise DataError(
            f"{path}: NRRD field 'space' missing; the anatomical orientation of 'space "
            "directions' is unknown (expected left-posterior-superior, right-anterior-superior "
            "or left-anterior-superior)"
        )
    base = space[: -len("-time")] if space.endswith("-time") else space
    base = base[:-1] if base in ("rast", "last", "lpst") else base
    if base not in SPACE_SIGNS:
        raise DataError(
            f"{path}: NRRD field 'space' is {header['space']!r}, which has no anatomical "
            "orientation; expected left-posterior-superior (LPS), right-anterior-superior (RAS) "
            "or left-anterior-superior (LAS)"
        )
    return np.asarray(SPACE_SIGNS[base], np.float64)


def nrrd_geometry(header: dict, path: str) -> tuple[np.ndarray, list[int], int | None]:
    """(RAS affine [4, 4], the spatial axes of the file, its non-spatial axis or None).

    Raises DataError naming the file and the field for what has no 3D geometry.
    """
    sizes = [int(s) for s in np.atleast_1d(header.get("sizes", []))]
    directions = header.get("space directions")
    if directions is None:
        raise DataError(
            f"{path}: NRRD field 'space directions' missing; the voxel-to-world geometry is "
            "unknown (save it from 3D Slicer, or write space, space directions and space origin)"
        )
    directions = np.asarray(directions, np.float64)
    if directions.ndim != 2 or directions.shape != (len(sizes), 3):
        raise DataError(
            f"{path}: NRRD field 'space directions' must give one 3-vector (or none) per axis of "
            f"sizes {sizes}, got {header.get('space directions')!r}"
        )
    spatial = [i for i in range(len(sizes)) if np.all(np.isfinite(directions[i]))]
    other = [i for i in range(len(sizes)) if i not in spatial]
    if len(spatial) != 3 or len(other) > 1:
        raise DataError(
            f"{path}: NRRD field 'space directions' gives {len(spatial)} spatial axes of "
            f"{len(sizes)} (sizes {sizes}); expected 3, plus at most one non-spatial (channel) axis"
        )
    origin = np.asarray(header.get("space origin", np.zeros(3)), np.float64).reshape(-1)
    if origin.shape != (3,) or not np.all(np.isfinite(origin)):
        raise DataError(
            f"{path}: NRRD field 'space origin' must be a 3-vector, got {header['space origin']!r}"
        )
    signs = _space_signs(header, path)
    affine = np.eye(4)
    affine[:3, :3] = signs[:, None] * directions[spatial].T  # column i = axis i's direction
    affine[:3, 3] = signs * origin
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(
            f"{path}: degenerate NRRD 'space directions' {directions[spatial].tolist()}"
        )
    return affine, spatial, other[0] if other else None


class _NrrdVoxels:
    """A lazy array of an NRRD file's voxels in NIfTI axis order (3 spatial axes, then the
    channel axis if any): read on first use, once."""

    is_proxy = True  # nibabel: do not treat as an in-memory array

    def __init__(self, path: str, what: str, header: dict, channel_axis: int | None):
        self.path, self.what, self.channel_axis = path, what, channel_axis
        sizes = [int(s) for s in header["sizes"]]
        if channel_axis is not None:
            sizes.append(sizes.pop(channel_axis))
            if sizes[-1] == 1:
                sizes.pop()
        self.shape = tuple(sizes)
        self.dtype = _nrrd_dtype(header, path)
        self._data = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _read(self) -> np.ndarray:
        if self._data is None:
            import nrrd

            try:
                data, _ = nrrd.read(self.path, index_order="F")
            except Exception as e:  # short gzip streams, missing detached data files ...
                raise DataError(
                    f"{self.path}: cannot read NRRD {self.what} voxels, truncated or corrupt "
                    f"({type(e).__name__}: {e})"
                ) from e
            if self.channel_axis is not None:
                data = np.moveaxis(data, self.channel_axis, -1)
            self._data = np.asarray(data.reshape(self.shape), self.dtype)
        return self._data

    def __array__(self, dtype=None, copy=None):
        data = self._read()
        return data if dtype is None else data.astype(dtype)

    def __getitem__(self, index):
        return self._read()[index]


def _nrrd_dtype(header: dict, path: str) -> np.dtype:
    """The voxel type of an NRRD header, in native byte order (the data is converted)."""
    name = str(header.get("type", "")).strip()
    code = NRRD_TYPES.get(name.lower())
    if code is None:
        raise DataError(
            f"{path}: NRRD field 'type' is {name!r}; expected an integer or floating-point type"
        )
    return np.dtype(code)


def load_nrrd(path: str, what: str = "image") -> nib.Nifti1Image:
    """An NRRD file as an in-memory Nifti1Image with the RAS affine (voxels read lazily)."""
    import nrrd

    if not os.path.isfile(path):
        raise not_found(path, what)
    try:
        header = nrrd.read_header(path)
    except Exception as e:  # pynrrd's NRRDError and parse errors
        bad = bad_nrrd_header_line(path)
        if bad is not None:
            raise DataError(f"{path}: unreadable NRRD {what}: {bad}") from e
        raise DataError(f"{path}: unreadable NRRD {what} ({type(e).__name__}: {e})") from e
    affine, _, channel_axis = nrrd_geometry(header, path)
    voxels = _NrrdVoxels(path, what, header, channel_axis)
    data_path = nrrd_data_file(header, path, what)
    if data_path is not None:
        encoding = str(header.get("encoding", "raw")).strip().lower()
        encoding = {"gz": "gzip", "text": "ascii", "txt": "ascii"}.get(encoding, encoding)
        held, where = os.path.getsize(data_path), "" if data_path == path else data_path
        check_declared_size(path, header["sizes"], voxels.dtype, 0, held, encoding, where)
    try:
        # dtype given: nibabel would otherwise read a voxel to find it (reading the whole file)
        image = nib.Nifti1Image(voxels, affine, dtype=voxels.dtype)
    except DataError:
        raise
    except Exception as e:  # a voxel type NIfTI has no code for
        raise DataError(f"{path}: unsupported NRRD voxel type {voxels.dtype}") from e
    image.nrrd_header = header  # for callers that need Slicer's keys (segmentations)
    return image


def _segments(header: dict, path: str) -> list[dict]:
    """Slicer's per-segment keys: [{'index', 'name', 'label_value', 'layer'}] by segment index."""
    indices = sorted(
        {int(m.group(1)) for k in header if (m := re.fullmatch(r"Segment(\d+)_LabelValue", k))}
    )
    out = []
    for n in indices:
        try:
            value = int(str(header[f"Segment{n}_LabelValue"]).strip())
            layer = int(str(header.get(f"Segment{n}_Layer", "0")).strip())
        except ValueError as e:
            raise DataError(
                f"{path}: field 'Segment{n}_LabelValue'/'Segment{n}_Layer' must be integers, got "
                f"{header.get(f'Segment{n}_LabelValue')!r}/{header.get(f'Segment{n}_Layer')!r}"
            ) from e
        if value < 1 or layer < 0:
            raise DataError(
                f"{path}: field 'Segment{n}_LabelValue' must be >= 1 and 'Segment{n}_Layer' "
                f">= 0, got {value} and {layer}"
            )
        name = str(header.get(f"Segment{n}_Name", f"Segment_{n}"))
        out.append({"index": n, "name": name, "label_value": value, "layer": layer})
    return out


def load_segmentation(path: str, shape, affine: np.ndarray) -> nib.Nifti1Image:
    """A 3D Slicer segmentation (.seg.nrrd) as a label map on a reference image's grid.

    The file's voxel grid may be a crop of the reference's (Slicer saves the segments' extent):
    its `space origin` must fall on a voxel of the reference grid, with the same axes and
    spacing, and the crop is placed there (the rest is 0). Voxel value v of layer L belongs to
    the segment with `Segment<N>_Layer` L and `Segment<N>_LabelValue` v, and writes that label
    value. Several layers (overlapping segments: a 4D file) are merged where no voxel belongs to
    two segments of different values; otherwise the file is refused, naming the segments.

    Args:
      path: the .seg.nrrd file.
      shape: (3,) voxel shape of the reference image.
      affine: [4, 4] RAS affine of the reference image.

    Returns:
      Nifti1Image of `shape` and `affine` holding int32 label values (0 = no segment).
    """
    image = load_nrrd(path, "segmentation")
    header = image.nrrd_header
    segments = _segments(header, path)
    seg_affine = image.affine
    data = np.asanyarray(image.dataobj)
    if data.ndim == 3:
        data = data[..., None]  # one layer
    if data.dtype.kind not in "iu":
        if data.dtype.kind != "f" or not np.array_equal(data, np.round(data)):
            raise DataError(f"{path}: segmentation voxels must be integers, got {data.dtype}")
        data = data.astype(np.int64)
    shape = tuple(int(s) for s in shape)
    affine = np.asarray(affine, np.float64)
    if not np.allclose(seg_affine[:3, :3], affine[:3, :3], rtol=1e-4, atol=1e-4):
        raise DataError(
            f"{path}: segmentation axes or spacing differ from the source image's:\n"
            f"file   {np.round(seg_affine[:3, :3], 4).tolist()}\n"
            f"source {np.round(affine[:3, :3], 4).tolist()}"
        )
    offset = np.linalg.solve(affine[:3, :3], seg_affine[:3, 3] - affine[:3, 3])
    if not np.allclose(offset, np.round(offset), atol=1e-3):
        raise DataError(
            f"{path}: field 'space origin' does not fall on a voxel of the source image's grid "
            f"(offset {np.round(offset, 3).tolist()} voxels)"
        )
    offset = np.round(offset).astype(int)
    by_layer: dict[int, dict[int, dict]] = {}
    for segment in segments:
        layer = by_layer.setdefault(segment["layer"], {})
        if segment["label_value"] in layer:
            other = layer[segment["label_value"]]["index"]
            raise DataError(
                f"{path}: segments {other} and {segment['index']} have the same label value "
                f"{segment['label_value']} in layer {segment['layer']}"
            )
        layer[segment["label_value"]] = segment
    n_layers = data.shape[3]
    if segments and max(by_layer) >= n_layers:
        raise DataError(
            f"{path}: field 'Segment<N>_Layer' names layer {max(by_layer)} of a file with "
            f"{n_layers} layers"
        )
    merged = np.zeros(data.shape[:3], np.int64)
    owner = np.full(data.shape[:3], -1, np.int64)  # segment index per voxel
    for layer in range(n_layers):
        values = data[..., layer]
        listed = by_layer.get(layer, {}) if segments else None
        present = np.unique(values[values != 0])
        if listed is not None:
            unknown = sorted(set(present.tolist()) - set(listed))
            if unknown:
                raise DataError(
                    f"{path}: layer {layer} holds values {unknown[:10]} that no "
                    "Segment<N>_LabelValue lists"
                )
        for value in present.tolist():
            segment = (
                listed[value] if listed is not None else {"index": value, "label_value": value}
            )
            mask = values == value
            clash = mask & (merged != 0) & (merged != segment["label_value"])
            if clash.any():
                others = sorted(set(owner[clash].tolist()))
                raise DataError(
                    f"{path}: segment {segment['index']} (label value {segment['label_value']}) "
                    f"overlaps segment(s) {others} on {int(clash.sum())} voxels (layers of a 4D "
                    "segmentation); one voxel can hold one label value: remove the overlap in "
                    "3D Slicer"
                )
            merged[mask] = segment["label_value"]
            owner[mask] = segment["index"]
    out = np.zeros(shape, np.int32)
    lo = np.maximum(offset, 0)
    hi = np.minimum(offset + np.asarray(merged.shape), shape)
    src = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offset, strict=True))
    dst = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    if np.any(hi <= lo):
        inside = 0
    else:
        out[dst] = merged[src]
        inside = int(np.count_nonzero(merged[src]))
    if inside != int(np.count_nonzero(merged)):
        raise DataError(
            f"{path}: {int(np.count_nonzero(merged)) - inside} segmented voxels lie outside the "
            f"source image's grid (extent offset {offset.tolist()}, size {list(merged.shape)}, "
            f"image {list(shape)})"
        )
    return nib.Nifti1Image(out, affine)
