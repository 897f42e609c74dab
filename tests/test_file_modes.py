"""Files and folders written atomically get the modes plain `open` and `os.mkdir` give under the
process's umask (mkstemp's 0600 and mkdtemp's 0700 made every record, report, slice cache and
nnU-Net export unreadable to the rest of a lab's group)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from selal_jax.base import atomic
from selal_jax.data import cache


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o027, 0o002, 0o077])
def mask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_umask_is_read_without_being_changed(mask):
    assert atomic.umask() == mask
    assert atomic.umask() == mask


def test_atomic_writes_have_the_modes_of_plain_writes(tmp_path, mask):
    with open(tmp_path / "plain.txt", "w") as f:  # the reference: what the OS gives
        f.write("x")
    os.mkdir(tmp_path / "plain_folder")

    with atomic.atomic_open(str(tmp_path / "atomic.txt")) as f:
        f.write("x")
    with atomic.atomic_folder(str(tmp_path / "atomic_folder")) as tmp:
        with open(os.path.join(tmp, "inside.txt"), "w") as f:
            f.write("x")

    assert mode(tmp_path / "atomic.txt") == mode(tmp_path / "plain.txt")
    assert mode(tmp_path / "atomic_folder") == mode(tmp_path / "plain_folder")
    assert mode(tmp_path / "atomic_folder" / "inside.txt") == mode(tmp_path / "plain.txt")


def test_the_slice_cache_folder_has_the_mode_of_a_plain_folder(tmp_path, mask):
    os.mkdir(tmp_path / "plain_folder")
    with cache.Builder(str(tmp_path / "cache"), "key", (4, 4), 2) as builder:
        builder.add(0, np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), np.uint8), [0, 1], 1.0)
        final = builder.commit({"version": cache.CACHE_VERSION})
    assert mode(final) == mode(tmp_path / "plain_folder")
