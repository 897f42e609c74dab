"""The active-learning round loop: train, evaluate, score, query, reveal; checkpoint every round.

Knows nothing of flags: `run(config, workdir)` is the whole experiment. It builds the run's parts
once (`run.parts.build`), opens the loop's state (`run.state.open_state`: resumed or fresh) and
runs the rounds; `run_round` is one round: `train_round` -> `query_round` -> `commit_round`.

Keys: every key derives from `rng.root_key(config.seed)` by the named steps of `selal_jax.core.rng`
(its docstring draws the tree): init, initial set, and per round fit / score / random / sample.
Nothing depends on how often a key was split before, so a resumed run draws the same numbers as
an uninterrupted one.

With `al.annotator = "human"`, `commit_round` does not reveal the query: the checkpoint records
it as awaiting labels and the loop stops. `verbs.annotate.import_labels` stores the annotator's
masks for it; the next `run` applies them, and training reads the imported masks instead of the
dataset's labels for those slices.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from absl import logging

from selal_jax.core import rng, selection
from selal_jax.run import checkpointing, lock, review, rounds, validation
from selal_jax.run import fit as fit_lib
from selal_jax.run import parts as parts_lib
from selal_jax.run import state as state_lib
from selal_jax.run import workdir as workdir_lib
from selal_jax.run.parts import Parts
from selal_jax.run.state import LoopState

# A fresh run's round 0 from elsewhere: (parts, fresh state) -> the state holding round 0's
# model and record (`LoopState.round0_record`), e.g. a sweep's shared round 0.
Round0 = Callable[[Parts, LoopState], LoopState]


def round_line(record: dict) -> str:
    """A round's log line, per-case metrics first: 'round 2 | labelled 20 (27.8%) | case Dice
    0.6034 | HD95 5.12 mm | slice Dice (paper) 0.7021 (global 0.4607) | val loss ... | train
    ... | score ...'; with several classes each class's case Dice in brackets."""
    case_dice = record.get("case_dice")
    if case_dice is None:
        case = "case Dice not computed (eval.cases=False)"
    else:
        case = f"case Dice {case_dice:.4f}"
        per_class = record.get("case_dice_per_class") or {}
        if len(per_class) > 1:
            case += " (" + ", ".join(f"{n} {v:.4f}" for n, v in per_class.items()) + ")"
        case += f" | HD95 {record['case_hd95']:.2f} mm"
    return (
        f"round {record['round']} | labelled {record['n_labelled']} "
        f"({record['pct_labelled']:.1f}%) | {case} | slice Dice (paper) {record['dice']:.4f} "
        f"(global {record['dice_global']:.4f}) | val loss {record['val_loss']:.5f} | "
        f"train {record['train_seconds']:.1f}s | score {record['score_seconds']:.1f}s"
    )


def log_round(record: dict) -> None:
    """The round's line (`round_line`), then what a reviewer would raise about it
    (`review.round_notes`) as warnings."""
    logging.info("%s", round_line(record))
    for note in review.round_notes(record):
        logging.warning("round %d: %s", record["round"], note)


@rng.with_classic_threefry
def run(config, workdir: str, round0: Round0 | None = None) -> list[dict]:
    """Runs (or resumes) the experiment; returns the per-round records.

    With `round0` (see `verbs.sweep.take_round0`), a fresh run takes its round-0 model and
    metrics from there instead of training them, so that runs of different strategies share them.
    """
    with lock.hold(workdir):
        parts = parts_lib.build(config, workdir)
        ckpt = checkpointing.Checkpointer(
            state_lib.checkpoints(workdir), int(parts.config.checkpoint.keep)
        )
        try:
            state = state_lib.open_state(parts, ckpt)
            if round0 is not None and state.fresh:
                state = round0(parts, state)
            history = run_rounds(parts, state, ckpt)
        except BaseException as e:
            checkpointing.close_quietly(ckpt, e)
            raise
        ckpt.close()
    return history


def run_rounds(parts: Parts, state: LoopState, ckpt: checkpointing.Checkpointer) -> list[dict]:
    """Runs the rounds from `state.next_round` to al.rounds (stopping early when the pool is
    exhausted or a query awaits a human annotator's labels); returns the history."""
    if state.extend_finished:
        extend_finished_run(parts, state)
    for r in range(state.next_round, int(parts.config.al.rounds) + 1):
        if state.awaiting is not None:
            logging.warning("%s", awaiting_message(state.history, parts.workdir))
            break
        if run_round(parts, state, ckpt, r) is None:
            break  # last round, or the pool is exhausted
    return state.history


def run_round(
    parts: Parts, state: LoopState, ckpt: checkpointing.Checkpointer, r: int
) -> selection.Query | None:
    """Round r: trains (or takes a shared round 0), evaluates, queries, commits; returns the
    query (None: nothing more to query)."""
    if r == 0 and state.round0_record is not None:
        record = dict(state.round0_record)  # shared round-0 model (already in state.model)
    else:
        record = train_round(parts, state, r)
    score_start = time.time()
    q = query_round(parts, state, r)
    record["score_seconds"] = time.time() - score_start
    commit_round(parts, state, ckpt, record, q)
    return q


def train_round(parts: Parts, state: LoopState, r: int) -> dict:
    """Fine-tunes `state.model` on the labelled set and evaluates it on the test split; returns
    the round's record (before its query)."""
    config, splits = parts.config, parts.splits
    if config.train.reset_optimizer:
        state.model = state.model.replace(opt_state=parts.tx.init(state.model.params))
    labelled_ids = np.flatnonzero(state.labelled)
    if not state.batch_warned:
        state.batch_warned = validation.warn_batch_beyond_labelled(config, len(labelled_ids), r)
    if r == 0:  # the yardstick of check_divergence, kept in round 0's record
        untrained = fit_lib.validation_loss(
            parts.model, state.model.variables, splits.val, parts.batches
        )
    else:  # None for runs recorded without it
        untrained = state.history[0].get("untrained_val_loss") if state.history else None
    key = rng.fit_key(rng.round_key(parts.root, r))
    state.model, fit = fit_lib.fit(
        parts.model, state.model, parts.tx, state.pool, labelled_ids, splits.val, key,
        config.train, round_index=r, mesh=parts.mesh,
    )  # fmt: skip
    if untrained is not None:
        fit_lib.check_divergence(r, fit["best_val_loss"], untrained)
    workdir_lib.write_epoch_metrics(parts.workdir, r, fit["history"])
    variables = state.model.variables
    return rounds.round_record(
        r,
        labelled_ids,
        state.pool,
        fit,
        rounds.test_metrics(parts, variables, r),
        rounds.case_metrics(parts, variables, r),
        untrained,
        (splits.target_slices or {}).get("val"),
    )


def query_round(parts: Parts, state: LoopState, r: int) -> selection.Query | None:
    """Scores the unlabelled pool and chooses the round's query (None after the last round or
    when the pool is exhausted)."""
    if r >= int(parts.config.al.rounds) or state.labelled.all():
        return None
    return rounds.query(
        parts, state.model.variables, state.pool, state.labelled, rng.round_key(parts.root, r), r
    )


def commit_round(
    parts: Parts,
    state: LoopState,
    ckpt: checkpointing.Checkpointer,
    record: dict,
    q: selection.Query | None,
) -> dict:
    """Reveals the query's labels (a human annotator's come later), appends the record and
    checkpoints the round."""
    record = with_query(parts, state, record, q)
    state.history.append(record)
    state_lib.save_round(parts, state, ckpt, record["round"])
    log_round(record)
    return record


def with_query(parts: Parts, state: LoopState, record: dict, q: selection.Query | None) -> dict:
    """The round's record completed with its query and diagnostics; reveals the query's labels
    (simulated annotator) or marks it as awaiting them (human)."""
    fields = rounds.query_fields(parts, state.model.variables, state.pool, q)
    record = {**record, **fields}
    state.labels.reveal(record, [] if q is None else q.ids)
    return record


def extend_finished_run(parts: Parts, state: LoopState) -> None:
    """A finished run resumed with more rounds: its last round gets the query it did not need
    then (from the same model and key, so as an uninterrupted longer run would have drawn it).
    It is checkpointed with the next round; a crash before that just redoes it."""
    record = state.history.pop()
    base = {k: v for k, v in record.items() if k not in rounds.QUERY_FIELDS}
    start = time.time()
    q = query_round(parts, state, record["round"])
    base["score_seconds"] = time.time() - start
    state.history.append(with_query(parts, state, base, q))


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
