"""One round's steps as functions of the run's parts, the model's variables and the pool: the
initial labelled set, the query (scoring + selection), the test metrics and the record's query
fields. `loop.run_round` strings them together and checkpoints the result. Every batched call
takes its batches from `parts.batches` (the run's mesh with them).
"""

from __future__ import annotations

import jax
import numpy as np
from absl import logging

from selal_jax.base import faults
from selal_jax.base.errors import ConfigError, UserError
from selal_jax.base.progress import Progress
from selal_jax.core import rng, scoring, selection
from selal_jax.core import train as train_lib
from selal_jax.core.spread import Spread
from selal_jax.data.slices import SliceSet
from selal_jax.run import diagnostics, evaluation
from selal_jax.run import fit as fit_lib
from selal_jax.run.review import NO_TARGET_NOTE

# Record fields that commit_round adds after training (the query and its diagnostics).
QUERY_FIELDS = (
    "score_seconds",
    "strategy",
    "mode",
    "seed",
    "queried",
    "queried_streams",
    "queried_scores",
    "queried_slices",
    "class_balanced",
    "sampling",
    "sampling_beta",
    "max_per_case",
    "min_slice_gap",
    "queried_with_target",
    "queried_mean_target_pixels",
    "queried_mean_pred_target_pixels",
    "queried_mean_pred_boundary_pixels",
    "queried_redundancy",
)


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
        raise ConfigError(
            f"config field al.initial_size: {size} exceeds the {len(with_label)} {what}"
        )
    if not from_positive:
        perm = np.asarray(jax.random.permutation(key, len(with_label)))
        return np.sort(with_label[perm[:size]])
    # unlabelled: all 0
    positive = np.flatnonzero(diagnostics.target_pixel_counts(train.labels, np.arange(n)))
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
        faults.maybe_kill("score", self.round_index)
        super().update(done, info)


def query(
    parts, variables, train: SliceSet, labelled: np.ndarray, round_key, round_index: int
) -> selection.Query:
    """Scores the unlabelled pool and returns round `round_index`'s query of al.query_size."""
    al, model, batches = parts.config.al, parts.model, parts.batches
    k = int(al.query_size)
    candidates = np.flatnonzero(~labelled)
    spread = Spread.of(
        train.subject, train.slice_index, candidates, int(al.max_per_case), int(al.min_slice_gap)
    )
    if al.strategy == "random":
        return selection.select_random(candidates, k, rng.random_key(round_key), spread)
    if al.strategy == "random_predicted":
        predicted = diagnostics.predicted_target_counts(
            model, variables, train.images, candidates, batches, float(al.target_threshold)
        )
        return selection.select_random_predicted(
            candidates, predicted, k, rng.random_key(round_key), spread
        )
    if al.strategy == "random_label":  # the true labels: a simulated annotator's pool only
        true_pixels = diagnostics.target_pixel_counts(train.labels, candidates)
        return selection.select_random_label(
            candidates, true_pixels, k, rng.random_key(round_key), spread
        )
    passes = int(al.mc_passes) if al.strategy in scoring.MC_STRATEGIES else 1
    progress = _ScoringProgress(round_index, len(candidates))
    stats = scoring.score_pool(
        model,
        variables,
        train.images,
        candidates,
        rng.score_key(round_key),
        strategy=al.strategy,
        convention=al.convention,
        target_threshold=float(al.target_threshold),
        boundary_width=float(al.boundary_width),
        passes=passes,
        batch_size=batches.batch_size,
        reuse_encoder=bool(al.reuse_encoder),
        progress=progress,
        mesh=batches.mesh,
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
        sampling=al.sampling,
        sampling_beta=float(al.sampling_beta),
        key=rng.sample_key(round_key),
        spread=spread,
    )


def test_metrics(parts, variables, r: int) -> dict:
    """Round r's Dice on the test split: mean per slice and global, overall and per class; the
    test slices with target and those where the model predicts any, and the test cases."""
    test = parts.splits.test
    terms = fit_lib.evaluate(parts.model, variables, test, parts.batches)
    dice, dice_global = train_lib.dice_scores(terms)
    label_sum = np.asarray(terms["label_sum"]).reshape(len(terms["label_sum"]), -1)
    test_with_target = int(np.count_nonzero(label_sum.sum(axis=1)))
    if test_with_target == 0:
        logging.warning("round %d: %s", r, NO_TARGET_NOTE)
    pred_sum = np.asarray(terms["pred_sum"]).reshape(len(terms["pred_sum"]), -1)
    names = list(test.class_names)
    if len(names) == 1:  # binary: the class's Dice is the run's, to the bit
        per_class, global_per_class = [dice], [dice_global]
    else:
        per_class, global_per_class = (v.tolist() for v in train_lib.class_dice_scores(terms))
    return {
        "dice": dice,
        "dice_global": dice_global,
        "dice_per_class": dict(zip(names, per_class, strict=True)),
        "dice_global_per_class": dict(zip(names, global_per_class, strict=True)),
        "test_slices_with_target": test_with_target,
        # What a reviewer checks first: a model that predicts nothing scores 1 on every empty
        # slice (`run.review`), and metrics that rest on one test case.
        "test_slices_predicted_target": int(np.count_nonzero(pred_sum.sum(axis=1))),
        "test_cases": int(len(np.unique(test.subject))),
    }


