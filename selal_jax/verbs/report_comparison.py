"""comparison.md/.csv: strategies compared over seeds, and paired by seed against a reference;
aubc.md/.csv: the AUBC of the case Dice per run and seed.

Per strategy, the mean over seeds of the last round's and the highest case Dice, its AUBC
(`report_runs.aubc`), the last round's HD95, the highest slice Dice (paper) and its nAUC, each
with its 95 % percentile bootstrap interval (selal_jax.core.stats) from stats.MIN_BOOTSTRAP_N
seeds on, the seeds' values below that (`report_tables.Interval`); and, paired by seed against
a reference run (`report --reference=strategy:mode[:option=value...]`, `run_names`, default
'random all'), the differences of the last round's case Dice and of the nAUC: their mean,
interval and Wilcoxon p (`report_tables.Paired`).
"""

from __future__ import annotations

from selal_jax.base.errors import UserError
from selal_jax.core import stats
from selal_jax.verbs import run_names
from selal_jax.verbs.report_runs import (
    CASE,
    SLICE,
    aubc,
    case_value,
    dice,
    highest_dice,
    normalised_auc,
)
from selal_jax.verbs.report_tables import NAN, Interval, Number, Paired, markdown_table

DEFAULT_REFERENCE = "random all"


def per_seed(by_seed: dict[int, list[dict]]) -> dict[str, dict[int, float | None]]:
    """Per seed, the numbers the comparison is made of (keys as comparison.csv's)."""
    out = {
        "case_dice_last": lambda h: dice(h[-1], CASE),
        "case_dice_highest": lambda h: highest_dice(h, CASE),
        "case_dice_aubc": aubc,
        "case_hd95_mm_last": lambda h: case_value(h[-1], "case_hd95"),
        "slice_dice_highest": lambda h: highest_dice(h, SLICE),
        "slice_dice_nauc": normalised_auc,
    }
    return {key: {s: f(h) for s, h in by_seed.items()} for key, f in out.items()}


COMPARISON_TITLES = {
    "case_dice_last": "case Dice, last round",
    "case_dice_highest": "highest case Dice",
    "case_dice_aubc": "AUBC (case Dice)",
    "case_hd95_mm_last": "HD95 (mm), last round",
    "slice_dice_highest": "highest slice Dice (paper)",
    "slice_dice_nauc": "nAUC (slice Dice, paper)",
    "paired_seeds": "paired seeds",
    "delta_case_dice_last": "Δ case Dice, last round",
    "delta_slice_dice_nauc": "ΔnAUC (slice Dice, paper)",
}
PAIRED = {"delta_case_dice_last": "case_dice_last", "delta_slice_dice_nauc": "slice_dice_nauc"}
NO_PAIRS = {"differences": [], "p": None}  # the cells of the reference itself, or of no reference


def resolve_reference(runs: dict, reference: str | None) -> str | None:
    """The run name of `reference` (a run as sweep.runs writes it, `run_names.parse_run`:
    'strategy:mode[:option=value...]', 'strategy' meaning mode 'selective'); None gives
    'random all' if present. Raises a UserError (a ValueError) for a named one absent."""
    if reference is None:
        return DEFAULT_REFERENCE if DEFAULT_REFERENCE in runs else None
    spec = run_names.parse_run(str(reference), where="report --reference")
    name = run_names.label(run_names.spec_fields(spec))
    if name not in runs:
        raise UserError(
            f"report reference {reference!r}: no run {name!r} found; runs: {', '.join(runs)}"
        )
    return name


def comparison_rows(runs, reference: str | None) -> list[dict]:
    """Per strategy: the mean over seeds of the last round's and the highest case Dice, the
    last round's HD95, the highest slice Dice and its nAUC, each with its 95 % bootstrap
    interval from 5 seeds on (`report_tables.Interval`); and, paired by seed against the
    `reference` run, the differences of the last round's case Dice and of the nAUC (mean,
    interval, Wilcoxon p; `report_tables.Paired`)."""
    numbers = {name: per_seed(by_seed) for name, by_seed in runs.items()}
    rows = []
    for name, by_seed in runs.items():
        mine = numbers[name]
        row = {"strategy": name, "seeds": len(by_seed)}
        for key, values in mine.items():
            row[key] = Interval(values.values(), 2 if key.endswith("_mm_last") else 4)
        row["paired_seeds"] = Number(NAN, "reference" if reference == name else "-")
        row.update({key: Paired(NO_PAIRS) for key in PAIRED})
        notes = []
        if reference is not None and reference != name:
            for key, of in PAIRED.items():
                paired = stats.paired_comparison(mine[of], numbers[reference][of])
                row[key] = Paired(paired)
                row["paired_seeds"] = Number(len(paired["seeds"]))
                if paired["note"]:
                    notes.append(f"{COMPARISON_TITLES[key]}: {paired['note']}")
        row["reference"] = reference or ""
        row["note"] = "; ".join(notes)
        rows.append(row)
    return rows


