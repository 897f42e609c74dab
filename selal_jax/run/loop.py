"""The active-learning round loop: train, evaluate, score, query, reveal; checkpoint every round.

Knows nothing of flags: `run(config, workdir)` is the whole experiment.

Keys: every key derives from `rng.root_key(config.seed)` by the named steps of `selal_jax.core.rng`
(its docstring draws the tree): init, initial set, and per round fit / score / random / sample.
Nothing depends on how often a key was split before, so a resumed run draws the same numbers as
an uninterrupted one.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import logging

from selal_jax.base import schema
from selal_jax.base.errors import ConfigError, UserError
from selal_jax.core import parallel, rng, selection
from selal_jax.core import train as train_lib
from selal_jax.core.models import build_model, init_variables
from selal_jax.data import loading
from selal_jax.data.slices import SliceSet
from selal_jax.run import checkpointing, labelled_pool, lock, rounds, validation
from selal_jax.run import fit as fit_lib
from selal_jax.run import workdir as workdir_lib


def log_round(record: dict) -> None:
    logging.info(
        "round %d | labelled %d (%.1f%%) | dice %.4f (global %.4f) | val loss %.5f | "
        "train %.1fs | score %.1fs",
        record["round"],
        record["n_labelled"],
        record["pct_labelled"],
        record["dice"],
        record["dice_global"],
        record["val_loss"],
        record["train_seconds"],
        record["score_seconds"],
    )


@rng.with_classic_threefry
def run(config, workdir: str, round0_dir: str | None = None) -> list[dict]:
    """Runs (or resumes) the experiment; returns the per-round records.

    With `round0_dir` (see `sweep.train_shared_round0`), a fresh run takes its round-0 model and
    metrics from there instead of training them, so that runs of different strategies share them.
    """
    with lock.hold(workdir):
        experiment = Experiment.open(config, workdir, round0_dir)
        try:
            history = experiment.run()
        except BaseException as e:
            checkpointing.close_quietly(experiment, e)
            raise
        experiment.close()
    return history


def awaiting_message(history: list[dict], workdir: str) -> str | None:
    """The next steps of a human-annotator run whose last query awaits labels, else None."""
    last = history[-1] if history else {}
    if not last.get("queried") or last.get("queried_with_target", 0) is not None:
        return None  # no query, or its labels are known
    r, w = last["round"], workdir
    return (
        f"round {r}: the query of {len(last['queried'])} slices awaits labels. "
        f"Export it with `python launch.py query --workdir={w}`, correct the label volumes, "
        f"import them with `python launch.py import-labels --workdir={w} --labels=DIR`, "
        "then run again to continue with the next round."
    )


class Experiment:
    """One active-learning run: its data, model, checkpoints, labelled set and history.

    `Experiment.open(config, workdir)` loads the data; construction builds the model and
    restores the last completed round from `workdir` (if any); `run` then executes the remaining
    rounds. Each round r is `train_round` -> `query_round` -> `commit_round` (record + checkpoint).
    `pool` is the training split the queries draw from, its labels overlaid with a human
    annotator's imported masks.

    With `al.annotator = "human"`, `commit_round` does not reveal the query: the checkpoint
    records it as awaiting labels and `run` stops. `accept_labels` (called by
    `annotate.import_labels`) stores the annotator's masks for it; a later construction applies
    them, and training reads the imported masks instead of the dataset's labels for those slices.
    """

    @classmethod
    def open(cls, config, workdir: str, round0_dir: str | None = None, *, with_model=True):
        """Validates the config and loads the data. Without `with_model` no model is built and
        only the checkpoint's record is restored (state and model are None): for the verbs that
        read or add labels."""
        validation.validate_config(config)
        os.makedirs(workdir, exist_ok=True)
        # Multi-host: process 0 writes the synthetic cohort and the slice cache, the rest read them.
        splits = parallel.primary_first(lambda: loading.load_dataset(config.data, workdir))
        return cls(config, workdir, splits, round0_dir, with_model=with_model)

    def __init__(self, config, workdir: str, splits, round0_dir=None, *, with_model=True):
        config = validation.fit_to_data(config, splits)  # before anything is built or trained
        self.config, self.workdir, self.splits = config, workdir, splits
        self.batch_warned = False  # train.batch_size above the labelled set: said once
        train = splits.train
        human = config.al.annotator == "human"
        if not human and not train.has_label.all():
            unlabelled = sorted({train.cases[s] for s in train.subject[~train.has_label]})
            raise ConfigError(
                f"{len(unlabelled)} training cases have no labels, or slices without (e.g. "
                f"{unlabelled[0]}), and "
                "config field al.annotator is 'simulated', which reveals the dataset's labels; "
                "use --config.al.annotator=human"
            )
        annotations = os.path.join(workdir, workdir_lib.ANNOTATIONS_DIR) if human else None
        self.labels = labelled_pool.LabelledPool(train, annotations)
        self.root = rng.root_key(int(config.seed))
        self.model = self.state = self.tx = self.mesh = None
        if with_model:
            self._build_model()
        self.flat_config = schema.flatten(config)
        self.ckpt = checkpointing.Checkpointer(
            os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR), int(config.checkpoint.keep)
        )
        self.history: list[dict] = []
        self.next_round = 0
        self.round0_record: dict | None = None
        self.extend_finished = False  # resumed a finished run with al.rounds raised
        self.ckpt.check_writable()
        latest = self.ckpt.latest_round()
        if latest is not None and not config.resume:
            raise UserError(
                f"{workdir}: holds checkpoints up to round {latest} and config.resume is False; "
                "starting afresh needs an empty workdir"
            )
        if latest is not None:
            restored = self.ckpt.resume_round(int(config.get("resume_from", -1)))
            self._restore(restored)  # every check first: nothing is moved if one refuses
            if restored != latest:
                self._set_aside_later_rounds(restored)
        else:
            initial = rounds.initial_labelled_set(
                self.pool,
                int(config.al.initial_size),
                bool(config.al.initial_from_positive),
                rng.initial_set_key(self.root),
            )
            self.labelled[initial] = True
            if round0_dir is not None:
                from selal_jax.verbs import sweep  # sweep runs this module's `run`

                self.state, self.round0_record = sweep.take_round0(round0_dir, self)

    @property
    def pool(self) -> SliceSet:
        """The training split the queries draw from, with imported masks in place."""
        return self.labels.slices

    @property
    def labelled(self) -> np.ndarray:
        return self.labels.labelled

    @property
    def awaiting(self) -> int | None:
        return self.labels.awaiting

    def _build_model(self) -> None:
        config, pool = self.config, self.pool
        self.model = build_model(config.model, pool.num_classes)
        self.tx = train_lib.make_optimizer(float(config.train.learning_rate))
        key = rng.init_key(self.root)
        variables = init_variables(self.model, key, *pool.shape, channels=pool.channels)
        self.state = train_lib.create_train_state(variables, self.tx)
        self.mesh = parallel.default_mesh()  # None with one device: the single-device path
        if self.mesh is not None:  # replicated; checkpoints are then restored replicated too
            self.state = parallel.put_replicated(self.mesh, self.state)

    def _restore(self, latest: int) -> None:
        config = self.config
        abstract = None if self.state is None else checkpointing.abstract_like(self.state)
        state, loop = self.ckpt.restore_latest(latest, abstract)
        self.state = state
        record = workdir_lib.LoopRecord.from_json(loop, f"{self.ckpt.directory} round {latest}")
        workdir_lib.check_compatible(
            record.config,
            record.fingerprint,
            self.flat_config,
            self.splits.fingerprint,
            where=self.workdir,
            allow_change=bool(config.allow_config_change),
            legacy_fingerprint=self.splits.legacy_fingerprint,
        )
        self.history = list(record.history)
        self.labels.restore(record, self.history, self.workdir)
        self.next_round, self.extend_finished = rounds.resume_point(
            latest, self.history, int(config.al.rounds), self.labelled.all(),
            human=self.labels.annotator is not None, workdir=self.workdir,
        )  # fmt: skip
        workdir_lib.sync_records(self.workdir, self.history)  # after every check
        logging.info(
            "resuming %s after round %d (%d labelled)", self.workdir, latest, self.labelled.sum()
        )

    def _set_aside_later_rounds(self, restored: int) -> None:
        """config.resume_from: the checkpoints of the rounds after `restored` move to
        <workdir>/discarded/<time>-rounds-<first>[-<last>]/; `_save` deletes them once the next
        round's checkpoint is saved (a failed or killed run leaves them there until then)."""
        later = [r for r in self.ckpt.all_rounds() if r > restored]
        span = "-".join(str(r) for r in dict.fromkeys((later[0], later[-1])))
        folder = os.path.join(
            self.workdir,
            workdir_lib.DISCARDED_DIR,
            f"{time.strftime('%Y%m%d-%H%M%S')}-rounds-{span}",
        )
        self.ckpt.set_aside_after(restored, folder)
        logging.warning(
            "resume_from=%d: the checkpoints of rounds %s moved to %s; they are deleted once "
            "round %d is saved again",
            restored,
            later,
            folder,
            restored + 1,
        )

    def accept_labels(self, r: int, ids: np.ndarray, masks: np.ndarray, native, note: dict) -> None:
        """A human annotator's labels of round r's query: masks [n, H, W] and the source
        resolution's `label_store.NativeLabels` (`LabelledPool.accept`)."""
        self.labels.accept(r, ids, masks, native, note, self.history[-1], self.workdir)
        workdir_lib.write_records(self.workdir, self.history)

    def train_round(self, r: int) -> dict:
        """Fine-tunes on the labelled set and evaluates on the test split; returns the record."""
        config, batch = self.config, int(self.config.train.eval_batch_size)
        if config.train.reset_optimizer:
            self.state = self.state.replace(opt_state=self.tx.init(self.state.params))
        labelled_ids = np.flatnonzero(self.labelled)
        if not self.batch_warned:
            self.batch_warned = validation.warn_batch_beyond_labelled(config, len(labelled_ids), r)
        if r == 0:  # the yardstick of check_divergence, kept in round 0's record
            untrained = fit_lib.validation_loss(
                self.model,
                self.state.variables,
                self.splits.val,
                parallel.Batcher(batch, self.mesh),
            )
        else:  # None for runs recorded without it
            untrained = self.history[0].get("untrained_val_loss") if self.history else None
        key = rng.fit_key(rng.round_key(self.root, r))
        self.state, fit = fit_lib.fit(
            self.model, self.state, self.tx, self.pool, labelled_ids, self.splits.val, key,
            config.train, round_index=r, mesh=self.mesh,
        )  # fmt: skip
        if untrained is not None:
            fit_lib.check_divergence(r, fit["best_val_loss"], untrained)
        workdir_lib.write_epoch_metrics(self.workdir, r, fit["history"])
        variables = self.state.variables
        return rounds.round_record(
            r,
            labelled_ids,
            self.pool,
            fit,
            rounds.test_metrics(self.model, variables, self.splits.test, batch, self.mesh, r),
            rounds.case_metrics(config, self.model, variables, self.splits, self.workdir, r),
            untrained,
            (self.splits.target_slices or {}).get("val"),
        )

    def query_round(self, r: int) -> selection.Query | None:
        """Scores the unlabelled pool and chooses the round's query (None after the last round
        or when the pool is exhausted)."""
        if r >= int(self.config.al.rounds) or self.labelled.all():
            return None
        key = rng.round_key(self.root, r)
        k = int(self.config.al.query_size)
        variables = self.state.variables
        return rounds.query(
            self.config, self.model, variables, self.pool, self.labelled, key, k, r, mesh=self.mesh
        )

    def commit_round(self, record: dict, q: selection.Query | None) -> dict:
        """Reveals the query's labels (a human annotator's come later), appends the record and
        checkpoints the round."""
        record = self._with_query(record, q)
        self.history.append(record)
        self._save(record["round"])
        return record

    def _with_query(self, record: dict, q: selection.Query | None) -> dict:
        """The round's record completed with its query and diagnostics; reveals the query's
        labels (simulated annotator) or marks it as awaiting them (human)."""
        variables = self.state.variables
        record = {**record, **rounds.query_fields(self.config, self.model, variables, self.pool, q)}
        self.labels.reveal(record, [] if q is None else q.ids)
        return record

    def _save(self, r: int) -> None:
        """Checkpoints round r (model state and the LoopRecord) and rewrites records.jsonl."""
        loop_record = workdir_lib.LoopRecord(
            round=r,
            history=self.history,
            config=self.flat_config,
            fingerprint=self.splits.fingerprint,
            root_key=workdir_lib.key_data(self.root),
            pool_size=len(self.pool),
            **self.labels.state(),
        )
        self.ckpt.save(r, self.state, loop_record.to_json())
        # resume_from: the rounds set aside (by this run or a failed one before) are redone
        discarded = os.path.join(self.workdir, workdir_lib.DISCARDED_DIR)
        checkpointing.Checkpointer.delete_set_aside(discarded, r)
        workdir_lib.write_records(self.workdir, self.history)
        self.next_round = r + 1
        log_round(self.history[-1])

    def _extend_finished_run(self) -> None:
        """A finished run resumed with more rounds: its last round gets the query it did not need
        then (from the same model and key, so as an uninterrupted longer run would have drawn
        it). It is checkpointed with the next round; a crash before that just redoes it."""
        record = self.history.pop()
        base = {k: v for k, v in record.items() if k not in rounds.QUERY_FIELDS}
        start = time.time()
        q = self.query_round(record["round"])
        base["score_seconds"] = time.time() - start
        self.history.append(self._with_query(base, q))

    def run(self) -> list[dict]:
        if self.extend_finished:
            self._extend_finished_run()
        for r in range(self.next_round, int(self.config.al.rounds) + 1):
            if self.awaiting is not None:
                logging.warning("%s", awaiting_message(self.history, self.workdir))
                break
            if r == 0 and self.round0_record is not None:
                record = dict(self.round0_record)  # shared round-0 model (already in self.state)
            else:
                record = self.train_round(r)
            score_start = time.time()
            q = self.query_round(r)
            record["score_seconds"] = time.time() - score_start
            self.commit_round(record, q)
            if q is None:
                break  # last round, or the pool is exhausted
        return self.history

    def close(self) -> None:
        self.ckpt.close()
