"""Issue 26: a headline that cannot flatter. Case metrics lead the console, the round table and
the report; what a reviewer would raise is said in the log and under the tables; the
supervised baseline trains with its own budget and is retrained when its config or data differ;
the CSVs hold numbers as numbers."""

import csv
import json
import logging
import os
import re

import numpy as np
import pytest

from selal_jax.run import loop, review
from selal_jax.verbs import report, report_plots, report_runs, sweep
from tests.helpers import smoke_config
from tests.test_report import PCTS, history, with_case, write_run


def record(r, dice, case_dice, predicted=5, epochs=6, best_epoch=2, **extra):
    return {
        "round": r,
        "n_labelled": 10 * (r + 1),
        "pct_labelled": 5.0 * (r + 1),
        "dice": dice,
        "dice_global": dice / 2,
        "case_dice": case_dice,
        "case_hd95": 20.0,
        "test_slices_predicted_target": predicted,
        "test_slices_with_target": 40,
        "test_cases": 3,
        "epochs": epochs,
        "best_epoch": best_epoch,
        "strategy": "entropy",
        "mode": "selective",
        "seed": 0,
        "queried": [],
        **extra,
    }


def test_rounds_that_predict_nothing_are_never_the_highest():
    """Round 1 predicts no target: its slice Dice (0.93, every empty slice scoring 1) and even a
    case Dice cannot make it the highest; the table says which rounds predict nothing."""
    h = [record(0, 0.70, 0.30), record(1, 0.93, 0.31, predicted=0), record(2, 0.72, 0.28)]
    table = report.round_table(h)
    assert "highest case Dice 0.3000 at round 0 (10 labelled slices" in table
    assert "round 1 left out: no target predicted" in table
    assert f"warning: round 1: {review.NO_PREDICTION_NOTE}" in table.splitlines()
    # every round predicts nothing: no round is called highest, on either Dice
    nothing = [record(r, 0.9 + r / 100, 0.0, predicted=0) for r in range(3)]
    table = report.round_table(nothing)
    assert not re.search(r"highest[^\n]* at round", table)
    assert "no highest round: the model predicts no target on the test split in any round" in table
    assert f"warning: every round: {review.NO_PREDICTION_NOTE}" in table.splitlines()


def test_without_case_dice_the_fallback_is_said():
    h = [record(r, d, None) for r, d in enumerate((0.6, 0.8, 0.7))]
    for rec in h:
        del rec["case_dice"], rec["case_hd95"]
    line = report.round_table(h).splitlines()[6]
    assert line == (
        "case Dice: not computed (eval.cases=False); highest by slice Dice (paper): 0.8000 at "
        "round 1 (20 labelled slices)"
    )
    assert report.round_table(h).splitlines()[2] == "| 0 | 10 | 5.0 | - | - | 0.6000 | 0.3000 |"


def test_the_reviewers_notes_name_the_rounds():
    capped = record(0, 0.7, 0.3, epochs=20, best_epoch=19)  # best epoch = last: still falling
    stopped = record(1, 0.7, 0.3, epochs=12, best_epoch=6)  # patience ended it
    assert review.stopped_at_cap(capped) and not review.stopped_at_cap(stopped)
    thin = record(2, 0.7, 0.3, epochs=20, best_epoch=19, test_cases=1, test_slices_with_target=7)
    notes = review.run_notes([capped, stopped, thin])
    assert notes[0].startswith("rounds 0, 2: training stopped at the epoch cap while the ")
    assert "raise train.max_epochs" in notes[0]
    assert notes[1].startswith("the test metrics rest on one case")
    assert notes[2].startswith("the test split has 7 slices with target (fewer than 10)")
    assert len(notes) == 3
    assert review.round_notes(stopped) == []
    assert review.run_notes([stopped]) == []  # 3 test cases, 40 slices with target: nothing


