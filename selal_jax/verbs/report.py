"""Tables and plots from the records of finished or partial runs (nothing is recomputed).

A report reads a run folder (`records.jsonl`) or a sweep folder (`seed-<s>/<strategy>-<mode>/
records.jsonl`, `supervised/supervised.json`, `seed-<s>/round0/pool_embeddings.npz`).

The summary table follows the paper: per strategy, Dice at 10, 15, ..., 35 % of the pool labelled
(the last round at or below each percentage, "-" if the run has not reached it), the highest
Dice, the labelled slices (and %) at which Dice first reaches the supervised baseline ("/"
if never) and the labelled target pixels there (the annotation cost; "-" for records written
before `labelled_target_pixels` existed). With several seeds each cell is mean +- standard
deviation over seeds, and a column gives the normalised area under the Dice-vs-%-labelled curve
(the trapezoid area divided by the width of the %-labelled range: the curve's mean Dice); the
last round's per-case Dice and HD95 follow when the records have them ("-" otherwise). With
several foreground classes the Dice is the mean over classes, and per_class.md/.csv give each
class. comparison.md/.csv give bootstrap intervals over seeds and the paired comparison against a
reference run (see `comparison_rows` and selal_jax.core.stats). The figures are drawn by
`selal_jax.verbs.report_plots`, the markdown and CSV text of the rows by `selal_jax.verbs.report_tables`.
"""

from __future__ import annotations

import glob
import json
import math
import os

import numpy as np

from selal_jax.base import atomic
from selal_jax.base.errors import UserError
from selal_jax.core import stats
from selal_jax.run import loop, rounds
from selal_jax.run import workdir as workdir_lib
from selal_jax.run.workdir import read_records  # noqa: F401  (re-exported: callers use report.X)
from selal_jax.verbs import report_compare, report_gallery, run_names
from selal_jax.verbs.report_plots import (
    plot_learning_curves,
    plot_learning_curves_pixels,
    plot_tsne,
)
from selal_jax.verbs.report_tables import (
    class_markdown_table,
    csv_table,
    last_queries_markdown,
    last_query,
    markdown_table,
    queried_slices_text,
)

PCTS = (10, 15, 20, 25, 30, 35)
# Per-case evaluation fields of the records (when present) and their columns in the tables.
CASE_FIELDS = {"case_dice": "case Dice", "case_hd95": "case HD95"}
DEFAULT_REFERENCE = "random all"


def summary_text(history: list[dict], workdir: str) -> str:
    """What `launch.py run` prints at the end: the round table and any awaited next step."""
    message = loop.awaiting_message(history, workdir)
    return round_table(history) + (f"\n{message}" if message else "")


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
    names = class_names(history)
    if len(names) > 1:  # classes: the mean is the table's Dice; each class beside it
        lines[0] += "".join(f" {n} |" for n in names)
        lines[1] += "---:|" * len(names)
        for i, rec in enumerate(history):
            lines[2 + i] += "".join(f" {rec['dice_per_class'][n]:.4f} |" for n in names)
    best = max(history, key=lambda rec: rec["dice"])
    lines.append(
        f"\nhighest Dice {best['dice']:.4f} at round {best['round']} "
        f"({best['n_labelled']} labelled slices)"
    )
    if any(rec.get("test_slices_with_target") == 0 for rec in history):
        lines.append(f"warning: {rounds.NO_TARGET_NOTE}")
    if any(rec.get("val_slices_with_target") == 0 for rec in history):
        lines.append(f"warning: {rounds.NO_VAL_TARGET_NOTE}")
    last = last_query(history)
    if last is not None:
        lines.append(queried_slices_text(*last))
    return "\n".join(lines)


def class_names(history: list[dict]) -> list[str]:
    """The foreground class names of a run's records (one, unnamed, for records written before
    classes existed)."""
    per_class = history[0].get("dice_per_class") if history else None
    return list(per_class) if per_class else ["target"]


