"""The loop's state, what each round's checkpoint holds, and the ways to open it.

`LoopState` is the model state with the labelled set (and a human annotator's imports), the
history of round records and where the loop goes on. Each round's checkpoint holds the model
state and the LoopRecord (run/workdir.py, JSON) it is rebuilt from:

  open_state(parts, ckpt)        a run to continue: the latest round restored after every check
                                 of the config and the dataset, or a fresh state (round 0's
                                 initial labelled set drawn, the model untrained);
  open_finished(config, workdir) a run to read (export-nnunet, query, import-labels): the latest
                                 round's record and labelled set, read-only: no orbax folder is
                                 created or probed, no model state is restored unless asked
                                 (`FinishedRun.variables`), records.jsonl is not rewritten.

Model states are restored into abstract targets (`parts.abstract_state`: jax.eval_shape).
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
from absl import logging

from selal_jax.base.errors import UserError
from selal_jax.core import rng
from selal_jax.core import train as train_lib
from selal_jax.core.train import TrainState
from selal_jax.data.slices import SliceSet
from selal_jax.run import checkpointing, labelled_pool, rounds
from selal_jax.run import parts as parts_lib
from selal_jax.run import workdir as workdir_lib
from selal_jax.run.parts import Parts


class _Labels:
    """The pool views of a state's `labels` (a `LabelledPool`)."""

    labels: labelled_pool.LabelledPool

    @property
    def pool(self) -> SliceSet:
        """The training split the queries draw from, with imported masks in place."""
        return self.labels.slices

    @property
    def labelled(self) -> np.ndarray:
        """[N] bool: the labelled pool ids."""
        return self.labels.labelled

    @property
    def awaiting(self) -> int | None:
        """The round whose query awaits a human annotator's labels (None: none does)."""
        return self.labels.awaiting


@dataclasses.dataclass
class LoopState(_Labels):
    """What the loop carries from round to round.

    Attributes:
      model: the model's TrainState (replicated over the run's mesh).
      labels: the pool, its labelled set and a human annotator's imports (`LabelledPool`).
      history: the records of the completed rounds.
      next_round: the round the loop runs next.
      extend_finished: a finished run resumed with more al.rounds: its last round first gets the
        query it did not need then.
      round0_record: round 0's record when its model came from elsewhere (a sweep's shared round
        0, in `model`), else None.
      batch_warned: train.batch_size above the labelled set was said (once; not checkpointed).
    """

    model: TrainState
    labels: labelled_pool.LabelledPool
    history: list[dict] = dataclasses.field(default_factory=list)
    next_round: int = 0
    extend_finished: bool = False
    round0_record: dict | None = None
    batch_warned: bool = False

    @property
    def fresh(self) -> bool:
        """Nothing is completed yet: round 0 comes next."""
        return self.next_round == 0 and not self.history

    def record(self, parts: Parts, r: int) -> workdir_lib.LoopRecord:
        """The LoopRecord of round r's checkpoint."""
        return workdir_lib.LoopRecord(
            round=r,
            history=self.history,
            config=parts.flat_config,
            fingerprint=parts.splits.fingerprint,
            root_key=workdir_lib.key_data(parts.root),
            pool_size=len(self.pool),
            **self.labels.state(),
        )


def checkpoints(workdir: str) -> str:
    return os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR)


def new_labels(parts: Parts) -> labelled_pool.LabelledPool:
    """The pool with nothing labelled (a human annotator's imports are read from annotations/)."""
    human = parts.config.al.annotator == "human"
    annotations = os.path.join(parts.workdir, workdir_lib.ANNOTATIONS_DIR) if human else None
    return labelled_pool.LabelledPool(parts.splits.train, annotations)


def fresh_state(parts: Parts) -> LoopState:
    """Round 0's state: the initial labelled set (drawn with `rng.initial_set_key`) and the
    untrained model."""
    labels = new_labels(parts)
    al = parts.config.al
    initial = rounds.initial_labelled_set(
        labels.slices,
        int(al.initial_size),
        bool(al.initial_from_positive),
        rng.initial_set_key(parts.root),
    )
    labels.labelled[initial] = True
    return LoopState(parts_lib.initial_state(parts), labels)


def read_record(parts: Parts, loop: dict, where: str):
    """(labels, history) of a checkpoint's loop record, after checking that it was written with
    this config (but for the resume-neutral fields) and dataset; a human annotator's imports are
    checked and overlaid (`LabelledPool.restore`)."""
    record = workdir_lib.LoopRecord.from_json(loop, where)
    workdir_lib.check_compatible(
        record.config,
        record.fingerprint,
        parts.flat_config,
        parts.splits.fingerprint,
        where=parts.workdir,
        allow_change=bool(parts.config.allow_config_change),
        legacy_fingerprint=parts.splits.legacy_fingerprint,
    )
    labels, history = new_labels(parts), list(record.history)
    labels.restore(record, history, parts.workdir)
    return labels, history


