"""Tables from a run's per-round records."""

from __future__ import annotations


def round_table(history: list[dict]) -> str:
    """The paper-style table of one run: Dice per round and the highest Dice."""
    if not history:
        return "(no completed rounds)"
    lines = [
        "| round | labelled | % labelled | Dice (mean per slice) | Dice (global) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for rec in history:
        lines.append(
            f"| {rec['round']} | {rec['n_labelled']} | {rec['pct_labelled']:.1f} | "
            f"{rec['dice']:.4f} | {rec['dice_global']:.4f} |"
        )
    best = max(history, key=lambda rec: rec["dice"])
    lines.append(
        f"\nhighest Dice {best['dice']:.4f} at round {best['round']} ({best['n_labelled']} labelled slices)"
    )
    return "\n".join(lines)