def comparison_markdown(rows: list[dict], reference: str | None) -> str:
    keys = [k for k in rows[0] if k not in ("note", "reference")]
    lines = [markdown_table(rows, COMPARISON_TITLES, keys)]
    lines.append(
        "\n"
        + intervals_sentence(rows)
        + "Case Dice / HD95: each test volume at its own resolution, mean over the test cases; "
        "highest: the highest round, never one whose model predicts no target; AUBC: "
        "aubc.md."
    )
    if reference is None:
        lines.append(
            f"No paired comparison: no {DEFAULT_REFERENCE!r} run (choose one with "
            "--reference=strategy:mode[:option=value...], as sweep.runs writes it)."
        )
    else:
        lines.append(
            f"Paired by seed against {reference!r}: Δ = strategy - reference (per seed), "
            "then its mean; p: two-sided Wilcoxon signed-rank test of the differences "
            "(scipy.stats.wilcoxon)."
        )
    lines += [f"* {row['strategy']}: {row['note']}." for row in rows if row["note"]]
    return "\n".join(lines)


def intervals_sentence(rows: list[dict]) -> str:
    """What an Interval cell holds, and why some hold no interval (rows with 'seeds')."""
    few = min(int(row["seeds"]) for row in rows) < stats.MIN_BOOTSTRAP_N
    return (
        f"Cells: mean over seeds [95 % percentile bootstrap interval of the mean, "
        f"{stats.BOOTSTRAP_RESAMPLES:,} resamples of the seeds, numpy default_rng("
        f"{stats.BOOTSTRAP_SEED})]. "
    ) + (
        f"No interval from fewer than {stats.MIN_BOOTSTRAP_N} seeds: resampling so few "
        "values gives an interval no wider than their range, which reads as significant "
        "when it excludes 0; such cells list the seeds' values instead. "
        if few
        else ""
    )


AUBC_TITLES = {"labelled_slices": "labelled slices", "case_dice_aubc": "AUBC (case Dice)"}


def aubc_rows(runs) -> list[dict]:
    """Per run: its seeds, the labelled slices its curves span, the AUBC of the case Dice
    (`report_runs.aubc`) over seeds (`report_tables.Interval`: the interval from
    stats.MIN_BOOTSTRAP_N seeds on) and, for the CSV, each seed's AUBC (NaN where it has none)."""
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    rows = []
    for name, by_seed in runs.items():
        values = {s: aubc(h) for s, h in sorted(by_seed.items())}
        rows.append(
            {
                "strategy": name,
                "seeds": len(by_seed),
                "labelled_slices": _Span(by_seed.values()),
                "case_dice_aubc": Interval(values.values()),
                **{f"case_dice_aubc_seed_{s}": _or_nan(values.get(s)) for s in seeds},
            }
        )
    return rows


def _or_nan(value: float | None) -> float:
    return NAN if value is None else value


class _Span:
    """The labelled slices of runs' first and last rounds: markdown '20-100' (each span where
    seeds differ), CSV <key>_first and <key>_last (the fewest first, the most last)."""

    def __init__(self, hs):
        self.spans = sorted({(h[0]["n_labelled"], h[-1]["n_labelled"]) for h in hs})

    def text(self) -> str:
        return ", ".join(f"{lo}-{hi}" for lo, hi in self.spans)

    def columns(self, key: str) -> dict:
        first, last = zip(*self.spans, strict=True)
        return {f"{key}_first": min(first), f"{key}_last": max(last)}


def aubc_markdown(rows: list[dict]) -> str:
    keys = ["strategy", "seeds", "labelled_slices", "case_dice_aubc"]
    return "\n".join(
        [
            markdown_table(rows, AUBC_TITLES, keys, text_columns=1),
            "\nAUBC: the area under the budget curve of the case Dice, per seed (trapezoids "
            "over the labelled slices, round 0 included, divided by their range: the curve's "
            "mean height; Zhan et al., IJCAI 2021, as nnActive computes it). "
            + intervals_sentence(rows)
            + "'-': no seed with a case Dice in every round (eval.cases was off); aubc.csv "
            "gives each seed's AUBC.",
        ]
    )