def test_a_class_the_model_segments_nowhere_is_named():
    """Two classes: core's case Dice is 0 in rounds 0-2 (every case 0: the mean of values in
    [0, 1]), hidden in the mean over the classes (0.3) and in a slice Dice of 0.9; round 3 finds
    it. One warning per class, naming its rounds; none for one class or a model predicting
    nothing (that warning says it)."""
    per_class = [{"halo": 0.6, "core": 0.0}] * 3 + [{"halo": 0.6, "core": 0.5}]
    h = [
        record(r, 0.9, sum(c.values()) / 2, case_dice_per_class=c) for r, c in enumerate(per_class)
    ]
    note = review.MISSED_CLASS_NOTE.format("core")
    assert "'core'" in note
    assert [review.round_notes(rec) for rec in h] == [[note]] * 3 + [[]]
    assert review.run_notes(h) == [f"rounds 0, 1, 2: {note}"]
    assert f"warning: rounds 0, 1, 2: {note}" in report.round_table(h).splitlines()
    both = record(0, 0.9, 0.0, case_dice_per_class={"halo": 0.0, "core": 0.0})
    assert review.run_notes([both]) == [
        f"round 0: {review.MISSED_CLASS_NOTE.format(n)}" for n in ("halo", "core")
    ]
    nothing = record(0, 0.9, 0.0, predicted=0, case_dice_per_class={"halo": 0.0, "core": 0.0})
    assert review.round_notes(nothing) == [review.NO_PREDICTION_NOTE]
    assert review.round_notes(record(0, 0.9, 0.0, case_dice_per_class={"target": 0.0})) == []


def test_the_baselines_notes_are_a_rounds_with_its_own_cap():
    """The supervised baseline is warned of as a round is (review.round_notes), with its own cap
    field to raise."""
    capped = record(0, 0.9, 0.3, epochs=100, best_epoch=99, config={"train.patience": 5})
    capped["case_dice_per_class"] = {"halo": 0.6, "core": 0.0}
    assert report_runs.baseline_notes(capped) == [
        f"supervised baseline: {review.MISSED_CLASS_NOTE.format('core')}",
        f"supervised baseline: {review.CAPPED_NOTE} (the best validation loss at the last of its "
        "100 epochs; raise sweep.supervised_max_epochs)",
    ]
    nothing = record(0, 0.9, 0.0, predicted=0, config={})
    assert report_runs.baseline_notes(nothing) == [
        f"supervised baseline: {review.NO_PREDICTION_NOTE}"
    ]


