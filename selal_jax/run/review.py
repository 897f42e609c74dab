"""What a reviewer would raise about a run's numbers, read from its records alone (nothing is
recomputed): rounds whose model predicts no target on any test slice (its per-slice Dice then
counts every empty slice as 1, and can exceed a model that segments), rounds whose model
overlaps one of several classes in no test case (the mean over classes hides it), rounds whose
training stopped at the epoch cap while the validation loss still fell, and a test split without
target, on one case or on few lesion slices (`data.checks.thin_test_notes`, also said at every load).

`round_notes` is what a round's log line adds (`run.loop.log_round`); `run_notes` what a run's
round table and the report say under their tables, each naming the rounds concerned.
"""

from __future__ import annotations

from selal_jax.data import checks

# Without target, every empty prediction scores Dice 1 (a model that never predicts scores best).
NO_TARGET_NOTE = "no target in the test split: Dice is not meaningful"
# Without target, the validation loss that picks each round's model rewards predicting none.
NO_VAL_TARGET_NOTE = "no target in the validation split: early stopping sees background alone"
NO_PREDICTION_NOTE = (
    "the model predicts no target on any test slice (its slice Dice counts each empty slice as 1)"
)
CAPPED_NOTE = "training stopped at the epoch cap while the validation loss still fell"
# With several classes the headline is their mean: a class the model never overlaps hides in it.
MISSED_CLASS_NOTE = (
    "case Dice 0 on every test case for class {!r} (the model segments it nowhere; the mean over "
    "the classes and the slice Dice hide it)"
)


def predicts_nothing(record: dict) -> bool:
    """Whether the round's model predicts no target on any test slice (False for records
    written before `test_slices_predicted_target`)."""
    return record.get("test_slices_predicted_target") == 0


def stopped_at_cap(record: dict) -> bool:
    """Whether the round's training ended at its epoch cap with the validation loss still
    falling: its best epoch was its last (early stopping ends `patience` epochs after the best)."""
    return "best_epoch" in record and record["best_epoch"] == record["epochs"] - 1


def missed_classes(record: dict) -> list[str]:
    """With several classes, those whose case Dice is 0 on every test case (a mean of values in
    [0, 1] is 0 only then; a class absent from a case and its prediction scores 1 there). None
    when the model predicts no target at all (`predicts_nothing` says that) or with one class."""
    per_class = record.get("case_dice_per_class") or {}
    if len(per_class) < 2 or predicts_nothing(record):
        return []
    return [name for name, value in per_class.items() if value == 0]


def round_notes(record: dict, cap_field: str = "train.max_epochs") -> list[str]:
    """The warnings of one round's record (the test split's are said at load time); `cap_field`:
    the config field a capped training should raise."""
    notes = []
    if predicts_nothing(record):
        notes.append(NO_PREDICTION_NOTE)
    notes += [MISSED_CLASS_NOTE.format(name) for name in missed_classes(record)]
    if stopped_at_cap(record):
        notes.append(
            f"{CAPPED_NOTE} (the best validation loss at the last of its {record['epochs']} "
            f"epochs; raise {cap_field})"
        )
    return notes


def rounds_text(rounds: list[int], total: int) -> str:
    """'round 2', 'rounds 0, 2', 'every round' (of `total`)."""
    if len(rounds) == total and total > 1:
        return "every round"
    return ("round " if len(rounds) == 1 else "rounds ") + ", ".join(str(r) for r in rounds)


def split_notes(record: dict) -> list[str]:
    """The test and validation splits' warnings, from a record's counts (older records lack
    some of them: nothing said of those)."""
    notes = []
    if record.get("test_slices_with_target") == 0:
        notes.append(NO_TARGET_NOTE)
    elif "test_cases" in record:
        notes += checks.thin_test_notes(record["test_cases"], record.get("test_slices_with_target"))
    if record.get("val_slices_with_target") == 0:
        notes.append(NO_VAL_TARGET_NOTE)
    return notes


def run_notes(history: list[dict], splits: bool = True) -> list[str]:
    """A run's warnings, each once, naming its rounds: the rounds that predict no target, those
    that miss a class (one warning per class), those stopped at the epoch cap, then (`splits`)
    the splits' (from its last record)."""
    capped = f"{CAPPED_NOTE} (the best validation loss at the last epoch; raise train.max_epochs)"
    missed = [missed_classes(rec) for rec in history]
    found = [([rec["round"] for rec in history if predicts_nothing(rec)], NO_PREDICTION_NOTE)]
    for name in dict.fromkeys(name for names in missed for name in names):
        hit = [rec["round"] for rec, names in zip(history, missed, strict=True) if name in names]
        found.append((hit, MISSED_CLASS_NOTE.format(name)))
    found.append(([rec["round"] for rec in history if stopped_at_cap(rec)], capped))
    notes = [f"{rounds_text(hit, len(history))}: {note}" for hit, note in found if hit]
    return notes + (split_notes(history[-1]) if history and splits else [])
