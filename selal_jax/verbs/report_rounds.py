"""One run's round table, what `launch.py run` prints at its end: per round the case Dice and
HD95 first (per class where there are classes), the slice Dice (paper) beside them; then the
highest round by case Dice (`report_runs.highest`), what a reviewer would raise
(`run.review.run_notes`) and the last query.
"""

from __future__ import annotations

from selal_jax.run import loop, review
from selal_jax.verbs import report_runs as runs_lib
from selal_jax.verbs.report_runs import CASE, NOT_COMPUTED, SLICE
from selal_jax.verbs.report_tables import last_query, markdown_table, queried_slices_text


def summary_text(history: list[dict], workdir: str) -> str:
    """What `launch.py run` prints at the end: the round table and any awaited next step."""
    message = loop.awaiting_message(history, workdir)
    return round_table(history) + (f"\n{message}" if message else "")


def _number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def round_rows(history: list[dict]) -> tuple[list[dict], dict]:
    """(rows, titles) of the round table: round, labelled, % labelled, case Dice, HD95 (mm),
    [case Dice per class], slice Dice (paper), its global Dice, [slice Dice per class]."""
    names = runs_lib.class_names(history)
    several = len(names) > 1
    titles = {
        "round": "round",
        "labelled": "labelled",
        "pct": "% labelled",
        "case": "case Dice",
        "hd95": "HD95 (mm)",
        **({f"case {n}": f"case Dice {n}" for n in names} if several else {}),
        "slice": "slice Dice (paper)",
        "global": "slice Dice, global",
        **({f"slice {n}": f"slice Dice {n}" for n in names} if several else {}),
    }
    rows = []
    for rec in history:
        row = {
            "round": str(rec["round"]),
            "labelled": str(rec["n_labelled"]),
            "pct": f"{rec['pct_labelled']:.1f}",
            "case": _number(runs_lib.dice(rec, CASE), 4),
            "hd95": _number(runs_lib.case_value(rec, "case_hd95"), 2),
            "slice": f"{rec['dice']:.4f}",
            "global": f"{rec['dice_global']:.4f}",
        }
        for n in names if several else ():
            row[f"case {n}"] = _number(runs_lib.class_dice(rec, CASE, n), 4)
            row[f"slice {n}"] = _number(runs_lib.class_dice(rec, SLICE, n), 4)
        rows.append(row)
    return rows, titles


def closing_line(history: list[dict]) -> str:
    """'highest case Dice 0.6034 at round 2 (20 labelled slices; HD95 5.12 mm; slice Dice
    (paper) 0.7021)'; without case Dice, the explicit fallback on the slice Dice; never a round
    whose model predicts no target."""
    by = runs_lib.decided_by([history])
    best = runs_lib.highest(history, by)
    prefix = "" if by == CASE else f"{NOT_COMPUTED}; "
    if best is None:
        return (
            prefix + "no highest round: the model predicts no target on the test split in any round"
        )
    where = f"at round {best['round']} ({best['n_labelled']} labelled slices"
    if by == CASE:
        hd95 = runs_lib.case_value(best, "case_hd95")
        line = f"highest case Dice {runs_lib.dice(best, CASE):.4f} {where}"
        line += "" if hd95 is None else f"; HD95 {hd95:.2f} mm"
        line += f"; slice Dice (paper) {best['dice']:.4f})"
    else:
        line = f"{prefix}highest by slice Dice (paper): {best['dice']:.4f} {where})"
    left_out = [rec["round"] for rec in history if review.predicts_nothing(rec)]
    if left_out:
        line += f"; {review.rounds_text(left_out, 0)} left out: no target predicted"
    return line


def round_table(history: list[dict]) -> str:
    """The table of one run (`round_rows`), its closing line, warnings and last query."""
    if not history:
        return "(no completed rounds)"
    rows, titles = round_rows(history)
    lines = [markdown_table(rows, titles, list(titles), text_columns=0), "", closing_line(history)]
    lines += [f"warning: {note}" for note in review.run_notes(history)]
    last = last_query(history)
    if last is not None:
        lines.append(queried_slices_text(*last))
    return "\n".join(lines)
