"""The active-learning round loop: train, evaluate, score, query, reveal; checkpoint every round.

Knows nothing of flags: `run(config, workdir)` is the whole experiment.

Keys: root = key(config.seed); round r uses fold_in(root, r), and inside it fold_in(round_key,
FIT) for training, fold_in(round_key, SCORE) for MC dropout, fold_in(round_key, RANDOM) for random
sampling (random_predicted: the same key, and fold_in(that key, 1) for its top-up). Nothing
depends on how often a key was split before, so a resumed run draws the same numbers as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import jax
import numpy as np
from absl import logging
from ml_collections import config_dict

from selal_jax import (
    atomic,
    checkpointing,
    diagnostics,
    evaluation,
    faults,
    label_store,
    lock,
    parallel,
    report,
    rng,
    scoring,
    selection,
)
from selal_jax import train as train_lib
from selal_jax import workdir as workdir_lib
from selal_jax.data import loading
from selal_jax.data.slices import SliceSet
from selal_jax.models import DTYPES, build_model, init_variables
from selal_jax.progress import Progress
from selal_jax.train import (
    class_dice_scores,
    create_train_state,
    dice_scores,
    evaluate,
    fit,
    make_optimizer,
    mean_loss,
)

# fold_in tags (distinct from any round index used with the same parent key).
INIT_TAG = 2**31 - 1
INITIAL_SET_TAG = 2**31 - 2
FIT, SCORE, RANDOM = 0, 1, 2

RECORDS_FILE = report.RECORDS_FILE
SUPERVISED_FILE = report.SUPERVISED_FILE
# Fields in which runs sharing one round-0 model may differ (they act after round 0's training).
ROUND0_NEUTRAL_KEYS = (
    "al.strategy",
    "al.mode",
    "al.convention",
    "al.aggregation",
    "al.merge",
    "al.target_threshold",
    "al.boundary_width",
    "al.mc_passes",
    "al.reuse_encoder",
    "al.query_size",
    "al.class_balanced",
)
ROUND0_CHECKPOINT = "round0"
EMBEDDINGS_FILE = report.EMBEDDINGS_FILE

# Record fields that commit_round adds after training (the query and its diagnostics).
QUERY_FIELDS = (
    "score_seconds",
    "strategy",
    "mode",
    "seed",
    "queried",
    "queried_streams",
    "queried_scores",
    "queried_with_target",
    "queried_mean_target_pixels",
    "queried_mean_pred_target_pixels",
    "queried_mean_pred_boundary_pixels",
    "queried_redundancy",
)
ANNOTATIONS_DIR = "annotations"  # al.annotator = human: imported masks, one file per round
ANNOTATORS = ("simulated", "human")
# Config fields that may change between a run and its resumption without changing any result
# of the completed rounds.
RESUME_NEUTRAL_KEYS = (
    # Evaluation adds record fields; it does not change training or selection.
    "eval.cases",
    "eval.tolerance_mm",
    "eval.save_predictions",
    "sweep.runs",
    "sweep.seeds",
    "sweep.supervised",
    "resume",
    "allow_config_change",
    "al.rounds",
    "checkpoint.keep",
    "train.eval_batch_size",
    "resume_from",
)
ADDED_KEYS = workdir_lib.ADDED_KEYS


def validate_config(config) -> None:
    """The one config check every verb runs before any work: data fields first, then training,
    model, checkpoint and active-learning fields. Raises ValueError naming the field, the value
    and what is allowed."""
    loading.validate_data_config(config.data)
    train, model = config.train, config.model
    for field, value in (
        ("train.max_epochs", train.max_epochs),
        ("train.patience", train.patience),
        ("train.min_steps_per_epoch", train.min_steps_per_epoch),
        ("checkpoint.keep", config.checkpoint.keep),
    ):
        if int(value) < 1:
            raise ValueError(f"config field {field}: must be >= 1, got {value}")
    lr = float(train.learning_rate)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"config field train.learning_rate: must be > 0 and finite, got {lr}")
    if not 0 <= float(model.dropout_rate) < 1:
        raise ValueError(
            f"config field model.dropout_rate: must be in [0, 1), got {model.dropout_rate}"
        )
    if not 0 < float(model.head_bias_prior) < 1:
        raise ValueError(
            f"config field model.head_bias_prior: must be in (0, 1), got {model.head_bias_prior}"
        )
    if model.dtype not in DTYPES:
        raise ValueError(
            f"config field model.dtype: expected one of {tuple(DTYPES)}, got {model.dtype!r}"
        )
    al = config.al
    selection.validate_options(
        al.strategy,
        al.mode,
        al.convention,
        al.aggregation,
        al.merge,
        class_balanced=bool(al.class_balanced),
    )
    if config.train.loss not in train_lib.LOSSES:
        raise ValueError(
            f"config field train.loss: expected one of {train_lib.LOSSES}, got "
            f"{config.train.loss!r}"
        )
    if al.annotator not in ANNOTATORS:
        raise ValueError(
            f"config field al.annotator: expected one of {ANNOTATORS}, got {al.annotator!r}"
        )
    for field, value in (
        ("al.query_size", al.query_size),
        ("al.initial_size", al.initial_size),
        ("train.batch_size", config.train.batch_size),
        ("train.eval_batch_size", config.train.eval_batch_size),
        ("al.mc_passes", al.mc_passes),
    ):
        if int(value) < 1:
            raise ValueError(f"config field {field}: must be >= 1, got {value}")
    if int(al.rounds) < 0:
        raise ValueError(f"config field al.rounds: must be >= 0, got {al.rounds}")
    if int(config.get("resume_from", -1)) < -1:
        raise ValueError(
            f"config field resume_from: must be -1 (latest) or a round >= 0, got "
            f"{config.resume_from}"
        )
    if not 0 < float(al.target_threshold) < 1:
        raise ValueError(
            f"config field al.target_threshold: must be in (0, 1), got {al.target_threshold}"
        )
    if not 0 < float(al.boundary_width) <= 0.5:
        raise ValueError(
            f"config field al.boundary_width: must be in (0, 0.5], got {al.boundary_width}"
        )
    h, w = (int(s) for s in config.data.size)
    factor = 2 ** int(config.model.depth)
    if h % factor or w % factor:
        raise ValueError(
            f"config field data.size: {h}x{w} must be divisible by 2**model.depth = {factor}"
        )
    parallel.check_batch_sizes(config.train)  # global batch sizes split over jax.device_count()


def initial_labelled_set(train: SliceSet, size: int, from_positive: bool, key) -> np.ndarray:
    """Initial labelled pool ids, drawn with `key` from the slices that have labels; from slices
    with target if asked.

    If fewer slices have target than `size`, all of them are taken and the rest is drawn from
    the other slices (with a warning).
    """
    n = len(train)
    with_label = np.flatnonzero(train.has_label)  # every slice, unless some cases are unlabelled
    if size > len(with_label):
        what = "training slices" if len(with_label) == n else "training slices with labels"
        raise ValueError(
            f"config field al.initial_size: {size} exceeds the {len(with_label)} {what}"
        )
    if not from_positive:
        perm = np.asarray(jax.random.permutation(key, len(with_label)))
        return np.sort(with_label[perm[:size]])
    positive = np.flatnonzero(train.labels.reshape(n, -1).any(axis=1))  # unlabelled: all 0
    negative = np.setdiff1d(with_label, positive)
    k_pos, k_neg = jax.random.split(key)
    if len(positive) >= size:
        return np.sort(positive[np.asarray(jax.random.permutation(k_pos, len(positive)))[:size]])
    logging.warning(
        "only %d training slices contain target; the initial set of %d adds %d without target",
        len(positive),
        size,
        size - len(positive),
    )
    extra = negative[
        np.asarray(jax.random.permutation(k_neg, len(negative)))[: size - len(positive)]
    ]
    return np.sort(np.concatenate([positive, extra]))


class _ScoringProgress(Progress):
    """Progress display that is also the 'score' fault-injection point."""

    def __init__(self, round_index: int, total: int):
        super().__init__("scoring pool", total=total, unit="slices")
        self.round_index = round_index

    def update(self, done: int, info: str = "") -> None:
        faults.checkpoint("score", self.round_index)
        super().update(done, info)


def query(
    config,
    model,
    variables,
    train: SliceSet,
    labelled: np.ndarray,
    round_key,
    k: int,
    round_index: int = 0,
    mesh=None,
) -> selection.Query:
    """Scores the unlabelled pool and returns the round's query."""
    al = config.al
    candidates = np.flatnonzero(~labelled)
    if al.strategy == "random":
        return selection.select_random(candidates, k, jax.random.fold_in(round_key, RANDOM))
    if al.strategy == "random_predicted":
        predicted = diagnostics.predicted_target_counts(
            model,
            variables,
            train.images,
            candidates,
            int(config.train.eval_batch_size),
            float(al.target_threshold),
        )
        return selection.select_random_predicted(
            candidates, predicted, k, jax.random.fold_in(round_key, RANDOM)
        )
    passes = int(al.mc_passes) if al.strategy in scoring.MC_STRATEGIES else 1
    progress = _ScoringProgress(round_index, len(candidates))
    stats = scoring.score_pool(
        model,
        variables,
        train.images,
        candidates,
        jax.random.fold_in(round_key, SCORE),
        strategy=al.strategy,
        convention=al.convention,
        target_threshold=float(al.target_threshold),
        boundary_width=float(al.boundary_width),
        passes=passes,
        batch_size=int(config.train.eval_batch_size),
        reuse_encoder=bool(al.reuse_encoder),
        progress=progress,
        mesh=mesh,
    )
    progress.close()
    return selection.select(
        stats,
        candidates,
        k,
        mode=al.mode,
        convention=al.convention,
        aggregation=al.aggregation,
        merge=al.merge,
        class_balanced=bool(al.class_balanced),
    )


