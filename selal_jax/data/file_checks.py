"""Checks of a volume file before its voxels are read: a path that is no file, a header that
declares more voxels than its data can hold, an NRRD header line that is not a field, a detached
NRRD header whose data file is missing. Each raises DataError naming the file.
"""

from __future__ import annotations

import os

import numpy as np

from selal_jax.base.errors import DataError

# zlib's bound on deflate's compression ratio: a gzip stream of n bytes expands to at most
# about 1032 n bytes, so a header declaring more cannot be backed by the file.
DEFLATE_MAX_RATIO = 1032


def not_found(path: str, what: str) -> DataError:
    """The error for a volume path that is no file: a folder given as one is said to be so."""
    if os.path.isdir(path):
        return DataError(f"{path}: is a folder, not a {what} file")
    return DataError(f"{path}: {what} file not found")


def _size_text(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def check_declared_size(
    path: str, shape, dtype, offset: int, held: int, encoding: str = "raw", where: str = ""
) -> None:
    """Refuses a header whose declared voxels cannot be in `held` bytes of data, before a voxel
    is read or allocated (a corrupt header declaring 4096^3 voxels would otherwise allocate
    128 GiB first). `encoding`: 'raw' (the data holds offset + the voxel bytes), 'gzip' (at
    most DEFLATE_MAX_RATIO x `held`), 'ascii' (at least one byte per value); any other
    encoding is not checked. `where`: the data's file when it is not `path`."""
    n_values = int(np.prod([int(s) for s in shape], dtype=np.float64))
    needed = int(offset) + n_values * np.dtype(dtype).itemsize
    bound = {"raw": held, "gzip": held * DEFLATE_MAX_RATIO, "ascii": held}.get(encoding)
    if encoding == "ascii":
        needed = n_values
    if bound is None or needed <= bound:
        return
    where = f" (data file {where})" if where else ""
    compressed = " compressed" if encoding == "gzip" else ""
    raise DataError(
        f"{path}: truncated or corrupt: the header declares "
        f"{'x'.join(str(int(s)) for s in shape)} {np.dtype(dtype).name} voxels "
        f"({_size_text(needed)}), more than its{compressed} data of {_size_text(held)} can "
        f"hold{where}"
    )


def bad_nrrd_header_line(path: str) -> str | None:
    """'line N ... is not ...' for the first line of an NRRD header that is neither a comment
    nor 'field: value' nor 'key:=value' (pynrrd's own error names no line); None if none is."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    lines = head.split(b"\n")
    for number, raw in enumerate(lines[1:-1], 2):  # line 1 is the magic NRRD000X
        line = raw.decode("latin-1").rstrip("\r")
        if not line:
            return None  # the blank line ends the header
        if line.startswith("#") or ": " in line or ":=" in line:
            continue
        return f"line {number} {line[:80]!r} is not 'field: value' (or 'key:=value')"
    return None


def nrrd_data_file(header: dict, path: str, what: str) -> str | None:
    """The file holding an NRRD's voxels: `path` itself, or a detached header's 'data file'
    (which must exist); None for a list of files (not size-checked)."""
    name = header.get("data file", header.get("datafile"))
    if name is None:
        return path
    name = str(name).strip()
    if name.upper().startswith("LIST") or "%" in name or " " in name:
        return None
    data_path = name if os.path.isabs(name) else os.path.join(os.path.dirname(path), name)
    if not os.path.isfile(data_path):
        state = "a folder" if os.path.isdir(data_path) else "missing"
        raise DataError(
            f"{path}: NRRD field 'data file' names {data_path}, which is {state}: the {what}'s "
            "voxels are not there"
        )
    return data_path
