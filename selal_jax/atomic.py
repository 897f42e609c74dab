"""Atomic file writes: a temporary file in the same folder, fsync, then rename into place.

A crash or an error leaves either the old file or the new one, never a half-written one (and no
temporary file behind, except after a hard kill, where a `.tmp-*` file is left and never read).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w"):
    """`with atomic_open(path, "wb") as f: ...` writes `path` atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]  # np.save/np.savez keep a name's own extension
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_folder(path: str, prefix: str = ".tmp-", replace: bool = False):
    """`with atomic_folder(path) as tmp: ...` fills a temporary sibling folder and renames it to
    `path` when the block succeeds; on an error the temporary folder is removed and `path` is
    left as it was. An existing empty `path` is replaced; a non-empty one only with `replace`
    (an incomplete earlier attempt), else os.rmdir refuses it."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield tmp
        if os.path.isdir(path):
            shutil.rmtree(path) if replace else os.rmdir(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
