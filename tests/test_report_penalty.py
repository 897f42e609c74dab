"""The penalty matrix and the AUBC of per-case Dice against hand computations on made-up
records (the t-test by its formula and scipy.stats.t, the bootstrap by NumPy)."""

import csv
import io
import itertools
import json
import os

import numpy as np
import pytest
from scipy import stats as sps

from selal_jax.core import stats
from selal_jax.verbs import report, report_comparison, report_penalty, report_tables

LABELLED = [20, 30, 40, 50]  # round 0 .. 3
# case Dice per run, seed and round (round 0 shared, as in a sweep)
CASE_DICE = {
    "good": {0: [0.30, 0.50, 0.60, 0.70], 1: [0.32, 0.52, 0.63, 0.71], 2: [0.28, 0.49, 0.58, 0.69]},
    "mid": {0: [0.30, 0.40, 0.58, 0.60], 1: [0.32, 0.41, 0.64, 0.62], 2: [0.28, 0.39, 0.55, 0.61]},
    "bad": {0: [0.30, 0.35, 0.40, 0.72], 1: [0.32, 0.30, 0.45, 0.60], 2: [0.28, 0.33, 0.41, 0.65]},
}


def history(strategy, seed, dices, labelled=LABELLED):
    return [
        {
            "round": r,
            "n_labelled": n,
            "pct_labelled": 100.0 * n / 200,
            "dice": 0.9,
            "dice_global": 0.9,
            "case_dice": d,
            "strategy": strategy,
            "mode": "all",
            "seed": seed,
            "queried": [],
        }
        for r, (n, d) in enumerate(zip(labelled, dices, strict=True))
    ]


def made_up_runs(table=CASE_DICE):
    return {
        f"{name} all": {s: history(name, s, d) for s, d in by_seed.items()}
        for name, by_seed in table.items()
    }