def test_summary_leads_with_case_dice_and_lists_the_warnings(tmp_path):
    for seed, case_dice in ((0, [0.2, 0.3, 0.4, 0.45, 0.5]), (1, [0.1, 0.35, 0.3, 0.5, 0.55])):
        h = with_case(
            history("entropy", "selective", seed, PCTS, [0.6, 0.7, 0.8, 0.9, 0.9]), case_dice
        )
        for rec in h:
            rec.update(test_cases=1, test_slices_with_target=7, test_slices_predicted_target=3)
            rec.update(epochs=5, best_epoch=1)
        h[-1].update(best_epoch=4)
        if seed == 1:
            h[2]["test_slices_predicted_target"] = 0
        write_run(str(tmp_path), h)
    baseline_dir = tmp_path / "supervised"
    baseline_dir.mkdir()
    # a baseline written before baselines kept their config
    (baseline_dir / "supervised.json").write_text(json.dumps({"dice": 0.85, "case_dice": 0.42}))
    paths = report.write_report(str(tmp_path))
    with open(paths["summary.md"]) as f:
        text = f.read()
    lines = text.splitlines()
    assert lines[0] == "### Case Dice (per test volume, mean over the test cases)"
    assert lines[2].startswith("| strategy | seeds | 10% |")
    # seed 0 reaches 0.42 at round 3 (40 slices, 20 %), seed 1 at round 3 too
    assert "| 40 ± 0 (20.0 ± 0.0%) |" in lines[4]
    highest = [0.5, 0.55]  # seed 1's round 2 predicts nothing, but it is not its highest anyway
    assert f"{np.mean(highest):.4f} ± {np.std(highest, ddof=1):.4f}" in lines[4]
    assert text.index("### Case Dice") < text.index("### Slice Dice (paper)")
    warnings = text[text.index("### Warnings") :]
    assert "* entropy selective, seed 0: round 4: training stopped at the epoch cap" in warnings
    assert f"* entropy selective, seed 1: round 2: {review.NO_PREDICTION_NOTE}" in warnings
    assert "* every run: the test metrics rest on one case" in warnings
    assert "* every run: the test split has 7 slices with target" in warnings
    assert "supervised baseline: recorded without its training config" in warnings
    with open(paths["summary.csv"]) as f:
        (row,) = list(csv.DictReader(f))
    case_last = [0.5, 0.55]
    np.testing.assert_allclose(float(row["case_dice_last_mean"]), np.mean(case_last), rtol=1e-12)
    np.testing.assert_allclose(
        float(row["case_dice_last_sd"]), np.std(case_last, ddof=1), rtol=1e-12
    )
    assert float(row["case_dice_at_20pct_n"]) == 2
    np.testing.assert_allclose(float(row["case_dice_at_20pct_mean"]), np.mean([0.45, 0.5]))
    np.testing.assert_allclose(float(row["baseline_reached_labelled_slices_mean"]), 40)
    assert float(row["baseline_reached_labelled_slices_sd"]) == 0.0
    np.testing.assert_allclose(float(row["slice_dice_highest_mean"]), 0.9)
    # every cell but the two names parses as a number; numpy reads the whole file
    for key, value in row.items():
        if key not in ("strategy", "decided_by"):
            float(value)
    table = np.genfromtxt(
        paths["summary.csv"], delimiter=",", names=True, dtype=None, encoding=None
    )
    np.testing.assert_allclose(table["case_hd95_mm_last_mean"], np.mean([5.0, 4.5]), rtol=1e-12)


def test_learning_curves_show_case_dice_beside_slice_dice():
    runs = {"random all": {}}
    case = {0: [0.2, 0.3, 0.5], 1: [0.1, 0.4, 0.3]}
    for seed in (0, 1):
        h = history("random", "all", seed, [5.0, 10.0, 15.0], [0.6, 0.7, 0.8 + seed / 10])
        runs["random all"][seed] = with_case(h, case[seed])
    baseline = report.Baseline(case_dice=0.45, dice=0.85)
    fig, (case_ax, slice_ax) = report_plots.curves_figure(
        runs, baseline, "pct_labelled", "% labelled"
    )
    line = case_ax.get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), [5.0, 10.0, 15.0])
    np.testing.assert_allclose(line.get_ydata(), np.mean([case[0], case[1]], axis=0))
    np.testing.assert_allclose(slice_ax.get_lines()[0].get_ydata(), [0.6, 0.7, 0.85])
    assert case_ax.get_lines()[1].get_ydata()[0] == 0.45  # the baseline, in each panel's Dice
    assert slice_ax.get_lines()[1].get_ydata()[0] == 0.85
    assert case_ax.get_title() == "case Dice" and slice_ax.get_title() == "slice Dice (paper)"
    import matplotlib.pyplot as plt

    plt.close(fig)


# ------------------------------------------------------------- end to end on the smoke cohort


