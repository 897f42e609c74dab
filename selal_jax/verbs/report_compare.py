"""The field's comparison of a report's runs, on per-case Dice: the pairwise penalty matrix and
the area under the budget curve (AUBC). penalty.md/.csv and aubc.md/.csv.

`runs` is `report.load_runs`'s {run name: {seed: history}}; `value(record)` is the record's
per-case Dice (`report.case_value(record, "case_dice")`: the mean over the test cases, and over
the classes; None where not recorded).

Pairwise penalty matrix: Ash et al., "Deep Batch Active Learning by Diverse, Uncertain Gradient
Lower Bounds" (BADGE, ICLR 2020), section 4 "Pairwise comparisons", as nnActive (MIC-DKFZ,
nnactive/analyze/metrics.py, `PairwisePenaltyMatrix`, adapted from BADGE's
scripts/agg_results.py) computes it:

* The budgets of two runs: the labelled-set sizes (`n_labelled`) after round 0 at which both
  have a per-case Dice for at least 2 common seeds. Round 0 is left out: the runs of a sweep
  share its model, so it ties by construction.
* At a budget, run A beats run B when the two-sided paired t-test of A - B over the seeds both
  have there (`stats.paired_t_test`, scipy.stats.ttest_rel, paired by seed) gives p < 0.05 and
  the mean difference is > 0: BADGE's and nnActive's `ttest_1samp(A - B, 0)` with p < 0.05,
  the sign of the mean deciding the winner (one test, so at most one of A, B wins). BADGE
  pairs its first min(n_A, n_B, 5) runs in file order; here the pairs are the seeds. (nnActive's
  code has also carried a one-sided 'less' variant; this is the two-sided test of BADGE's
  scripts/agg_results.py and of nnActive's `PairwisePenaltyMatrix.from_df`.)
* Cell (row A, column B) = the budgets at which A beats B / the budgets of A and B; "n/a" when
  they have none (fewer than 2 common seeds: no test, which is not the same as 0 wins). Rows
  beat columns, as BADGE's and nnActive's figures show it (their dict stores the transpose).
* The row "mean beaten" is each column's mean over the other rows (nnActive's "Mean" row): the
  fraction of comparisons its run loses; lower is better. n/a cells are left out.
* Every budget counts (as nnActive; BADGE stops where random reaches 99 % of its final
  accuracy), and no correction for the many tests is made (neither makes one): with 3 seeds a
  t-test rarely reaches p < 0.05, so a sparse matrix says the seeds cannot separate the runs.

AUBC (area under the budget curve, Zhan et al., IJCAI 2021; nnActive's `compute_auc`): per seed,
the trapezoid area under per-case Dice against the labelled slices, round 0 included, divided by
the range of labelled slices (the curve's mean height: a constant curve c gives c; with equal
steps this is nnActive's evenly spaced budgets). Over seeds: the mean, with the 95 % bootstrap
interval of `stats.bootstrap_interval` from stats.MIN_INTERVAL_SEEDS seeds on; with fewer, each
seed's value instead.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import os

import numpy as np

from selal_jax.base import atomic
from selal_jax.core import stats

NOT_TESTED = "n/a"  # a pair without a budget at which 2 seeds can be compared


def by_budget(history: list[dict], value) -> dict[int, float]:
    """{n_labelled: per-case Dice} of a run's rounds after round 0 that recorded one."""
    out = {}
    for rec in history:
        v = value(rec)
        if rec["round"] > 0 and v is not None:
            out[int(rec["n_labelled"])] = v
    return out


