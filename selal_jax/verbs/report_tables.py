"""Markdown and CSV text of report rows, and the cells that hold their numbers.

A row is a dict {CSV key: cell}. A cell is text, a number, or one of the classes below, which
hold the numbers over seeds behind it: markdown shows them as 'mean ± sd' (or as the text
their `text()` gives), CSV as numbers in their own columns (`<key>_mean`, `<key>_sd`,
`<key>_n`, and for intervals `<key>_ci_low`, `<key>_ci_high`; NaN where undefined), so that
pandas and the csv module read every number as a number. CSV keys carry their unit
(`case_hd95_mm_last`); markdown titles are given apart (`markdown_table`'s `titles`).

Used by `selal_jax.verbs.report`, which builds the rows from a run's records.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from selal_jax.core import stats

NAN = float("nan")


class Stat:
    """Numbers over seeds (None: a seed without one, left out and said: '[1 of 2 seeds]'):
    markdown 'mean ± sd', the one value, or '-' for none; CSV <key>_mean, <key>_sd (sample,
    ddof 1), <key>_n."""

    def __init__(self, values, digits: int = 4):
        values = list(values)
        self.values = [float(v) for v in values if v is not None]
        self.of = len(values)
        self.digits = digits

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else NAN

    @property
    def sd(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else NAN

    def number(self, value: float) -> str:
        return f"{value:.{self.digits}f}"

    def text(self) -> str:
        if not self.n:
            return "-"
        if self.n == 1:
            return self.number(self.mean) + seeds_note(self.n, self.of)
        return f"{self.number(self.mean)} ± {self.number(self.sd)}" + seeds_note(self.n, self.of)

    def columns(self, key: str) -> dict:
        return {f"{key}_mean": self.mean, f"{key}_sd": self.sd, f"{key}_n": self.n}


class Interval(Stat):
    """Numbers over seeds with the 95 % bootstrap interval of their mean (`core.stats`): none
    from fewer than stats.MIN_BOOTSTRAP_N seeds, whose values markdown lists instead
    ('0.7000 (seeds 0.6000, 0.7000, 0.8000)'); CSV adds <key>_ci_low, <key>_ci_high (NaN
    without an interval). `signed`: numbers with their sign (differences)."""

    def __init__(self, values, digits: int = 4, signed: bool = False):
        super().__init__(values, digits)
        self.signed = signed
        self.interval = stats.bootstrap_interval(self.values)

    def number(self, value: float) -> str:
        return f"{value:+.{self.digits}f}" if self.signed else super().number(value)

    def text(self) -> str:
        if not self.n:
            return "-"
        mean = self.number(self.mean)
        if self.interval is not None:
            lo, hi = self.interval
            return f"{mean} [{self.number(lo)}, {self.number(hi)}]" + seeds_note(self.n, self.of)
        if self.n == 1:
            return f"{mean} (1 seed)" + seeds_note(self.n, self.of)
        values = ", ".join(self.number(v) for v in self.values)
        return f"{mean} (seeds {values})" + seeds_note(self.n, self.of)

    def columns(self, key: str) -> dict:
        lo, hi = self.interval if self.interval is not None else (NAN, NAN)
        return {**super().columns(key), f"{key}_ci_low": lo, f"{key}_ci_high": hi}


class Paired(Interval):
    """A paired comparison (`stats.paired_comparison`): the per-seed differences as an
    Interval, and the Wilcoxon p (markdown '..., p 0.25'; CSV <key>_wilcoxon_p)."""

    def __init__(self, paired: dict, digits: int = 4):
        super().__init__(paired["differences"], digits, signed=True)
        self.p = paired["p"]

    def text(self) -> str:
        text = super().text()
        return text if self.p is None else f"{text}, p {self.p:.4g}"

    def columns(self, key: str) -> dict:
        p = NAN if self.p is None else self.p
        return {**super().columns(key), f"{key}_wilcoxon_p": p}


class Number:
    """One number: CSV the number, markdown `text` (default: the number)."""

    def __init__(self, value: float, text: str | None = None):
        self.value, self._text = value, text

    def text(self) -> str:
        return str(self.value) if self._text is None else self._text

    def columns(self, key: str) -> dict:
        return {key: self.value}


class Reached(Stat):
    """Where the runs first reach the baseline, over seeds: markdown '30 (15.0%) [1 of 2
    seeds]' ('/' if none does); CSV <key>_labelled_slices_* and <key>_pct_labelled_*."""

    def __init__(self, records: list[dict | None]):
        super().__init__([None if r is None else r["n_labelled"] for r in records], digits=0)
        self.pct = Stat([r["pct_labelled"] for r in records if r is not None], digits=1)

    def text(self) -> str:
        if not self.n:
            return "/"
        slices = Stat(self.values, 0).text()
        return f"{slices} ({self.pct.text()}%)" + seeds_note(self.n, self.of)

    def columns(self, key: str) -> dict:
        return {
            **super().columns(f"{key}_labelled_slices"),
            **self.pct.columns(f"{key}_pct_labelled"),
        }