def open_state(parts: Parts, ckpt: checkpointing.Checkpointer) -> LoopState:
    """The state to continue the run of `parts` from: its latest round (or config.resume_from),
    restored after every check, or a fresh state when `ckpt` holds no round.

    A resumed run's records.jsonl is brought in step with the checkpoint; with resume_from the
    later rounds' checkpoints are set aside (`set_aside_after`), once every check has passed.
    """
    config, workdir = parts.config, parts.workdir
    ckpt.check_writable()
    latest = ckpt.latest_round()
    if latest is None:
        return fresh_state(parts)
    if not config.resume:
        raise UserError(
            f"{workdir}: holds checkpoints up to round {latest} and config.resume is False; "
            "starting afresh needs an empty workdir"
        )
    restored = ckpt.resume_round(int(config.get("resume_from", -1)))
    model, loop = ckpt.restore_latest(restored, parts_lib.abstract_state(parts))
    labels, history = read_record(parts, loop, f"{ckpt.directory} round {restored}")
    next_round, extend = rounds.resume_point(
        restored, history, int(config.al.rounds), labels.labelled.all(),
        human=labels.annotator is not None, workdir=workdir,
    )  # fmt: skip
    workdir_lib.sync_records(workdir, history)  # after every check
    logging.info(
        "resuming %s after round %d (%d labelled)", workdir, restored, labels.labelled.sum()
    )
    if restored != latest:  # every check first: nothing is moved if one refuses
        set_aside_after(ckpt, workdir, restored)
    return LoopState(model, labels, history, next_round, extend)


def set_aside_after(ckpt: checkpointing.Checkpointer, workdir: str, restored: int) -> None:
    """config.resume_from: the checkpoints of the rounds after `restored` move to
    <workdir>/discarded/<time>-rounds-<first>[-<last>]/; `save_round` deletes them once the next
    round's checkpoint is saved (a failed or killed run leaves them there until then)."""
    later = [r for r in ckpt.all_rounds() if r > restored]
    span = "-".join(str(r) for r in dict.fromkeys((later[0], later[-1])))
    folder = os.path.join(
        workdir, workdir_lib.DISCARDED_DIR, f"{time.strftime('%Y%m%d-%H%M%S')}-rounds-{span}"
    )
    ckpt.set_aside_after(restored, folder)
    logging.warning(
        "resume_from=%d: the checkpoints of rounds %s moved to %s; they are deleted once "
        "round %d is saved again",
        restored,
        later,
        folder,
        restored + 1,
    )


def save_round(parts: Parts, state: LoopState, ckpt: checkpointing.Checkpointer, r: int) -> None:
    """Checkpoints round r (the model state and the LoopRecord) and rewrites records.jsonl."""
    ckpt.save(r, state.model, state.record(parts, r).to_json())
    # resume_from: the rounds set aside (by this run or a failed one before) are redone
    discarded = os.path.join(parts.workdir, workdir_lib.DISCARDED_DIR)
    checkpointing.Checkpointer.delete_set_aside(discarded, r)
    workdir_lib.write_records(parts.workdir, state.history)
    state.next_round = r + 1


@dataclasses.dataclass
class FinishedRun(_Labels):
    """A run's latest checkpoint, opened read-only (`open_finished`).

    Attributes:
      parts: the run's parts (config, data and its settings, model, batcher).
      labels: the labelled set after the latest round, a human annotator's imports overlaid.
      history: the records of every completed round.
      round: the latest checkpointed round.
    """

    parts: Parts
    labels: labelled_pool.LabelledPool
    history: list[dict]
    round: int

    @property
    def splits(self):
        return self.parts.splits

    def variables(self, round_index: int | None = None) -> dict:
        """The model variables ({'params', 'batch_stats'}) of the latest round, or of round
        `round_index` (its checkpoint must be kept: `checkpoint_rounds`), restored read-only
        into the abstract target on the run's devices."""
        ckpt = checkpointing.Checkpointer(checkpoints(self.parts.workdir), read_only=True)
        r = self.round if round_index is None else round_index
        try:
            model, _ = ckpt.restore_latest(r, parts_lib.abstract_state(self.parts))
        finally:
            ckpt.close()
        return model.variables

    def predict(self, ids: np.ndarray, variables: dict) -> np.ndarray:
        """[n, H, W] uint8 predicted class indices (P > 0.5, or the most likely class) of pool
        ids by the model `variables` (`self.variables(r)`), in the run's batches over its
        mesh."""
        batches, model = self.parts.batches, self.parts.model
        variables = batches.replicate(variables)

        def predict(_, images):
            return train_lib.predict_batch(variables, images, model=model)

        return batches.map(predict, ids, self.pool.images)

    def checkpoint_rounds(self) -> list[int]:
        """The rounds whose checkpoints are kept (checkpoint.keep deletes older ones)."""
        ckpt = checkpointing.Checkpointer(checkpoints(self.parts.workdir), read_only=True)
        try:
            return ckpt.all_rounds()
        finally:
            ckpt.close()


def open_finished(config, workdir: str) -> FinishedRun:
    """The run in `workdir` as its latest checkpoint left it, read-only (the module docstring);
    the config and dataset are checked against the checkpoint's as on resume."""
    parts = parts_lib.build(config, workdir)
    ckpt = checkpointing.Checkpointer(checkpoints(workdir), read_only=True)
    try:
        latest = ckpt.latest_round()
        if latest is None:
            raise UserError(f"{workdir}: no checkpoint (run the experiment first)")
        _, loop = ckpt.restore_latest(latest)
    finally:
        ckpt.close()
    labels, history = read_record(parts, loop, f"{ckpt.directory} round {latest}")
    return FinishedRun(parts, labels, history, latest)