def penalty_matrix(runs, value, alpha: float = stats.ALPHA) -> dict[str, dict[str, tuple]]:
    """{row run: {column run: (wins, budgets)}} for every ordered pair of different runs (see
    the module docstring; budgets 0 is n/a)."""
    curves = {
        name: {s: by_budget(h, value) for s, h in by_seed.items()} for name, by_seed in runs.items()
    }
    matrix = {}
    for a in runs:
        matrix[a] = {}
        for b in runs:
            if a == b:
                continue
            budgets = sorted({n for c in curves[a].values() for n in c})
            wins = tested = 0
            for n in budgets:
                test = stats.paired_t_test(
                    {s: c.get(n) for s, c in curves[a].items()},
                    {s: c.get(n) for s, c in curves[b].items()},
                )
                if test["p"] is None:  # fewer than 2 common seeds at this budget
                    continue
                tested += 1
                wins += int(test["p"] < alpha and test["mean"] > 0)
            matrix[a][b] = (wins, tested)
    return matrix


def fraction(cell: tuple) -> float | None:
    wins, budgets = cell
    return wins / budgets if budgets else None


def mean_beaten(matrix: dict, column: str) -> float | None:
    """The mean over the other rows of `column`'s cells (n/a left out); None if all are n/a."""
    values = [fraction(row[column]) for name, row in matrix.items() if name != column]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def penalty_markdown(matrix: dict, alpha: float = stats.ALPHA) -> str:
    names = list(matrix)
    if len(names) < 2:
        return "(one run: nothing to compare)"

    def cell(v):
        return NOT_TESTED if v is None else f"{v:.2f}"

    lines = [
        "| row beats column | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for a in names:
        cells = ["-" if a == b else cell(fraction(matrix[a][b])) for b in names]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines.append(
        "| **mean beaten** | " + " | ".join(cell(mean_beaten(matrix, b)) for b in names) + " |"
    )
    counts = sorted({matrix[a][b][1] for a in names for b in names if a != b})
    if counts == [0]:
        budgets = "No pair has 2 common seeds at any budget: nothing could be tested"
    elif len(counts) == 1:
        budgets = f"{counts[0]} budget{'s' if counts[0] != 1 else ''} per pair"
    else:
        budgets = f"{counts[0]} to {counts[-1]} budgets per pair"
    lines.append(
        "\nPairwise penalty matrix of per-case Dice (Ash et al., BADGE, ICLR 2020, as nnActive "
        "computes it): a cell is the fraction of budgets (labelled-set sizes after round 0 that "
        "both runs reached; round 0 is shared) at which the row's per-case Dice beats the "
        "column's: a two-sided paired t-test across seeds (scipy.stats.ttest_rel, paired by "
        f"seed) with p < {alpha} and a positive mean difference. {budgets}. "
        f"{NOT_TESTED}: fewer than 2 common seeds at every budget (no test, not 0 wins). "
        "mean beaten: the column's mean over the rows, the fraction of comparisons it loses "
        "(lower is better). No correction for multiple tests; with few seeds the t-test "
        "rarely reaches significance, so an empty matrix means the seeds cannot separate the runs."
    )
    return "\n".join(lines)


def penalty_csv(matrix: dict) -> str:
    """The matrix as numbers (fractions; 'n/a' where untested, which pandas reads as NaN; the
    diagonal empty) and the 'mean beaten' row."""
    names = list(matrix)
    rows = []
    for a in names:
        rows.append(
            [a] + ["" if a == b else _number(fraction(matrix[a][b]), NOT_TESTED) for b in names]
        )
    rows.append(["mean beaten"] + [_number(mean_beaten(matrix, b), NOT_TESTED) for b in names])
    return _csv(["run", *names], rows)


def aubc(history: list[dict], value) -> float | None:
    """Trapezoid area under per-case Dice against labelled slices, divided by the range of
    labelled slices; None with fewer than 2 rounds with a per-case Dice."""
    points = [(rec["n_labelled"], value(rec)) for rec in history]
    points = [(x, y) for x, y in points if y is not None]
    if len(points) < 2:
        return None
    x, y = (np.asarray(v, np.float64) for v in zip(*points, strict=True))
    width = x[-1] - x[0]
    if width <= 0:
        return None
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / width)


