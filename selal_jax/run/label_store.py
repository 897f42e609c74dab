"""Slice masks from a human annotator: one file per round, <workdir>/annotations/round_<r>.npz.

Each file holds the round's queried pool ids (selection order), their masks at the slice size
the model sees (the loader's own preprocessing of the corrected volumes: what training reads),
the same labels at the source resolution (`NativeLabels`: each queried slice's plane of source
voxels, what the nnU-Net export writes) and a JSON note of where they came from (each corrected
file and its SHA-256). Files written before the native planes were kept hold no `native_*`
arrays; they still load (`read_native` gives None). An import writes its file under a temporary
name, fsyncs it and renames it into place: the rename is the import's commit point, so an import
happened completely or not at all. Later rounds' checkpoints record each file's SHA-256; a
resumed run refuses a changed or missing file, since training used it.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from selal_jax.base import atomic
from selal_jax.base.errors import UserError
from selal_jax.data import digests


class LabelStoreError(UserError):
    """An annotation file is missing, changed or malformed; the message names it."""


@dataclasses.dataclass
class NativeLabels:
    """An annotator's labels of queried slices at the source resolution, in selection order.

    Attributes:
      axis: [n] int64, the voxel axis of the source file each plane is cut along.
      index: [n] int64, the plane's index along that axis.
      planes: n arrays [a, b] uint8 of class indices (0 = background): the source voxels of
        the slice, its axes the file's other two in order (`label_volumes.Geometry.file_planes`).
    """

    axis: np.ndarray
    index: np.ndarray
    planes: list[np.ndarray]

    def arrays(self) -> dict[str, np.ndarray]:
        """The file's native_* arrays: the planes flattened one after another, with shapes."""
        shapes = np.asarray([p.shape for p in self.planes], np.int64).reshape(-1, 2)
        flat = [np.asarray(p, np.uint8).ravel() for p in self.planes]
        return {
            "native_axis": np.asarray(self.axis, np.int64),
            "native_index": np.asarray(self.index, np.int64),
            "native_shapes": shapes,
            "native_planes": np.concatenate(flat) if flat else np.zeros(0, np.uint8),
        }

    @classmethod
    def from_arrays(cls, f, path: str) -> NativeLabels:
        shapes = np.asarray(f["native_shapes"], np.int64)
        flat = np.asarray(f["native_planes"], np.uint8)
        ends = np.cumsum(np.prod(shapes, axis=1), dtype=np.int64)
        if shapes.ndim != 2 or (ends[-1] if len(ends) else 0) != len(flat):
            raise LabelStoreError(
                f"{path}: native_planes holds {len(flat)} voxels; native_shapes lists "
                f"{int(ends[-1]) if len(ends) else 0}"
            )
        planes = [
            p.reshape(shape) for p, shape in zip(np.split(flat, ends[:-1]), shapes, strict=True)
        ]
        axis = np.asarray(f["native_axis"], np.int64)
        return cls(axis, np.asarray(f["native_index"], np.int64), planes)


class LabelStore:
    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)

    def path(self, round_index: int) -> str:
        return os.path.join(self.directory, f"round_{round_index:03d}.npz")

    def has(self, round_index: int) -> bool:
        return os.path.isfile(self.path(round_index))

    def write(
        self,
        round_index: int,
        ids: np.ndarray,
        masks: np.ndarray,
        note: dict,
        native: NativeLabels,
    ) -> str:
        """Writes round `round_index`'s labels atomically; returns the file's digest."""
        path = self.path(round_index)
        if os.path.exists(path):
            raise LabelStoreError(f"{path}: round {round_index}'s labels were already imported")
        if len(native.planes) != len(ids):
            raise ValueError(f"{path}: {len(ids)} ids but {len(native.planes)} native planes")
        os.makedirs(self.directory, exist_ok=True)
        with atomic.atomic_open(path, "wb") as f:
            np.savez_compressed(
                f,
                ids=np.asarray(ids, np.int64),
                masks=np.asarray(masks, np.uint8),
                note=np.asarray(json.dumps(note)),
                **native.arrays(),
            )
        return self.digest(round_index)

    def _load(self, round_index: int, take):
        """take(the round's open npz file), with the errors of a missing or damaged file."""
        path = self.path(round_index)
        try:
            with np.load(path) as f:
                return take(f)
        except FileNotFoundError as e:
            raise LabelStoreError(f"{path}: missing (round {round_index}'s imported labels)") from e
        except LabelStoreError:
            raise
        except Exception as e:  # zip and pickle errors of a damaged file
            raise LabelStoreError(f"{path}: unreadable ({type(e).__name__}: {e})") from e

    def read(self, round_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids [n] int64, masks [n, H, W] uint8) of a round."""
        path = self.path(round_index)
        ids, masks = self._load(
            round_index,
            lambda f: (np.asarray(f["ids"], np.int64), np.asarray(f["masks"], np.uint8)),
        )
        if masks.ndim != 3 or len(masks) != len(ids):
            raise LabelStoreError(f"{path}: {len(ids)} ids but masks of shape {masks.shape}")
        return ids, masks

    def read_native(self, round_index: int) -> NativeLabels | None:
        """Round `round_index`'s labels at the source resolution; None for a file written
        before they were kept."""
        path = self.path(round_index)

        def take(f):
            return NativeLabels.from_arrays(f, path) if "native_planes" in f.files else None

        return self._load(round_index, take)

    def digest(self, round_index: int) -> str:
        return digests.sha256_file(self.path(round_index))

    def verify(self, round_index: int, digest: str) -> None:
        """Raises unless round `round_index`'s file exists with this digest."""
        path = self.path(round_index)
        if not os.path.isfile(path):
            raise LabelStoreError(
                f"{path}: missing; the run's checkpoint trained on these imported labels "
                f"(round {round_index}); restore the file or start a new workdir"
            )
        if self.digest(round_index) != digest:
            raise LabelStoreError(
                f"{path}: changed since the run's checkpoint trained on it (SHA-256 differs); "
                "restore the file or start a new workdir"
            )


