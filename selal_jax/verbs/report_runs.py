"""The one place a report reads runs: the records of every run under a folder, grouped by run
name (`run_names.label`: strategy, mode and the options that act) and seed (`load_runs`; with
their folders, `run_files`), the supervised baseline (`load_baseline`), and the metrics a table
reads from a record.

Two Dice are read from each round's record. The case Dice (`case_dice`: each test volume at its
own resolution, the mean over the test cases; with classes, the mean over them) decides what a
report calls the highest round and where a run reaches the baseline. The slice Dice (`dice`:
mean per-slice Dice, as the paper reports it) stays beside it, named "slice Dice (paper)": an
empty prediction on an empty slice scores 1 in it, so a model that predicts nothing can score
high. Runs recorded without per-case metrics (eval.cases=False) fall back on the slice Dice, and
every table says so (`decided_by`).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os

import numpy as np

from selal_jax.base.errors import UserError
from selal_jax.run import review
from selal_jax.run import workdir as workdir_lib
from selal_jax.run.workdir import read_records
from selal_jax.verbs import run_names

CASE, SLICE = "case", "slice"
TITLES = {CASE: "case Dice", SLICE: "slice Dice (paper)"}
NOT_COMPUTED = "case Dice: not computed (eval.cases=False)"

Runs = dict[str, dict[int, list[dict]]]  # {run name: {seed: history}}


def run_files(workdir: str) -> list[tuple[str, int, str, list[dict]]]:
    """(run name, seed, folder, history) of every non-empty records file under workdir, in
    folder order. The name is `run_names.label` ('<strategy> <mode>[ <options>]', e.g.
    'entropy selective power'); a second run of a name with the same seed is a UserError."""
    # "**" with recursive=True also matches no folder: the workdir's own file is included.
    paths = glob.glob(os.path.join(workdir, "**", workdir_lib.RECORDS_FILE), recursive=True)
    # by folder names ('entropy-selective' before 'entropy-selective-power', unlike '-' < '/')
    paths.sort(key=lambda p: os.path.relpath(p, workdir).split(os.sep))
    found, seen = [], set()
    for path in paths:
        history = read_records(path)
        if not history:
            continue
        name = run_names.label(run_names.record_fields(history[0]))
        seed = int(history[0].get("seed", 0))
        if (name, seed) in seen:
            raise UserError(f"{path}: a second run of {name!r} with seed {seed} in {workdir}")
        seen.add((name, seed))
        found.append((name, seed, os.path.dirname(path), history))
    return found


def load_runs(workdir: str) -> Runs:
    """{run name (`run_files`): {seed: history}, seeds in numeric order} for every records file
    under workdir (folders sort as text: seed-10 before seed-2; a bootstrap depends on the
    order of its values, so every table must see the seeds in one order)."""
    runs: Runs = {}
    for name, seed, _, history in run_files(workdir):
        runs.setdefault(name, {})[seed] = history
    return {name: dict(sorted(by_seed.items())) for name, by_seed in runs.items()}


def histories(by_seed: dict[int, list[dict]]) -> list[list[dict]]:
    """A run's histories in seed order."""
    return [by_seed[s] for s in sorted(by_seed)]


def case_value(record: dict, field: str) -> float | None:
    """A per-case evaluation field of a record (`case_dice`, `case_hd95`: the mean over the test
    cases) as a number; a {class: value} dict gives its mean over the classes; None if absent."""
    value = record.get(field)
    if isinstance(value, dict):
        values = [float(v) for v in value.values() if v is not None]
        value = float(np.mean(values)) if values else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def dice(record: dict, by: str) -> float | None:
    """The record's case Dice (`by` CASE; None if not computed) or slice Dice (SLICE)."""
    return case_value(record, "case_dice") if by == CASE else float(record["dice"])


def class_dice(record: dict, by: str, name: str) -> float | None:
    """One class's case Dice or slice Dice (None where the record has none)."""
    field = "case_dice_per_class" if by == CASE else "dice_per_class"
    value = (record.get(field) or {}).get(name)
    return None if value is None else float(value)


def decided_by(all_histories: list[list[dict]]) -> str:
    """CASE when every record has a case Dice, else SLICE (the explicit fallback)."""
    records = [rec for h in all_histories for rec in h]
    return CASE if records and all(dice(rec, CASE) is not None for rec in records) else SLICE


def highest(history: list[dict], by: str, value=None) -> dict | None:
    """The record of the round with the highest Dice `by` (or `value(record)`, e.g. one class's),
    first of equals; rounds whose model predicts no target are never the highest (None if no
    round is left)."""
    value = value or (lambda rec: dice(rec, by))
    candidates = [
        rec for rec in history if value(rec) is not None and not review.predicts_nothing(rec)
    ]
    return max(candidates, key=value) if candidates else None


def highest_dice(history: list[dict], by: str) -> float | None:
    """The Dice `by` of `highest`'s round, or None."""
    best = highest(history, by)
    return None if best is None else dice(best, by)