def aubc_rows(runs, value) -> list[dict]:
    """Per run: {'run', 'seeds', 'labelled', 'mean', 'interval', 'values'} with values {seed:
    AUBC} (seeds without one left out) and interval the bootstrap interval from
    stats.MIN_INTERVAL_SEEDS seeds on, else None."""
    rows = []
    for name, by_seed in runs.items():
        values = {s: aubc(by_seed[s], value) for s in sorted(by_seed)}
        values = {s: v for s, v in values.items() if v is not None}
        spans = sorted({(h[0]["n_labelled"], h[-1]["n_labelled"]) for h in by_seed.values()})
        enough = len(values) >= stats.MIN_INTERVAL_SEEDS
        rows.append(
            {
                "run": name,
                "seeds": len(values),
                "labelled": ", ".join(f"{lo}-{hi}" for lo, hi in spans),
                "mean": float(np.mean(list(values.values()))) if values else None,
                "interval": stats.bootstrap_interval(list(values.values())) if enough else None,
                "values": values,
            }
        )
    return rows


def aubc_markdown(rows: list[dict]) -> str:
    lines = [
        "| run | seeds | labelled slices | AUBC | 95% CI or per-seed values |",
        "|---|---:|---|---:|---|",
    ]
    for row in rows:
        if row["mean"] is None:
            spread = "-"
        elif row["interval"] is not None:
            spread = f"[{row['interval'][0]:.4f}, {row['interval'][1]:.4f}]"
        else:
            spread = ", ".join(f"seed {s}: {v:.4f}" for s, v in row["values"].items())
        mean = "-" if row["mean"] is None else f"{row['mean']:.4f}"
        lines.append(f"| {row['run']} | {row['seeds']} | {row['labelled']} | {mean} | {spread} |")
    lines.append(
        "\nAUBC: area under the budget curve of per-case Dice (trapezoids over the labelled "
        "slices, round 0 included, divided by their range: the curve's mean height), per seed; "
        "the mean over seeds, with a 95 % percentile bootstrap interval of the mean "
        f"({stats.BOOTSTRAP_RESAMPLES:,} resamples, numpy default_rng({stats.BOOTSTRAP_SEED})) "
        f"from {stats.MIN_INTERVAL_SEEDS} seeds on; with fewer, each seed's value (an interval "
        "from so few is degenerate). '-': no per-case Dice in the records (eval.cases off)."
    )
    return "\n".join(lines)


def aubc_csv(rows: list[dict]) -> str:
    """One row per run, numbers as numbers: the mean, the interval's ends (empty below
    stats.MIN_INTERVAL_SEEDS seeds) and one column per seed."""
    seeds = sorted({s for row in rows for s in row["values"]})
    header = ["run", "seeds", "labelled_slices", "aubc_mean", "aubc_ci95_low", "aubc_ci95_high"]
    out = []
    for row in rows:
        lo, hi = row["interval"] or (None, None)
        out.append(
            [row["run"], row["seeds"], row["labelled"], _number(row["mean"]), _number(lo),
             _number(hi)] + [_number(row["values"].get(s)) for s in seeds]
        )  # fmt: skip
    return _csv(header + [f"aubc_seed_{s}" for s in seeds], out)


def _number(v: float | None, missing: str = "") -> str:
    return missing if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))


def _csv(header: list[str], rows: list[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def write_comparison(runs, out_dir: str, case_value) -> dict[str, str]:
    """Writes penalty.md/.csv and aubc.md/.csv to `out_dir`; returns {name: path}.
    `case_value(record, field)`: `report.case_value`."""
    value = functools.partial(case_value, field="case_dice")
    matrix = penalty_matrix(runs, value)
    rows = aubc_rows(runs, value)
    paths = {}
    for name, text in (
        ("penalty.md", penalty_markdown(matrix)),
        ("penalty.csv", penalty_csv(matrix)),
        ("aubc.md", aubc_markdown(rows)),
        ("aubc.csv", aubc_csv(rows)),
    ):
        paths[name] = os.path.join(out_dir, name)
        with atomic.atomic_open(paths[name], "w") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    return paths