def seeds_note(n: int, of: int) -> str:
    """' [2 of 3 seeds]' when only some seeds count, else ''."""
    return f" [{n} of {of} seeds]" if n < of else ""


def cell_text(cell) -> str:
    return cell.text() if hasattr(cell, "text") else str(cell)


def markdown_table(rows: list[dict], titles: dict | None = None, keys=None, text_columns=1) -> str:
    """The rows' `keys` (default: every key of the first row) as a markdown table, headed by
    `titles` (default: the keys); the first `text_columns` left-aligned, the rest right."""
    if not rows:
        return "(no runs found)"
    keys = list(keys or rows[0])
    titles = titles or {}
    n_text = min(text_columns, len(keys))
    lines = [
        "| " + " | ".join(titles.get(k, k) for k in keys) + " |",
        "|" + "|".join(["---"] * n_text + ["---:"] * (len(keys) - n_text)) + "|",
    ]
    lines += ["| " + " | ".join(cell_text(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def csv_table(rows: list[dict]) -> str:
    """The rows as CSV: a cell with `columns` in its own numeric columns, other cells as they
    are (a float as Python writes it, NaN as 'nan': every number parses as a float)."""
    flat = []
    for row in rows:
        out = {}
        for key, cell in row.items():
            out.update(cell.columns(key) if hasattr(cell, "columns") else {key: cell})
        flat.append(out)
    text = io.StringIO()
    if flat:
        writer = csv.DictWriter(text, fieldnames=list(flat[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
    return text.getvalue()


def last_query(history: list[dict]) -> tuple[int, list] | None:
    """(round, [[case, slice index], ...]) of the last round of a run that queried slices and
    recorded where they come from (`queried_slices`); None if none did."""
    for record in reversed(history):
        if record.get("queried") and record.get("queried_slices"):
            return record["round"], record["queried_slices"]
    return None


def queried_slices_text(round_index: int, slices: list) -> str:
    """'round 3 queried 4 slices (case:slice, in selection order): a:12, a:17, b:3, c:40'."""
    listed = ", ".join(f"{case}:{index}" for case, index in slices)
    return (
        f"round {round_index} queried {len(slices)} slices (case:slice, in selection order): "
        f"{listed}"
    )


def last_queries_markdown(runs: dict[str, dict[int, list[dict]]]) -> str:
    """summary.md's list of each run's (and seed's) last query, case:slice in selection order."""
    lines = []
    for name, by_seed in runs.items():
        for seed in sorted(by_seed):
            last = last_query(by_seed[seed])
            if last is not None:
                lines.append(f"* {name}, seed {seed}: {queried_slices_text(*last)}")
    if not lines:
        return ""
    return "\n".join(["\n\n### Last query of each run", *lines])