def test_a_model_that_learns_nothing_is_flagged_and_never_highest(tmp_path, cohort_root, caplog):
    """A learning rate of 1e-12 (0 is refused) leaves the model at its head's prior (P = 0.01
    everywhere): it predicts no target. The log and the table say so, and no round is called
    highest on its slice Dice (about the fraction of empty test slices)."""
    caplog.set_level(logging.INFO, logger="absl")  # the rounds' lines are INFO
    config = smoke_config(**{"data.root": cohort_root, "train.learning_rate": 1e-12})
    workdir = str(tmp_path / "run")
    history_ = loop.run(config, workdir)
    assert all(rec["test_slices_predicted_target"] == 0 for rec in history_)
    assert all(rec["case_dice"] == 0.0 for rec in history_)
    empty = 1 - history_[0]["test_slices_with_target"] / 12  # 12 test slices; Dice 1 on empty
    assert history_[0]["dice"] == pytest.approx(empty, abs=1e-4)
    table = report.summary_text(history_, workdir)
    assert not re.search(r"highest[^\n]* at round", table)
    assert "no highest round: the model predicts no target" in table
    assert f"warning: every round: {review.NO_PREDICTION_NOTE}" in table.splitlines()
    for r in range(len(history_)):
        assert f"round {r}: {review.NO_PREDICTION_NOTE}" in caplog.text
    # the round's log line leads with the case metrics
    assert "round 0 | labelled 8 (11.1%) | case Dice 0.0000 | HD95 " in caplog.text
    # and the smoke cohort's test split (one case) is flagged at load
    assert "the test metrics rest on one case (synth_007)" in caplog.text


@pytest.fixture(scope="module")
def baseline_sweep(tmp_path_factory, cohort_root):
    config = smoke_config(**{"data.root": cohort_root, "al.rounds": 0, "train.max_epochs": 1})
    config.sweep.runs = "random:all"
    config.sweep.seeds = "0"
    config.sweep.supervised_max_epochs = 4
    config.sweep.supervised_patience = 2
    workdir = str(tmp_path_factory.mktemp("baseline_sweep"))
    sweep.run(config, workdir)
    return config, workdir


def read_baseline(workdir):
    with open(os.path.join(workdir, "supervised", "supervised.json")) as f:
        return json.load(f)


def test_the_baseline_has_its_own_budget_and_records_its_config(baseline_sweep):
    config, workdir = baseline_sweep
    stored = read_baseline(workdir)
    # its own cap (4), not the sweep's train.max_epochs (1)
    assert stored["config"]["train.max_epochs"] == 4 and stored["config"]["train.patience"] == 2
    assert 1 < stored["epochs"] <= 4
    with open(os.path.join(workdir, "seed-0", "random-all", "records.jsonl")) as f:
        assert json.loads(f.readline())["epochs"] == 1  # the runs keep the sweep's cap
    assert stored["fingerprint"] and stored["case_dice"] is not None
    from selal_jax.base import schema

    assert schema.defaults().sweep.supervised_max_epochs == 100  # the paper's protocol
    assert schema.defaults().sweep.supervised_patience == 5


def test_a_sweep_rerun_with_another_training_config_retrains_the_baseline(baseline_sweep, caplog):
    config, workdir = baseline_sweep
    path = os.path.join(workdir, "supervised", "supervised.json")
    before = os.path.getmtime(path)
    sweep.run(config, workdir)  # the same config: reused
    assert os.path.getmtime(path) == before
    changed = config.copy_and_resolve_references()
    changed.train.learning_rate = 5e-3
    changed.allow_config_change = True  # the sweep's runs accept it; the baseline is retrained
    sweep.run(changed, workdir)
    stored = read_baseline(workdir)
    assert stored["config"]["train.learning_rate"] == 5e-3
    assert "(train.learning_rate: 0.01 -> 0.005); retraining the supervised baseline" in caplog.text
    # a baseline written before baselines kept their config: retrained
    legacy = {k: v for k, v in stored.items() if k not in ("config", "fingerprint")}
    with open(path, "w") as f:
        json.dump(legacy, f)
    record = sweep.train_supervised(sweep.run_config(changed, workdir, 0), os.path.dirname(path))
    assert record["config"]["train.learning_rate"] == 5e-3 and "fingerprint" in record
    assert "written before baselines recorded their training config" in caplog.text
