"""`SyntheticPool`: a lazily made pool of slices and labels, of any size, from a small bank."""

from __future__ import annotations

import numpy as np


class SyntheticPool:
    """A pool of n float32 slices [size, size] (or [size, size, K] for K channels), made batch by
    batch from a small bank.

    Indexing with an array of ids returns a fresh array, as indexing a NumPy array or memmap does,
    so `score_pool` and the train step see the same host work as with real data, while the host
    memory stays that of the bank whatever n is. Each bank slice is Gaussian noise (independent
    per channel) plus a bright disc of random centre and radius. Its label is the disc for one
    class; for C classes it is C nested discs (radii r k / C, k = C..1), labelled 1 (outermost)
    to C (innermost), as BraTS nests its regions, and the image brightness is label / C.
    """

    BANK_SIZE = 64

    def __init__(self, n: int, size: int, seed: int = 0, channels: int = 1, num_classes: int = 1):
        self.n, self.size = int(n), int(size)
        self.channels, self.num_classes = int(channels), int(num_classes)
        gen = np.random.default_rng(seed)
        yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
        centres = gen.uniform(0.25, 0.75, (self.BANK_SIZE, 2, 1, 1)).astype(np.float32)
        radii = gen.uniform(0.05, 0.3, (self.BANK_SIZE, 1, 1)).astype(np.float32)
        dist2 = (yy - centres[:, 0]) ** 2 + (xx - centres[:, 1]) ** 2
        c = self.num_classes
        # Pixel label = the number of nested discs it lies in (one disc and {0, 1} for C = 1).
        self._labels = sum(
            (dist2 < (radii * k / c) ** 2).astype(np.float32) for k in range(1, c + 1)
        )
        shape = (self.BANK_SIZE, size, size) + ((self.channels,) if self.channels > 1 else ())
        noise = gen.normal(0.0, 0.3, shape).astype(np.float32)
        signal = self._labels / np.float32(c)
        self._images = (signal if self.channels == 1 else signal[..., None]) + noise

    def __len__(self) -> int:
        return self.n

    def _bank_index(self, ids) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n):
            raise IndexError(f"SyntheticPool: ids outside [0, {self.n})")
        return ids % self.BANK_SIZE

    def __getitem__(self, ids) -> np.ndarray:
        """Images [len(ids), size, size] or [len(ids), size, size, K] float32."""
        return self._images[self._bank_index(ids)]

    def labels(self, ids) -> np.ndarray:
        """Labels [len(ids), size, size] float32 class indices 0..C."""
        return self._labels[self._bank_index(ids)]