def flatten_config(config) -> dict:
    out = {}

    def walk(prefix, node):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if hasattr(value, "items"):
                walk(name + ".", value)
            else:
                out[name] = list(value) if isinstance(value, tuple) else value

    walk("", config.to_dict())
    return out


def config_differences(stored: dict, current: dict) -> list[str]:
    keys = sorted(set(stored) | set(current))
    stored = {**ADDED_KEYS, **stored}
    return [
        k
        for k in keys
        if k not in RESUME_NEUTRAL_KEYS and stored.get(k, "<absent>") != current.get(k, "<absent>")
    ]


def stored_config(workdir: str) -> config_dict.ConfigDict:
    """The config snapshot of the run in `workdir` (from its latest checkpoint)."""
    lock.check_workdir(workdir, create=False)  # a mistyped --workdir is not created
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        latest = ckpt.latest_round()
        if latest is None:
            raise ValueError(f"{workdir}: no checkpoint (run the experiment first)")
        flat = ckpt.restore_loop(latest)["config"]
    finally:
        ckpt.close()
    nested: dict = {}
    for name, value in {**ADDED_KEYS, **flat}.items():
        *parents, leaf = name.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config_dict.ConfigDict(nested)


def run(config, workdir: str, round0_dir: str | None = None) -> list[dict]:
    """Runs (or resumes) the experiment; returns the per-round records.

    With `round0_dir` (see `train_shared_round0`), a fresh run takes its round-0 model and
    metrics from there instead of training them, so that runs of different strategies share them.
    """
    with rng.classic_threefry(), lock.hold(workdir):
        experiment = Experiment(config, workdir, round0_dir)
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