def class_rows(runs: dict[str, dict[int, list[dict]]]) -> list[dict]:
    """Per strategy and foreground class: the highest and the last round's Dice (mean per slice)
    and the last round's global Dice, mean +- std over seeds. Empty for binary runs."""
    rows = []
    for name, by_seed in runs.items():
        histories = [by_seed[s] for s in sorted(by_seed)]
        names = class_names(histories[0])
        if len(names) < 2:
            continue
        for cls in names:
            rows.append(
                {
                    "strategy": name,
                    "class": cls,
                    "seeds": str(len(histories)),
                    "highest": _fmt([max(r["dice_per_class"][cls] for r in h) for h in histories]),
                    "last round": _fmt([h[-1]["dice_per_class"][cls] for h in histories]),
                    "last round (global)": _fmt(
                        [h[-1]["dice_global_per_class"][cls] for h in histories]
                    ),
                }
            )
    return rows


def load_runs(workdir: str) -> dict[str, dict[int, list[dict]]]:
    """{run name ('<strategy> <mode>[ <options>]', `run_names.label`): {seed: history}} for
    every records file under workdir."""
    runs: dict[str, dict[int, list[dict]]] = {}
    # "**" with recursive=True also matches no folder: the workdir's own file is included.
    paths = glob.glob(os.path.join(workdir, "**", workdir_lib.RECORDS_FILE), recursive=True)
    # by folder names ('entropy-selective' before 'entropy-selective-power', unlike '-' < '/')
    paths.sort(key=lambda p: os.path.relpath(p, workdir).split(os.sep))
    for path in paths:
        history = read_records(path)
        if not history:
            continue
        first = history[0]
        name = run_names.label(run_names.record_fields(first))
        seed = int(first.get("seed", 0))
        if seed in runs.get(name, {}):
            raise UserError(f"{path}: a second run of {name!r} with seed {seed} in {workdir}")
        runs.setdefault(name, {})[seed] = history
    return runs


