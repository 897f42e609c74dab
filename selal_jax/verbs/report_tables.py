"""Markdown and CSV text of report rows (one dict of string cells per row).

Used by `selal_jax.verbs.report`, which builds the rows from a run's records.
"""

from __future__ import annotations

import csv
import io


def markdown_table(rows: list[dict], baseline: float | None) -> str:
    if not rows:
        return "(no runs found)"
    columns = list(rows[0])
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    base = "none found" if baseline is None else f"{baseline:.4f}"
    lines.append(
        f"\nSupervised baseline Dice: {base}. Dice = mean per-slice Dice on the test split "
        "(with several classes: its mean over the foreground classes; see per_class.md). "
        "baseline at target pixels: the labelled target pixels (label > 0) the run had trained "
        "on when it first reached the baseline. case Dice / HD95: the last round's per-case "
        "evaluation. '-': not in the records."
    )
    return "\n".join(lines)


def class_markdown_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(columns) - 2)) + "|",
    ]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    lines.append("\nDice per foreground class on the test split: mean per slice, and global.")
    return "\n".join(lines)


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
    return "\n".join(["\n### Last query of each run", *lines])


def csv_table(rows: list[dict]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()
