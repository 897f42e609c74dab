"""penalty.md/.csv: the pairwise penalty matrix of the report's runs on the case Dice.

`runs` is `report_runs.load_runs`'s {run name: {seed: history}}; a round's value is its case
Dice (`report_runs.dice(record, CASE)`: the mean over the test cases, and over the classes;
None where not recorded).

Ash et al., "Deep Batch Active Learning by Diverse, Uncertain Gradient Lower Bounds" (BADGE,
ICLR 2020), section 4 "Pairwise comparisons", as nnActive (MIC-DKFZ,
nnactive/analyze/metrics.py, `PairwisePenaltyMatrix`, adapted from BADGE's
scripts/agg_results.py) computes it:

* The budgets of two runs: the labelled-set sizes (`n_labelled`) after round 0 at which both
  have a case Dice for at least 2 common seeds. Round 0 is left out: the runs of a sweep share
  its model, so it ties by construction.
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

penalty.csv holds the same cells as numbers (`report_tables.csv_table`): the fractions, NaN on
the diagonal and where untested.
"""

from __future__ import annotations

import numpy as np

from selal_jax.core import stats
from selal_jax.verbs.report_runs import CASE, NOT_COMPUTED, dice
from selal_jax.verbs.report_tables import NAN, Number, csv_table, markdown_table

NOT_TESTED = "n/a"  # a pair without a budget at which 2 seeds can be compared
MEAN_BEATEN = "mean beaten"


def by_budget(history: list[dict]) -> dict[int, float]:
    """{n_labelled: case Dice} of a run's rounds after round 0 that recorded one."""
    out = {}
    for rec in history:
        v = dice(rec, CASE)
        if rec["round"] > 0 and v is not None:
            out[int(rec["n_labelled"])] = v
    return out


def penalty_matrix(runs, alpha: float = stats.ALPHA) -> dict[str, dict[str, tuple]]:
    """{row run: {column run: (wins, budgets)}} for every ordered pair of different runs (see
    the module docstring; budgets 0 is n/a)."""
    curves = {name: {s: by_budget(h) for s, h in by_seed.items()} for name, by_seed in runs.items()}
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


def _cell(value: float | None) -> Number:
    return Number(NAN, NOT_TESTED) if value is None else Number(value, f"{value:.2f}")


def penalty_rows(matrix: dict) -> list[dict]:
    """The matrix as report rows ({'strategy': row run, column run: Number}), then the 'mean
    beaten' row; the diagonal '-' (NaN in the CSV)."""
    names = list(matrix)
    rows = [
        {
            "strategy": a,
            **{b: Number(NAN, "-") if a == b else _cell(fraction(matrix[a][b])) for b in names},
        }
        for a in names
    ]
    rows.append({"strategy": MEAN_BEATEN, **{b: _cell(mean_beaten(matrix, b)) for b in names}})
    return rows


def penalty_markdown(matrix: dict, alpha: float = stats.ALPHA) -> str:
    names = list(matrix)
    if len(names) < 2:
        return "(one run: nothing to compare)"
    lines = [markdown_table(penalty_rows(matrix), {"strategy": "row beats column"})]
    counts = sorted({matrix[a][b][1] for a in names for b in names if a != b})
    if counts == [0]:
        budgets = "No pair has 2 common seeds at any budget: nothing could be tested"
    elif len(counts) == 1:
        budgets = f"{counts[0]} budget{'s' if counts[0] != 1 else ''} per pair"
    else:
        budgets = f"{counts[0]} to {counts[-1]} budgets per pair"
    lines.append(
        "\nPairwise penalty matrix of the case Dice (Ash et al., BADGE, ICLR 2020, as nnActive "
        "computes it): a cell is the fraction of budgets (labelled-set sizes after round 0 that "
        "both runs reached; round 0 is shared) at which the row's case Dice beats the "
        "column's: a two-sided paired t-test across seeds (scipy.stats.ttest_rel, paired by "
        f"seed) with p < {alpha} and a positive mean difference. {budgets}. "
        f"{NOT_TESTED}: fewer than 2 common seeds at every budget (no test, not 0 wins). "
        f"{MEAN_BEATEN}: the column's mean over the rows, the fraction of comparisons it loses "
        "(lower is better). No correction for multiple tests; with few seeds the t-test "
        "rarely reaches significance, so an empty matrix means the seeds cannot separate the runs."
    )
    return "\n".join(lines)


def penalty_tables(runs) -> list[tuple[str, str]]:
    """[(file name, text)] of penalty.md and penalty.csv."""
    matrix = penalty_matrix(runs)
    text = penalty_markdown(matrix)
    if not any(by_budget(h) for by_seed in runs.values() for h in by_seed.values()):
        text = f"{NOT_COMPUTED}: no penalty matrix (it compares the case Dice after round 0)."
    return [("penalty.md", text), ("penalty.csv", csv_table(penalty_rows(matrix)))]