def summary_text(history: list[dict], workdir: str) -> str:
    """What `launch.py run` prints at the end: the round table and any awaited next step."""
    message = awaiting_message(history, workdir)
    return report.round_table(history) + (f"\n{message}" if message else "")


class Experiment:
    """One active-learning run: its data, model, checkpoints, labelled set and history.

    Construction loads the data, builds the model and restores the last completed round from
    `workdir` (if any); `run` then executes the remaining rounds. Each round r is
    `train_round` -> `query_round` -> `commit_round` (record + checkpoint).

    With `al.annotator = "human"`, `commit_round` does not reveal the query: the checkpoint
    records it as awaiting labels (`awaiting`) and `run` stops. `accept_labels` (called by
    `annotate.import_labels`) stores the annotator's masks for it; a later construction applies
    them, and training reads imported masks instead of the dataset's labels for those slices.
    """

    def __init__(self, config, workdir: str, round0_dir: str | None = None):
        validate_config(config)
        os.makedirs(workdir, exist_ok=True)
        self.config, self.workdir = config, workdir
        # Multi-host: process 0 writes the synthetic cohort and the slice cache, the rest read them.
        self.splits = parallel.primary_first(lambda: loading.load_dataset(config.data, workdir))
        self.train = self.splits.train
        self.human = config.al.annotator == "human"
        if not self.human and not self.train.has_label.all():
            unlabelled = sorted(
                {self.train.cases[s] for s in self.train.subject[~self.train.has_label]}
            )
            raise ValueError(
                f"{len(unlabelled)} training cases have no labels (e.g. {unlabelled[0]}) and "
                "config field al.annotator is 'simulated', which reveals the dataset's labels; "
                "use --config.al.annotator=human"
            )
        self.dataset_labels = self.train.labels
        self.store = label_store.LabelStore(os.path.join(workdir, ANNOTATIONS_DIR))
        self.imported: dict[int, str] = {}  # human: round -> digest of its annotation file
        self.awaiting: int | None = None  # human: the round whose query awaits labels
        self.model = build_model(config.model, self.train.num_classes)
        self.tx = make_optimizer(float(config.train.learning_rate))
        self.root = jax.random.key(int(config.seed))
        variables = init_variables(
            self.model,
            jax.random.fold_in(self.root, INIT_TAG),
            *self.train.shape,
            channels=self.train.channels,
        )
        self.state = create_train_state(variables, self.tx)
        self.mesh = parallel.default_mesh()  # None with one device: the single-device path
        if self.mesh is not None:  # replicated; checkpoints are then restored replicated too
            self.state = parallel.put_replicated(self.mesh, self.state)
        self.flat_config = flatten_config(config)
        self.ckpt = checkpointing.Checkpointer(
            os.path.join(workdir, "checkpoints"), int(config.checkpoint.keep)
        )
        self.labelled = np.zeros(len(self.train), bool)
        self.history: list[dict] = []
        self.next_round = 0
        self.round0_record: dict | None = None
        self.extend_finished = False  # resumed a finished run with al.rounds raised
        self.ckpt.check_writable()
        latest = self.ckpt.latest_round()
        if latest is not None and not config.resume:
            raise ValueError(
                f"{workdir}: holds checkpoints up to round {latest} and config.resume is False; "
                "starting afresh needs an empty workdir"
            )
        if latest is not None:
            latest = self._resume_round(latest)
            loop = self._restore(latest)
            if self.human:
                self._restore_annotations(loop)
        else:
            initial = initial_labelled_set(
                self.train,
                int(config.al.initial_size),
                bool(config.al.initial_from_positive),
                jax.random.fold_in(self.root, INITIAL_SET_TAG),
            )
            self.labelled[initial] = True
            if round0_dir is not None:
                self._take_round0(round0_dir)

    def _take_round0(self, round0_dir: str) -> None:
        state, stored = load_round0(round0_dir, self.state)
        changed = [
            k
            for k in config_differences(stored["config"], self.flat_config)
            if k not in ROUND0_NEUTRAL_KEYS
        ]
        if changed or stored["fingerprint"] != self.splits.fingerprint:
            raise ValueError(
                f"{round0_dir}: its round-0 model was trained with a different config "
                f"({', '.join(changed) or 'dataset fingerprint'}); it cannot be shared with "
                f"{self.workdir}"
            )
        if stored["labelled_ids"] != [int(i) for i in np.flatnonzero(self.labelled)]:
            raise ValueError(f"{round0_dir}: its initial labelled set differs from this run's")
        self.state, self.round0_record = state, dict(stored["record"])

    def _resume_round(self, latest: int) -> int:
        """The round to restore: the latest, or config.resume_from (later rounds discarded)."""
        wanted = int(self.config.get("resume_from", -1))
        if wanted < 0 or wanted == latest:
            return latest
        rounds = self.ckpt.all_rounds()
        if wanted not in rounds:
            raise ValueError(
                f"config field resume_from: {self.ckpt.directory} holds no checkpoint of round "
                f"{wanted} (rounds {rounds})"
            )
        discarded = self.ckpt.discard_after(wanted)
        logging.warning(
            "resume_from=%d: discarded the checkpoints of rounds %s in %s",
            wanted,
            discarded,
            self.ckpt.directory,
        )
        return wanted

    def _restore_checkpoint(self, latest: int) -> dict:
        """Restores round `latest`; a damaged checkpoint's error says how to resume from the
        round before it."""
        try:
            self.state, loop = self.ckpt.restore(latest, checkpointing.abstract_like(self.state))
        except checkpointing.CheckpointError as e:
            earlier = [r for r in self.ckpt.all_rounds() if r < latest]
            how = (
                f"to resume from round {earlier[-1]}, the previous checkpoint, run again with "
                f"--config.resume_from={earlier[-1]} (the later rounds are discarded and redone)"
                if earlier
                else "no earlier checkpoint is kept: start afresh in a new workdir"
            )
            raise checkpointing.CheckpointError(
                f"{e} -- the newest checkpoint, round {latest}, is damaged; {how}"
            ) from e
        return loop

    def _rebuild_records(self) -> None:
        """records.jsonl from the checkpoint's history when it is missing or out of step (a
        deleted file, or one behind or ahead of the restored round)."""
        path = os.path.join(self.workdir, RECORDS_FILE)
        if os.path.exists(path):
            with open(path) as f:
                if sum(1 for line in f if line.strip()) == len(self.history):
                    return
        logging.warning("%s: rebuilt from the checkpoint's %d rounds", path, len(self.history))
        checkpointing.write_json_atomic(path, self.history, lines=True)

    def _restore(self, latest: int) -> dict:
        config, workdir = self.config, self.workdir
        loop = self._restore_checkpoint(latest)
        changed = config_differences(loop["config"], self.flat_config)
        if "data.root" in changed and loop["fingerprint"] == self.splits.fingerprint:
            # The dataset moved: the same files (relative paths, sizes, mtimes) at a new root.
            logging.info(
                "dataset moved from %s to %s (same files)",
                loop["config"].get("data.root"),
                self.flat_config.get("data.root"),
            )
            changed.remove("data.root")
        if changed and not config.allow_config_change:
            details = ", ".join(
                f"{k}: {loop['config'].get(k)!r} -> {self.flat_config.get(k)!r}" for k in changed
            )
            raise ValueError(
                f"{workdir}: the config differs from the one this run was started with ({details}); "
                "use a new workdir or pass --config.allow_config_change=True"
            )
        if loop["fingerprint"] != self.splits.fingerprint and not config.allow_config_change:
            raise ValueError(
                f"{workdir}: the dataset changed since this run was started (fingerprint "
                f"{loop['fingerprint']} -> {self.splits.fingerprint}: files, sizes, mtimes or "
                "preprocessing differ); use a new workdir or pass --config.allow_config_change=True"
            )
        self.labelled[np.asarray(loop["labelled_ids"], np.int64)] = True
        self.history = list(loop["history"])
        self._rebuild_records()
        self.next_round = latest + 1
        if self.history and not self.history[-1]["queried"]:
            # Finished (or the pool was exhausted). Given more rounds, a simulated run continues.
            more = latest < int(config.al.rounds) and not self.labelled.all()
            if more and self.human:
                # Extending needs a query of the last round's model, stored as awaiting labels
                # in that round's checkpoint, which is already written (and orbax does not
                # overwrite a step): refuse rather than silently doing nothing.
                raise ValueError(
                    f"{workdir}: this human-annotator run finished at round {latest} without a "
                    f"query, so it cannot be extended to al.rounds={int(config.al.rounds)}; "
                    "start a new run in a new workdir with more al.rounds"
                )
            if more:
                self.extend_finished = True
            else:
                self.next_round = int(config.al.rounds) + 1
        logging.info(
            "resuming %s after round %d (%d labelled)", workdir, latest, self.labelled.sum()
        )
        return loop

    def _restore_annotations(self, loop: dict) -> None:
        """Human annotator: reloads the imported masks the run trained on, checking that they
        are unchanged, and applies the awaited round's import if it has happened since."""
        for r, digest in sorted((int(r), d) for r, d in loop.get("annotations", {}).items()):
            self.store.verify(r, digest)
            self.imported[r] = digest
        self.awaiting = loop.get("awaiting_labels")
        self._overlay_imported()
        if self.awaiting is not None and self.store.has(self.awaiting):
            self._apply_import(self.awaiting)

    def _overlay_imported(self) -> None:
        """Training labels: the dataset's, with every imported round's masks in place."""
        parts = [self.store.read(r) for r in sorted(self.imported)]
        ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        masks = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, *self.train.shape))
        self.train = dataclasses.replace(
            self.train, labels=label_store.OverlaidLabels(self.dataset_labels, ids, masks)
        )

    def _apply_import(self, r: int) -> None:
        ids, _ = self.store.read(r)
        expected = self.history[-1]
        if expected["round"] != r or [int(i) for i in ids] != expected["queried"]:
            raise label_store.LabelStoreError(
                f"{self.store.path(r)}: its ids are not round {r}'s query in {self.workdir}"
            )
        self.imported[r] = self.store.digest(r)
        self._overlay_imported()
        self.labelled[ids] = True
        expected.update(diagnostics.label_diagnostics(self.train, ids))
        self.awaiting = None
        logging.info("round %d: %d imported slice labels applied", r, len(ids))

    def accept_labels(self, r: int, ids: np.ndarray, masks: np.ndarray, note: dict) -> None:
        """Stores the annotator's masks [n, H, W] of round r's query (ids in selection order)
        and applies them; the atomic write of the store file is the commit point."""
        if self.awaiting != r:
            raise ValueError(f"{self.workdir}: round {r}'s query is not awaiting labels")
        self.store.write(r, ids, masks, note)
        self._apply_import(r)
        checkpointing.write_json_atomic(
            os.path.join(self.workdir, RECORDS_FILE), self.history, lines=True
        )

    def train_round(self, r: int) -> dict:
        """Fine-tunes on the labelled set and evaluates on the test split."""
        config = self.config
        if config.train.reset_optimizer:
            self.state = self.state.replace(opt_state=self.tx.init(self.state.params))
        labelled_ids = np.flatnonzero(self.labelled)
        untrained_val_loss = self._untrained_val_loss(r)
        self.state, fit_summary = fit(
            self.model,
            self.state,
            self.tx,
            self.train,
            labelled_ids,
            self.splits.val,
            jax.random.fold_in(jax.random.fold_in(self.root, r), FIT),
            config.train,
            round_index=r,
            mesh=self.mesh,
        )
        if untrained_val_loss is not None:
            train_lib.check_divergence(r, fit_summary["best_val_loss"], untrained_val_loss)
        terms = evaluate(
            self.model,
            self.state.variables,
            self.splits.test,
            None,
            int(config.train.eval_batch_size),
            self.mesh,
        )
        dice, dice_global = dice_scores(terms)
        label_sum = np.asarray(terms["label_sum"]).reshape(len(terms["label_sum"]), -1)
        test_with_target = int(np.count_nonzero(label_sum.sum(axis=1)))
        if test_with_target == 0:
            logging.warning("round %d: %s", r, report.NO_TARGET_NOTE)
        names = list(self.train.class_names)
        if len(names) == 1:  # binary: the class's Dice is the run's, to the bit
            per_class, global_per_class = [dice], [dice_global]
        else:
            per_class, global_per_class = (v.tolist() for v in class_dice_scores(terms))
        return {
            "round": r,
            "n_labelled": int(len(labelled_ids)),
            "pct_labelled": 100.0 * len(labelled_ids) / len(self.train),
            "dice": dice,
            "dice_global": dice_global,
            "dice_per_class": dict(zip(names, per_class, strict=True)),
            "dice_global_per_class": dict(zip(names, global_per_class, strict=True)),
            "test_slices_with_target": test_with_target,
            # What the annotator drew for this round's training set (imported masks included).
            **diagnostics.labelled_target_pixels(self.train.labels, labelled_ids),
            "val_loss": fit_summary["best_val_loss"],
            "epochs": fit_summary["epochs"],
            "best_epoch": fit_summary["best_epoch"],
            "train_seconds": fit_summary["seconds"],
            **self.evaluate_cases(r),
            **({"untrained_val_loss": untrained_val_loss} if r == 0 else {}),
        }

    def evaluate_cases(self, r: int) -> dict:
        """Per-case metrics of round r's model on the test split (`eval.cases`), else {}."""
        if not self.config.eval.cases:
            return {}
        return evaluation.evaluate_cases(
            self.model,
            self.state.variables,
            self.splits.test,
            self.splits.source,
            loading.make_settings(self.config.data, self.splits.source),
            int(self.config.train.eval_batch_size),
            self.workdir,
            r,
            tolerance_mm=float(self.config.eval.tolerance_mm),
            save_predictions=bool(self.config.eval.save_predictions),
        )

    def _untrained_val_loss(self, r: int) -> float | None:
        """The untrained model's validation loss, the yardstick of `check_divergence`: computed
        before round 0's training, then read from round 0's (checkpointed) record, so that a
        resumed run compares against the same number. None for runs recorded without it."""
        if r == 0:
            return mean_loss(
                evaluate(
                    self.model,
                    self.state.variables,
                    self.splits.val,
                    None,
                    int(self.config.train.eval_batch_size),
                    self.mesh,
                )
            )
        return self.history[0].get("untrained_val_loss") if self.history else None

    def query_round(self, r: int) -> selection.Query | None:
        """Scores the unlabelled pool and chooses the round's query (None after the last round
        or when the pool is exhausted)."""
        if r >= int(self.config.al.rounds) or self.labelled.all():
            return None
        q = query(
            self.config,
            self.model,
            self.state.variables,
            self.train,
            self.labelled,
            jax.random.fold_in(self.root, r),
            int(self.config.al.query_size),
            r,
            mesh=self.mesh,
        )
        return q

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
        r = record["round"]
        awaiting = self.human and q is not None and len(q.ids) > 0
        if q is not None and not awaiting:
            self.labelled[q.ids] = True
        record = {
            **record,
            "strategy": self.config.al.strategy,
            "mode": self.config.al.mode,
            "seed": int(self.config.seed),
            "queried": [] if q is None else [int(i) for i in q.ids],
            "queried_streams": [] if q is None else list(q.streams),
            "queried_scores": []
            if q is None
            else [None if np.isnan(s) else float(s) for s in q.scores],
            **diagnostics.model_diagnostics(
                self.model,
                self.state.variables,
                self.train,
                [] if q is None else q.ids,
                int(self.config.train.eval_batch_size),
                float(self.config.al.target_threshold),
                float(self.config.al.boundary_width),
            ),
        }
        if awaiting:  # the labels are unknown until imported; `_apply_import` fills these in
            record.update(queried_with_target=None, queried_mean_target_pixels=None)
            self.awaiting = r
        else:
            ids = np.asarray([] if q is None else q.ids, np.int64)
            record.update(diagnostics.label_diagnostics(self.train, ids))
        return record

    def _save(self, r: int) -> None:
        """Checkpoints round r (model state and the JSON loop record) and rewrites records.jsonl."""
        record = self.history[-1]
        loop_record = {
            "round": r,
            "labelled_ids": [int(i) for i in np.flatnonzero(self.labelled)],
            "history": self.history,
            "config": self.flat_config,
            "fingerprint": self.splits.fingerprint,
            "root_key": [int(x) for x in np.asarray(jax.random.key_data(self.root)).ravel()],
            "pool_size": len(self.train),
        }
        if self.human:
            loop_record["awaiting_labels"] = self.awaiting
            loop_record["annotations"] = {str(k): d for k, d in sorted(self.imported.items())}
        self.ckpt.save(r, self.state, loop_record)
        checkpointing.write_json_atomic(
            os.path.join(self.workdir, RECORDS_FILE), self.history, lines=True
        )
        self.next_round = r + 1
        logging.info(
            "round %d | labelled %d (%.1f%%) | dice %.4f (global %.4f) | val loss %.5f | "
            "train %.1fs | score %.1fs",
            r,
            record["n_labelled"],
            record["pct_labelled"],
            record["dice"],
            record["dice_global"],
            record["val_loss"],
            record["train_seconds"],
            record["score_seconds"],
        )

    def _extend_finished_run(self) -> None:
        """A finished run resumed with more rounds: its last round gets the query it did not need
        then (from the same model and key, so as an uninterrupted longer run would have drawn
        it). It is checkpointed with the next round; a crash before that just redoes it."""
        record = self.history.pop()
        base = {k: v for k, v in record.items() if k not in QUERY_FIELDS}
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