def t_test_by_hand(a, b):
    """Two-sided paired t-test by its formula: t = mean(d) / (sd(d) / sqrt(n)), n - 1 dof."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    n = len(d)
    t = d.mean() / (d.std(ddof=1) / np.sqrt(n))
    return d.mean(), 2 * sps.t.sf(abs(t), n - 1)


def test_paired_t_test_is_the_formula_and_needs_two_seeds():
    a, b = {0: 0.5, 1: 0.62, 2: 0.7, 3: None}, {0: 0.4, 1: 0.6, 2: 0.55, 5: 0.1}
    out = stats.paired_t_test(a, b)
    mean, p = t_test_by_hand([0.5, 0.62, 0.7], [0.4, 0.6, 0.55])
    assert out["seeds"] == [0, 1, 2]
    np.testing.assert_allclose([out["mean"], out["p"]], [mean, p], rtol=1e-12)
    assert stats.paired_t_test({0: 0.5}, {0: 0.4})["p"] is None  # one pair: no test
    assert np.isnan(stats.paired_t_test({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})["p"])  # no difference


def test_penalty_matrix_cells_by_hand():
    runs = made_up_runs()
    matrix = report_penalty.penalty_matrix(runs)
    names = list(runs)
    for a, b in itertools.permutations(names, 2):
        wins = 0
        for r in (1, 2, 3):  # round 0 left out
            x = [runs[a][s][r]["case_dice"] for s in (0, 1, 2)]
            y = [runs[b][s][r]["case_dice"] for s in (0, 1, 2)]
            mean, p = t_test_by_hand(x, y)
            wins += int(p < 0.05 and mean > 0)
        assert matrix[a][b] == (wins, 3), (a, b)
    # what the made-up numbers were built to show
    assert report_penalty.fraction(matrix["good all"]["bad all"]) == pytest.approx(2 / 3)
    assert matrix["bad all"]["good all"] == (0, 3)  # round 3: bad is higher, not significantly
    # mean beaten: the column's mean over the other rows
    beaten = np.mean([matrix["good all"]["bad all"][0] / 3, matrix["mid all"]["bad all"][0] / 3])
    assert report_penalty.mean_beaten(matrix, "bad all") == pytest.approx(beaten)


def penalty_csv(matrix):
    return list(
        csv.reader(io.StringIO(report_tables.csv_table(report_penalty.penalty_rows(matrix))))
    )


def test_one_seed_gives_na_not_zero_and_the_csv_reads_as_numbers(tmp_path):
    runs = {name: {0: by_seed[0]} for name, by_seed in made_up_runs().items()}
    matrix = report_penalty.penalty_matrix(runs)
    assert all(cell == (0, 0) for row in matrix.values() for cell in row.values())
    text = report_penalty.penalty_markdown(matrix)
    row = next(line for line in text.splitlines() if line.startswith("| good all |"))
    assert row == "| good all | - | n/a | n/a |"
    assert "0.00" not in text.split("\n\n")[0]
    assert "nothing could be tested" in text
    table = penalty_csv(matrix)
    assert table[0] == ["strategy", "good all", "mid all", "bad all"]
    assert table[1][0] == "good all" and table[-1][0] == "mean beaten"
    # every cell a number: NaN on the diagonal and where untested (not 0 wins)
    assert all(np.isnan(float(v)) for line in table[1:] for v in line[1:])
    # with three seeds the cells are numbers
    table = penalty_csv(report_penalty.penalty_matrix(made_up_runs()))
    assert float(table[1][3]) == pytest.approx(2 / 3) and np.isnan(float(table[1][1]))


def test_budgets_pair_seeds_present_in_both_and_runs_of_unequal_length():
    table = {k: dict(v) for k, v in CASE_DICE.items()}
    runs = made_up_runs(table)
    runs["good all"][2] = runs["good all"][2][:3]  # seed 2 stopped after round 2
    matrix = report_penalty.penalty_matrix(runs)
    # round 3: seeds 0 and 1 pair (two seeds: still a test)
    x = [runs["good all"][s][3]["case_dice"] for s in (0, 1)]
    y = [runs["mid all"][s][3]["case_dice"] for s in (0, 1)]
    mean, p = t_test_by_hand(x, y)
    wins_r12 = sum(
        int(m > 0 and q < 0.05)
        for m, q in (
            t_test_by_hand(
                [runs["good all"][s][r]["case_dice"] for s in (0, 1, 2)],
                [runs["mid all"][s][r]["case_dice"] for s in (0, 1, 2)],
            )
            for r in (1, 2)
        )
    )
    assert matrix["good all"]["mid all"] == (wins_r12 + int(mean > 0 and p < 0.05), 3)
    # records without a case Dice are no budget
    for h in runs["bad all"].values():
        for rec in h:
            rec.pop("case_dice")
    matrix = report_penalty.penalty_matrix(runs)
    assert matrix["good all"]["bad all"] == (0, 0)


def trapezoid_by_hand(x, y):
    area = sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))
    return area / (x[-1] - x[0])


def numpy_bootstrap(values, resamples=10_000, seed=0):
    rng = np.random.default_rng(seed)
    x = np.asarray(values, np.float64)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    return tuple(np.percentile(means, [2.5, 97.5]))


def test_aubc_by_hand_values_below_five_seeds_and_an_interval_from_five():
    runs = made_up_runs()
    rows = {row["strategy"]: row for row in report_comparison.aubc_rows(runs)}
    good = rows["good all"]
    expected = [trapezoid_by_hand(LABELLED, d) for d in CASE_DICE["good"].values()]
    np.testing.assert_allclose(good["case_dice_aubc"].values, expected, rtol=1e-12)
    assert good["case_dice_aubc"].interval is None and good["labelled_slices"].text() == "20-50"
    text = report_comparison.aubc_markdown(list(rows.values()))
    values = ", ".join(f"{v:.4f}" for v in expected)
    assert f"| good all | 3 | 20-50 | {np.mean(expected):.4f} (seeds {values}) |" in text
    assert "No interval from fewer than 5 seeds" in text
    table = {r["strategy"]: r for r in csv.DictReader(io.StringIO(report_tables.csv_table(
        list(rows.values())
    )))}  # fmt: skip
    assert float(table["good all"]["case_dice_aubc_seed_1"]) == pytest.approx(expected[1])
    assert np.isnan(float(table["good all"]["case_dice_aubc_ci_low"]))
    assert int(table["good all"]["labelled_slices_first"]) == 20
    assert int(table["good all"]["labelled_slices_last"]) == 50
    # five seeds: the bootstrap interval, computed independently
    five = {s: [0.3, 0.4 + 0.02 * s, 0.5 + 0.01 * s * s, 0.6] for s in range(5)}
    rows = report_comparison.aubc_rows(made_up_runs({"five": five}))
    values = [trapezoid_by_hand(LABELLED, five[s]) for s in range(5)]
    np.testing.assert_allclose(rows[0]["case_dice_aubc"].interval, numpy_bootstrap(values))
    table = list(csv.DictReader(io.StringIO(report_tables.csv_table(rows))))
    assert float(table[0]["case_dice_aubc_ci_low"]) == pytest.approx(numpy_bootstrap(values)[0])
    assert float(table[0]["case_dice_aubc_seed_4"]) == pytest.approx(values[4])
    # a round without a case Dice: no AUBC for that seed (as the nAUC), said as "[2 of 3 seeds]"
    runs = made_up_runs()
    runs["good all"][1][2].pop("case_dice")
    row = report_comparison.aubc_rows(runs)[0]
    assert row["case_dice_aubc"].n == 2 and "[2 of 3 seeds]" in row["case_dice_aubc"].text()


def test_the_report_writes_penalty_and_aubc(tmp_path):
    for name, by_seed in made_up_runs().items():
        for seed, h in by_seed.items():
            path = tmp_path / f"seed-{seed}" / name.replace(" ", "-")
            path.mkdir(parents=True)
            (path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in h))
    paths = report.write_report(str(tmp_path))
    for name in ("penalty.md", "penalty.csv", "aubc.md", "aubc.csv"):
        assert os.path.dirname(paths[name]) == str(tmp_path / "report")
    with open(paths["penalty.md"]) as f:
        assert "| good all | 0.67 | - |" in f.read()  # rows in folder order: bad, good, mid


def test_runs_without_a_case_dice_say_so_in_penalty_md(tmp_path):
    for name, by_seed in made_up_runs().items():
        for seed, h in by_seed.items():
            path = tmp_path / f"seed-{seed}" / name.replace(" ", "-")
            path.mkdir(parents=True)
            lines = [json.dumps({k: v for k, v in r.items() if k != "case_dice"}) for r in h]
            (path / "records.jsonl").write_text("\n".join(lines) + "\n")
    paths = report.write_report(str(tmp_path))
    with open(paths["penalty.md"]) as f:
        assert f.read().startswith("case Dice: not computed (eval.cases=False): no penalty")
    with open(paths["aubc.md"]) as f:
        assert "| good all | 3 | 20-50 | - |" in f.read()