def load_baseline(workdir: str) -> float | None:
    values = []
    for path in sorted(
        glob.glob(os.path.join(workdir, "**", workdir_lib.SUPERVISED_FILE), recursive=True)
    ):
        try:
            with open(path) as f:
                values.append(float(json.load(f)["dice"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"{path}: not a supervised baseline record (a JSON object with a number "
                f"'dice'; {type(e).__name__}: {e})"
            ) from e
    return float(np.mean(values)) if values else None


def dice_at(history: list[dict], pct: float) -> float | None:
    """Dice of the last round at or below `pct` % labelled; None if the run has not reached it."""
    if not history or history[-1]["pct_labelled"] < pct - 1e-9:
        return None
    below = [rec for rec in history if rec["pct_labelled"] <= pct + 1e-9]
    return below[-1]["dice"] if below else None


def first_reaching(history: list[dict], baseline: float | None) -> dict | None:
    """The first round whose Dice reaches the baseline, or None."""
    if baseline is None:
        return None
    for rec in history:
        if rec["dice"] >= baseline:
            return rec
    return None


def normalised_auc(history: list[dict]) -> float | None:
    """Trapezoid area under Dice vs % labelled divided by the % range (None for < 2 rounds)."""
    if len(history) < 2:
        return None
    x = np.array([rec["pct_labelled"] for rec in history], np.float64)
    y = np.array([rec["dice"] for rec in history], np.float64)
    width = x[-1] - x[0]
    if width <= 0:
        return None
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / width)


def _fmt(values: list[float | None], digits: int = 4) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def summary_rows(
    runs: dict[str, dict[int, list[dict]]], baseline: float | None, pcts=PCTS
) -> list[dict]:
    """One dict per strategy with the table's cells as strings."""
    rows = []
    for name, by_seed in runs.items():
        histories = [by_seed[s] for s in sorted(by_seed)]
        row = {"strategy": name, "seeds": str(len(histories))}
        for pct in pcts:
            values = [dice_at(h, pct) for h in histories]
            # With several seeds, a cell needs every seed to have reached the percentage.
            row[f"{pct}%"] = "-" if any(v is None for v in values) else _fmt(values)
        row["highest"] = _fmt([max(rec["dice"] for rec in h) for h in histories])
        reached = [first_reaching(h, baseline) for h in histories]
        if baseline is None or all(r is None for r in reached):
            row["reaches baseline at"] = "/"
        else:
            n = [r["n_labelled"] for r in reached if r is not None]
            pct = [r["pct_labelled"] for r in reached if r is not None]
            cell = f"{_fmt(n, 0)} ({_fmt(pct, 1)}%)"
            if len(n) < len(histories):
                cell += f" [{len(n)} of {len(histories)} seeds]"
            row["reaches baseline at"] = cell
        row["baseline at target pixels"] = _pixels_cell(reached, baseline)
        row["nAUC"] = _fmt([normalised_auc(h) for h in histories])
        for field, column in CASE_FIELDS.items():
            row[column] = _fmt([case_value(h[-1], field) for h in histories])
        rows.append(row)
    return rows


def _pixels_cell(reached: list[dict | None], baseline: float | None) -> str:
    """Labelled target pixels of the first rounds reaching the baseline ("/" if none does, "-"
    if their records predate the field)."""
    hits = [r for r in reached if r is not None]
    if baseline is None or not hits:
        return "/"
    pixels = [r.get("labelled_target_pixels") for r in hits]
    if any(p is None for p in pixels):
        return "-"
    cell = _fmt(pixels, 0)
    return cell + (f" [{len(hits)} of {len(reached)} seeds]" if len(hits) < len(reached) else "")


def case_value(record: dict, field: str) -> float | None:
    """A per-case evaluation field of a record (`case_dice`, `case_hd95`: the mean over the test
    cases) as a number; a {class: value} dict gives its mean over the classes; None if absent."""
    value = record.get(field)
    if isinstance(value, dict):
        values = [float(v) for v in value.values() if v is not None]
        value = float(np.mean(values)) if values else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def per_seed(by_seed: dict[int, list[dict]]) -> dict[str, dict[int, float | None]]:
    """Per seed, the numbers the comparison is made of: the highest Dice, the nAUC and the last
    round's per-case fields."""
    out = {
        "highest": {s: max(rec["dice"] for rec in h) for s, h in by_seed.items()},
        "nAUC": {s: normalised_auc(h) for s, h in by_seed.items()},
    }
    for field, column in CASE_FIELDS.items():
        out[column] = {s: case_value(h[-1], field) for s, h in by_seed.items()}
    return out


def _with_interval(values, digits: int = 4) -> str:
    """'mean [lo, hi]' (the bootstrap interval of the mean); '[-]' for one value; '-' for none."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    interval = stats.bootstrap_interval(values)
    if interval is None:
        return f"{np.mean(values):.{digits}f} [-]"
    return f"{np.mean(values):.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def resolve_reference(runs: dict, reference: str | None) -> str | None:
    """The run name of `reference` (a run as sweep.runs writes it: 'strategy:mode[:option=value
    ...]', 'strategy' meaning mode 'selective'); None gives 'random all' if present. Raises
    ValueError for a named one absent."""
    if reference is None:
        return DEFAULT_REFERENCE if DEFAULT_REFERENCE in runs else None
    name = run_names.label(
        run_names.spec_fields(run_names.parse_run(str(reference), where="report --reference"))
    )
    if name not in runs:
        raise UserError(
            f"report reference {reference!r}: no run {name!r} found; runs: {', '.join(runs)}"
        )
    return name


def comparison_rows(runs, reference: str | None) -> list[dict]:
    """Per strategy: 95 % bootstrap intervals over seeds (see selal_jax.core.stats) of the highest
    Dice, the nAUC and the last round's case Dice / HD95, and the nAUC paired by seed against the
    `reference` run name (difference strategy - reference: mean, interval, Wilcoxon p)."""
    numbers = {name: per_seed(by_seed) for name, by_seed in runs.items()}
    rows = []
    for name, by_seed in runs.items():
        mine = numbers[name]
        row = {"strategy": name, "seeds": str(len(by_seed))}
        for column in ("highest", "nAUC", *CASE_FIELDS.values()):
            row[f"{column} [95% CI]"] = _with_interval(list(mine[column].values()))
        row.update({"paired seeds": "-", "ΔnAUC": "-", "ΔnAUC [95% CI]": "-", "Wilcoxon p": "-"})
        row["note"] = ""
        if reference == name:
            row["paired seeds"] = "reference"
        elif reference is not None:
            paired = stats.paired_comparison(mine["nAUC"], numbers[reference]["nAUC"])
            row["paired seeds"] = str(len(paired["seeds"]))
            if paired["mean"] is not None:
                row["ΔnAUC"] = f"{paired['mean']:+.4f}"
            if paired["interval"] is not None:
                lo, hi = paired["interval"]
                row["ΔnAUC [95% CI]"] = f"[{lo:+.4f}, {hi:+.4f}]"
            if paired["p"] is not None:
                row["Wilcoxon p"] = f"{paired['p']:.4g}"
            row["note"] = paired["note"]
        rows.append(row)
    return rows


def comparison_markdown(rows: list[dict], reference: str | None) -> str:
    columns = [c for c in rows[0] if c != "note"]
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    lines.append(
        f"\nIntervals: mean over seeds [95 % percentile bootstrap interval of the mean, "
        f"{stats.BOOTSTRAP_RESAMPLES:,} resamples of the seeds, numpy default_rng("
        f"{stats.BOOTSTRAP_SEED})]; [-] with one seed. highest: highest Dice of the run; case "
        "Dice / HD95: last round (mean over the test cases)."
    )
    if reference is None:
        lines.append(
            f"No paired comparison: no {DEFAULT_REFERENCE!r} run (choose one with "
            "--reference=strategy:mode)."
        )
    else:
        lines.append(
            f"Paired by seed against {reference!r}: ΔnAUC = nAUC(strategy) - nAUC(reference); "
            "p: two-sided Wilcoxon signed-rank test of the differences (scipy.stats.wilcoxon)."
        )
    lines += [f"* {row['strategy']}: {row['note']}." for row in rows if row["note"]]
    return "\n".join(lines)


def write_report(
    workdir: str,
    baseline: float | None = None,
    out_dir: str | None = None,
    reference: str | None = None,
    gallery_round: int | None = None,
) -> dict:
    """Writes summary.md/.csv, comparison.md/.csv, learning_curves.png,
    learning_curves_pixels.png (when records have labelled_target_pixels), per_class.md/.csv (with
    several classes) and tsne.png (if embeddings exist) to <workdir>/report; returns {name: path}
    and prints nothing. `reference`: the run the comparison pairs against ('strategy:mode';
    default 'random all' if present). Also penalty.md/.csv, aubc.md/.csv (report_compare) and
    the query gallery of round `gallery_round` (report_gallery; default the last with a query)."""
    runs = load_runs(workdir)
    if not runs:
        raise UserError(f"{workdir}: no {workdir_lib.RECORDS_FILE} found (nothing to report)")
    reference_name = resolve_reference(runs, reference)
    if baseline is None:
        baseline = load_baseline(workdir)
    out_dir = out_dir or os.path.join(workdir, workdir_lib.REPORT_DIR)
    os.makedirs(out_dir, exist_ok=True)
    paths = report_gallery.write_galleries(workdir, out_dir, gallery_round)  # may refuse first
    rows = summary_rows(runs, baseline)
    compared = comparison_rows(runs, reference_name)
    tables = [
        ("summary.md", markdown_table(rows, baseline) + last_queries_markdown(runs)),
        ("summary.csv", csv_table(rows)),
        ("comparison.md", comparison_markdown(compared, reference_name)),
        ("comparison.csv", csv_table(compared)),
    ]
    per_class = class_rows(runs)
    if per_class:
        tables += [
            ("per_class.md", class_markdown_table(per_class)),
            ("per_class.csv", csv_table(per_class)),
        ]
    for name, text in tables:
        paths[name] = os.path.join(out_dir, name)
        with atomic.atomic_open(paths[name], "w") as f:
            f.write(text + ("\n" if not text.endswith("\n") else ""))
    paths.update(report_compare.write_comparison(runs, out_dir, case_value))
    paths["learning_curves.png"] = plot_learning_curves(
        runs, baseline, os.path.join(out_dir, "learning_curves.png")
    )
    pixels = plot_learning_curves_pixels(
        runs, baseline, os.path.join(out_dir, "learning_curves_pixels.png")
    )
    if pixels is not None:
        paths["learning_curves_pixels.png"] = pixels
    embeddings = sorted(
        glob.glob(
            os.path.join(
                workdir_lib.seed_dir(workdir, "*"),
                workdir_lib.ROUND0_DIR,
                workdir_lib.EMBEDDINGS_FILE,
            )
        )
    )
    if embeddings:
        seed = int(os.path.basename(os.path.dirname(os.path.dirname(embeddings[0])))[5:])
        paths["tsne.png"] = plot_tsne(runs, embeddings[0], seed, os.path.join(out_dir, "tsne.png"))
    return paths