def load_round0(round0_dir: str, state_like):
    ckpt = checkpointing.Checkpointer(os.path.join(round0_dir, ROUND0_CHECKPOINT), 1)
    try:
        if ckpt.latest_round() is None:
            raise ValueError(f"{round0_dir}: no shared round-0 checkpoint found")
        return ckpt.restore(0, checkpointing.abstract_like(state_like))
    finally:
        ckpt.close()


def train_shared_round0(config, round0_dir: str) -> dict:
    """Trains round 0 once (the initial labelled set is fixed by the seed) and stores its model,
    record and the pool embeddings (for t-SNE maps) in `round0_dir`. Idempotent: an existing
    round 0 is returned without loading data or building a model."""
    with rng.classic_threefry(), lock.hold(round0_dir):
        ckpt = checkpointing.Checkpointer(os.path.join(round0_dir, ROUND0_CHECKPOINT), 1)
        try:
            if ckpt.latest_round() is not None:
                return ckpt.restore_loop(0)["record"]
            experiment = Experiment(config, round0_dir)
            try:
                record = experiment.train_round(0)
                train = experiment.train
                features, _, _ = diagnostics.embed(
                    experiment.model,
                    experiment.state.variables,
                    train.images,
                    np.arange(len(train)),
                    int(config.train.eval_batch_size),
                )
                target_pixels = (np.asarray(train.labels) > 0).reshape(len(train), -1).sum(axis=1)
                path = os.path.join(round0_dir, EMBEDDINGS_FILE)
                if parallel.is_primary():
                    with atomic.atomic_open(path, "wb") as f:
                        np.savez(f, features=features, target_pixels=target_pixels)
                ckpt.save(
                    0,
                    experiment.state,
                    {
                        "record": record,
                        "labelled_ids": [int(i) for i in np.flatnonzero(experiment.labelled)],
                        "config": experiment.flat_config,
                        "fingerprint": experiment.splits.fingerprint,
                    },
                )
                return record
            finally:
                experiment.close()
        finally:
            ckpt.close()


def train_supervised(config, workdir: str) -> dict:
    """The supervised baseline: the same fit routine on the whole training split; its record is
    written to <workdir>/supervised.json (and returned; an existing one is returned as is)."""
    path = os.path.join(workdir, SUPERVISED_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    with rng.classic_threefry(), lock.hold(workdir):
        experiment = Experiment(config, workdir)
        try:
            experiment.labelled[:] = True
            record = experiment.train_round(0)
        finally:
            experiment.close()
        record = {**record, "supervised": True, "seed": int(config.seed)}
        checkpointing.write_json_atomic(path, record)
    logging.info(
        "supervised baseline: dice %.4f (global %.4f)", record["dice"], record["dice_global"]
    )
    return record
