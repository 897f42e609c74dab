"""The pool the queries draw from and which of its slices are labelled, by whom.

A simulated annotator reveals a query's dataset labels at once. A human annotator's query
awaits labels: `accept` stores the imported masks (`label_store`) and applies them, and training
then reads them in place of the dataset's labels for those slices (`slices`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging

from selal_jax.base.errors import UserError
from selal_jax.data.slices import SliceSet
from selal_jax.run import diagnostics, label_store


class LabelledPool:
    """Attributes:
    train: the dataset's training split (its labels as the dataset gives them).
    slices: `train` with every imported round's masks in place of the dataset's labels.
    labelled: [N] bool, the labelled pool ids.
    annotator: the human annotator's state (label_store.HumanAnnotator), or None (simulated).
    """

    def __init__(self, train: SliceSet, annotations_dir: str | None):
        self.train = self.slices = train
        self.labelled = np.zeros(len(train), bool)
        self.annotator = (
            None
            if annotations_dir is None
            else label_store.HumanAnnotator(annotations_dir, train.labels)
        )

    @property
    def awaiting(self) -> int | None:
        """The round whose query awaits a human annotator's labels (None: none does)."""
        return None if self.annotator is None else self.annotator.awaiting

    def state(self) -> dict:
        """The LoopRecord fields of the labelled set (and of a human annotator's imports)."""
        ids = {"labelled_ids": [int(i) for i in np.flatnonzero(self.labelled)]}
        return ids if self.annotator is None else {**ids, **self.annotator.state()}

    def restore(self, record, history: list[dict], workdir: str) -> None:
        """Takes a checkpoint's LoopRecord; a human annotator's imports are checked, overlaid,
        and an awaited round's import, if it happened since, applied to `history[-1]`."""
        self.labelled[np.asarray(record.labelled_ids, np.int64)] = True
        if self.annotator is None:
            return
        self.annotator.restore(record.annotations or {}, record.awaiting_labels)
        self._overlay()
        if self.awaiting is not None and self.annotator.store.has(self.awaiting):
            self.apply_import(self.awaiting, history[-1], workdir)

    def reveal(self, record: dict, ids) -> None:
        """After round `record['round']` queried `ids`: a simulated annotator's labels are
        revealed and their diagnostics added to `record`; a human annotator's query awaits
        labels (the diagnostics are None until imported)."""
        ids = np.asarray(ids, np.int64)
        if self.annotator is not None and len(ids):
            record.update(queried_with_target=None, queried_mean_target_pixels=None)
            self.annotator.awaiting = record["round"]
            return
        self.labelled[ids] = True
        record.update(diagnostics.label_diagnostics(self.slices, ids))

    def apply_import(self, r: int, record: dict, workdir: str) -> None:
        """Round r's stored masks (which must answer `record`'s query): labelled, training
        labels, the record's label diagnostics."""
        ids = self.annotator.take_import(r, record, workdir)
        self._overlay()
        self.labelled[ids] = True
        record.update(diagnostics.label_diagnostics(self.slices, ids))
        logging.info("round %d: %d imported slice labels applied", r, len(ids))

    def accept(
        self,
        r: int,
        ids,
        masks,
        native: label_store.NativeLabels,
        note: dict,
        record: dict,
        workdir: str,
    ) -> None:
        """Stores the annotator's labels of round r's query (ids in selection order): masks
        [n, H, W] at data.size and the same at the source resolution; applies them. The atomic
        write of the store file is the commit point."""
        if self.awaiting != r:
            raise UserError(f"{workdir}: round {r}'s query is not awaiting labels")
        self.annotator.store.write(r, ids, masks, note, native)
        self.apply_import(r, record, workdir)

    def _overlay(self) -> None:
        self.slices = dataclasses.replace(self.train, labels=self.annotator.labels())
