"""label_store.OverlaidLabels: the dataset's labels with imported masks in place, read a batch at a
time without anything the size of the pool (issue 28)."""

import numpy as np
import pytest

from selal_jax.run import label_store


class HugeLabels:
    """[n, 2, 2] uint8 labels of a pool far too large for memory: row i is filled with i % 5.
    Anything that allocates per pool slice (np.arange(len(base))) fails on it."""

    shape, dtype, ndim = (10**13, 2, 2), np.dtype(np.uint8), 3

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, index):
        rows = np.asarray(index, np.int64)
        return np.broadcast_to((rows % 5).astype(np.uint8)[..., None, None], (*rows.shape, 2, 2))


def overlaid(base, ids):
    masks = (
        np.full((len(ids), 2, 2), 9, np.uint8) + np.arange(len(ids), dtype=np.uint8)[:, None, None]
    )
    return label_store.OverlaidLabels(base, np.asarray(ids), masks)


@pytest.mark.parametrize("index", [[3, 10**12, 7, 3], np.array([10**13 - 1, 0]), 10**12 + 7])
def test_rows_of_a_huge_pool_are_read_without_a_pool_sized_array(index):
    labels = overlaid(HugeLabels(), [7, 10**12, 10**13 - 1])
    got = labels[index]
    rows = np.atleast_1d(np.asarray(index, np.int64))
    imported = {7: 9, 10**12: 10, 10**13 - 1: 11}  # the masks given with these ids
    want = np.stack([np.full((2, 2), imported.get(int(i), int(i) % 5), np.uint8) for i in rows])
    np.testing.assert_array_equal(got, want if np.ndim(index) else want[0])


def test_rows_match_a_copy_with_the_masks_written_in():
    """Every index form the loop uses (array, slice, negative, scalar) against a NumPy copy."""
    base = np.arange(8 * 4, dtype=np.uint8).reshape(8, 2, 2) % 3
    labels = overlaid(base, [5, 1])
    copy = base.copy()
    copy[5], copy[1] = 9, 10  # the masks given with ids 5 and 1
    for index in ([5, 0, 1, 5], np.array([-1, -3, 2]), slice(2, 7), slice(None, None, -2), -3, 1):
        np.testing.assert_array_equal(labels[index], copy[index])
    np.testing.assert_array_equal(np.asarray(labels), copy)