class OverlaidLabels:
    """[N, H, W] labels: a base array (the dataset's, maybe a read-only memmap) with some rows
    replaced by imported masks, without copying the base.

    Supports what the loop and training do with labels: len, shape, dtype, ndim, and reading rows
    by integer, slice or index array (always a new array).
    """

    def __init__(self, base, ids: np.ndarray, masks: np.ndarray):
        order = np.argsort(ids)
        self.base = base
        self.ids = np.asarray(ids, np.int64)[order]
        self.masks = np.asarray(masks, base.dtype)[order]
        if len(np.unique(self.ids)) != len(self.ids):
            raise ValueError("OverlaidLabels: a pool id is replaced twice")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.base.shape)

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index):
        rows = np.array(self.base[index])
        positions = self._positions(index)
        if np.ndim(positions) == 0:
            k = np.searchsorted(self.ids, positions)
            if k < len(self.ids) and self.ids[k] == positions:
                return self.masks[k].copy()
            return rows
        k = np.clip(np.searchsorted(self.ids, positions), 0, max(len(self.ids) - 1, 0))
        hit = (self.ids[k] == positions) if len(self.ids) else np.zeros(positions.shape, bool)
        rows[hit] = self.masks[k[hit]]
        return rows

    def _positions(self, index) -> np.ndarray:
        """The pool ids `index` reads (an integer, an index array or a slice), as many as the rows
        read: nothing the size of the pool is made for a batch."""
        n = len(self.base)
        if isinstance(index, slice):
            return np.arange(*index.indices(n))
        positions = np.asarray(index)
        if positions.dtype == bool:
            return np.flatnonzero(positions)
        return np.where(positions < 0, positions + n, positions).astype(np.int64)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class HumanAnnotator:
    """The human annotator's state in a run (`al.annotator = human`): the imported rounds (with
    the digest of each file, checked on resume), the round whose query awaits labels, and the
    training labels with every imported round's masks in place of the dataset's.

    Args:
      directory: <workdir>/annotations, the LabelStore's folder.
      dataset_labels: [N, H, W] the pool's labels as the dataset gives them (maybe a memmap).
    """

    def __init__(self, directory: str, dataset_labels):
        self.store = LabelStore(directory)
        self.dataset_labels = dataset_labels
        self.imported: dict[int, str] = {}  # round -> SHA-256 of its annotation file
        self.awaiting: int | None = None

    def restore(self, annotations: dict[str, str], awaiting: int | None) -> None:
        """Takes the checkpoint's state, checking that every imported file is unchanged."""
        for r, digest in sorted((int(r), d) for r, d in annotations.items()):
            self.store.verify(r, digest)
            self.imported[r] = digest
        self.awaiting = awaiting

    def labels(self) -> OverlaidLabels:
        """Training labels: the dataset's, with every imported round's masks in place."""
        parts = [self.store.read(r) for r in sorted(self.imported)]
        shape = self.dataset_labels.shape[1:]
        ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        masks = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, *shape))
        return OverlaidLabels(self.dataset_labels, ids, masks)

    def native_labels(self) -> tuple[dict[int, tuple[int, int, np.ndarray]], list[int]]:
        """({pool id: (file axis, file index, [a, b] plane)} of the imported rounds' labels at the
        source resolution, [imported rounds whose file predates them])."""
        planes, older = {}, []
        for r in sorted(self.imported):
            native = self.store.read_native(r)
            if native is None:
                older.append(r)
                continue
            ids, _ = self.store.read(r)
            if len(native.planes) != len(ids):
                raise LabelStoreError(
                    f"{self.store.path(r)}: {len(ids)} ids but {len(native.planes)} native planes"
                )
            for k, pool_id in enumerate(ids.tolist()):
                planes[pool_id] = (int(native.axis[k]), int(native.index[k]), native.planes[k])
        return planes, older

    def take_import(self, r: int, queried: dict, workdir: str) -> np.ndarray:
        """Marks round r's stored file as imported after checking it answers `queried` (the
        round's record); returns its pool ids."""
        ids, _ = self.store.read(r)
        if queried["round"] != r or [int(i) for i in ids] != queried["queried"]:
            raise LabelStoreError(
                f"{self.store.path(r)}: its ids are not round {r}'s query in {workdir}"
            )
        self.imported[r] = self.store.digest(r)
        self.awaiting = None
        return ids

    def state(self) -> dict:
        """The fields a human-annotator run's LoopRecord stores."""
        return {
            "awaiting_labels": self.awaiting,
            "annotations": {str(k): d for k, d in sorted(self.imported.items())},
        }