def query_fields(parts, variables, pool: SliceSet, q: selection.Query | None) -> dict:
    """A round's query as record fields, with the model's diagnostics of the queried slices
    (the label diagnostics come with the labels)."""
    ids = [] if q is None else q.ids
    config = parts.config
    al = config.al
    return {
        "strategy": al.strategy,
        "mode": al.mode,
        "seed": int(config.seed),
        "class_balanced": bool(al.class_balanced),
        "sampling": al.sampling,
        "sampling_beta": float(al.sampling_beta),
        "max_per_case": int(al.max_per_case),
        "min_slice_gap": int(al.min_slice_gap),
        "queried": [int(i) for i in ids],
        # [case, slice index] of each queried slice: readable without the slice cache
        "queried_slices": [[pool.cases[pool.subject[i]], int(pool.slice_index[i])] for i in ids],
        "queried_streams": [] if q is None else list(q.streams),
        "queried_scores": []
        if q is None
        else [None if np.isnan(s) else float(s) for s in q.scores],
        **diagnostics.model_diagnostics(
            parts.model,
            variables,
            pool,
            ids,
            parts.batches,
            float(al.target_threshold),
            float(al.boundary_width),
        ),
    }


def case_metrics(parts, variables, r: int) -> dict:
    """Per-case metrics of round r's model on the test split (`eval.cases`), else {}."""
    config, splits = parts.config, parts.splits
    if not config.eval.cases:
        return {}
    return evaluation.evaluate_cases(
        parts.model,
        variables,
        splits.test,
        splits.source,
        splits.settings,
        parts.batches,
        parts.workdir,
        r,
        tolerance_mm=float(config.eval.tolerance_mm),
        save_predictions=bool(config.eval.save_predictions),
    )


def round_record(
    r: int,
    labelled_ids,
    pool: SliceSet,
    fit: dict,
    test: dict,
    cases: dict,
    untrained,
    val_with_target: int | None = None,
) -> dict:
    """Round r's record before its query: the labelled set, `fit`'s summary, the test metrics
    (`test_metrics`, `case_metrics`), the validation slices with target (where the cache
    counted them) and, in round 0, the untrained validation loss."""
    return {
        "round": r,
        "n_labelled": int(len(labelled_ids)),
        "pct_labelled": 100.0 * len(labelled_ids) / len(pool),
        **test,
        **({} if val_with_target is None else {"val_slices_with_target": int(val_with_target)}),
        # What the annotator drew for this round's training set (imported masks included).
        **diagnostics.labelled_target_pixels(pool.labels, labelled_ids),
        "val_loss": fit["best_val_loss"],
        "epochs": fit["epochs"],
        "best_epoch": fit["best_epoch"],
        "train_seconds": fit["seconds"],
        **cases,
        **({"untrained_val_loss": untrained} if r == 0 else {}),
    }


def resume_point(
    latest: int, history: list[dict], rounds: int, all_labelled: bool, *, human: bool, workdir: str
) -> tuple[int, bool]:
    """(next round, extend) for a run restored after round `latest` (history: its records).

    A finished run (its last round queried nothing: the last round, or the pool exhausted)
    resumed with more `rounds` continues if the pool is not exhausted (`extend`: its last round
    gets the query it did not need then); otherwise nothing is left to do. A human-annotator run
    cannot be extended: the query would have to be stored as awaiting labels in the last
    round's checkpoint, which is already written (and orbax does not overwrite a step).
    """
    if not history or history[-1]["queried"]:
        return latest + 1, False
    more = latest < rounds and not all_labelled
    if more and human:
        raise UserError(
            f"{workdir}: this human-annotator run finished at round {latest} without a query, "
            f"so it cannot be extended to al.rounds={rounds}; start a new run in a new workdir "
            "with more al.rounds"
        )
    return (latest + 1, True) if more else (rounds + 1, False)