def normalised_auc(history: list[dict], by: str = SLICE) -> float | None:
    """Trapezoid area under Dice `by` vs % labelled divided by the % range (None for < 2
    rounds or a round without that Dice). `by` SLICE: the paper's nAUC; CASE: `aubc`."""
    values = [dice(rec, by) for rec in history]
    if len(history) < 2 or None in values:
        return None
    x = np.array([rec["pct_labelled"] for rec in history], np.float64)
    y = np.array(values, np.float64)
    width = x[-1] - x[0]
    if width <= 0:
        return None
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / width)


def aubc(history: list[dict]) -> float | None:
    """The AUBC of the case Dice (area under the budget curve, Zhan et al., IJCAI 2021;
    nnActive's `compute_auc`): the trapezoid area under the case Dice against the labelled
    slices, round 0 included, divided by their range (the curve's mean height: a constant curve
    c gives c; with equal steps, nnActive's evenly spaced budgets). % labelled is the labelled
    slices over a fixed pool, so this is `normalised_auc(history, CASE)`. None for < 2 rounds
    or a round without a case Dice."""
    return normalised_auc(history, CASE)


def class_names(history: list[dict]) -> list[str]:
    """The foreground class names of a run's records (one, unnamed, for records written before
    classes existed)."""
    per_class = history[0].get("dice_per_class") if history else None
    return list(per_class) if per_class else ["target"]


@dataclasses.dataclass(frozen=True)
class Baseline:
    """The supervised baseline a report compares with.

    Attributes:
      case_dice, dice: its case Dice and slice Dice (paper); None where unknown.
      text: what it is, for the notes under the tables.
      notes: what a reviewer would raise about it.
    """

    case_dice: float | None
    dice: float | None
    text: str = ""
    notes: tuple[str, ...] = ()

    def value(self, by: str) -> float | None:
        return self.case_dice if by == CASE else self.dice

    def describe(self) -> str:
        """`text`, or its two Dice."""
        if self.text:
            return self.text
        case = NOT_COMPUTED if self.case_dice is None else f"case Dice {self.case_dice:.4f}"
        return case + ("" if self.dice is None else f", slice Dice (paper) {self.dice:.4f}")

    @classmethod
    def given(cls, value: float, by: str) -> Baseline:
        """`report --baseline=X`: X in the metric that decides (`by`)."""
        value = float(value)
        return cls(
            case_dice=value if by == CASE else None,
            dice=value if by == SLICE else None,
            text=f"{TITLES[by]} {value:.4f} (--baseline)",
        )


def load_baseline(workdir: str) -> Baseline | None:
    """The supervised baseline(s) under workdir (`supervised.json`; several: their mean), or
    None. A file that is not a baseline record is a UserError naming it."""
    records = []
    for path in sorted(
        glob.glob(os.path.join(workdir, "**", workdir_lib.SUPERVISED_FILE), recursive=True)
    ):
        try:
            with open(path) as f:
                record = json.load(f)
            float(record["dice"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"{path}: not a supervised baseline record (a JSON object with a number "
                f"'dice'; {type(e).__name__}: {e})"
            ) from e
        records.append(record)
    if not records:
        return None
    case = [case_value(r, "case_dice") for r in records]
    return Baseline(
        case_dice=None if None in case else float(np.mean(case)),
        dice=float(np.mean([r["dice"] for r in records])),
        text="; ".join(baseline_text(r) for r in records),
        notes=tuple(n for r in records for n in baseline_notes(r)),
    )


def baseline_text(record: dict) -> str:
    """'case Dice 0.4780 (HD95 14.20 mm), slice Dice (paper) 0.7968; 704 labelled slices, 37
    epochs (best 32 of 37; patience 5, cap 100)'."""
    case = case_value(record, "case_dice")
    text = NOT_COMPUTED if case is None else f"case Dice {case:.4f}"
    if case is not None and record.get("case_hd95") is not None:
        text += f" (HD95 {record['case_hd95']:.2f} mm)"
    text += f", slice Dice (paper) {record['dice']:.4f}"
    if "n_labelled" in record and "epochs" in record:
        config = record.get("config") or {}
        budget = ""
        if "train.patience" in config:
            budget = f"; patience {config['train.patience']}, cap {config['train.max_epochs']}"
        text += (  # best: the epoch whose model it kept, counted from 1
            f"; {record['n_labelled']} labelled slices, {record['epochs']} epochs (best "
            f"{record['best_epoch'] + 1} of {record['epochs']}{budget})"
        )
    return text


def baseline_notes(record: dict) -> list[str]:
    """What a reviewer would raise about a supervised baseline's record."""
    notes = []
    if "config" not in record:
        notes.append(
            "supervised baseline: recorded without its training config and data (written "
            "before baselines kept them; it may have trained with the sweep's epoch cap): "
            "run the sweep again to retrain it"
        )
    its = review.round_notes(record, cap_field="sweep.supervised_max_epochs")
    return notes + [f"supervised baseline: {note}" for note in its]
