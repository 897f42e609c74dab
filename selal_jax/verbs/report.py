"""Tables and plots from the records of finished or partial runs (nothing is recomputed).

A report reads a run folder (`records.jsonl`) or a sweep folder (`seed-<s>/<run folder>/
records.jsonl`, `supervised/supervised.json`, `seed-<s>/round0/pool_embeddings.npz`) through
`selal_jax.verbs.report_runs` (the runs grouped by name and seed, the baseline, each record's
metrics).

Case metrics first. summary.md's first table gives, per strategy, the case Dice (each test
volume at its own resolution, mean over the test cases; with classes, their mean) at 10, 15,
..., 35 % of the pool labelled (the last round at or below each percentage, "-" if the run has
not reached it), at the last round and at the highest round, the last round's HD95, and the
labelled slices (and %) at which the case Dice first reaches the supervised baseline's ("/" if
never) with the labelled target pixels there (the annotation cost). The second table gives the
paper's slice Dice (mean per slice) the same way, with the normalised area under its curve
(nAUC: the trapezoid area over the %-labelled range divided by its width). Runs without
per-case metrics (eval.cases=False) decide on the slice Dice, and the tables say so. With
several seeds each cell is mean ± sample standard deviation; summary.csv holds the same numbers
as numbers (`report_tables`). per_class.md/.csv give each class (several classes);
comparison.md/.csv bootstrap intervals over seeds (none from fewer than 5 seeds: their values
instead) and the paired comparison against a reference run (`comparison_rows`,
selal_jax.core.stats), with the AUBC of the case Dice, which aubc.md/.csv give per seed
(`report_runs.aubc`); penalty.md/.csv the pairwise penalty matrix (`report_penalty`). Under
the tables, the warnings a reviewer would raise (`run.review`). The figures are drawn by
`selal_jax.verbs.report_plots`; the query galleries (why a round's slices were picked) by
`selal_jax.verbs.report_gallery`. Runs are named by `selal_jax.verbs.run_names` (strategy,
mode and the options that act: "entropy selective power").
"""

from __future__ import annotations

import os

from selal_jax.base import atomic
from selal_jax.base.errors import UserError
from selal_jax.run import review
from selal_jax.run import workdir as workdir_lib
from selal_jax.run.workdir import read_records  # noqa: F401  (re-exported: callers use report.X)
from selal_jax.verbs import report_gallery, report_penalty
from selal_jax.verbs.report_comparison import (  # noqa: F401  (re-exported)
    DEFAULT_REFERENCE,
    aubc_markdown,
    aubc_rows,
    comparison_markdown,
    comparison_rows,
    resolve_reference,
)
from selal_jax.verbs.report_plots import (
    plot_learning_curves,
    plot_learning_curves_pixels,
    plot_tsne,
)
from selal_jax.verbs.report_rounds import round_table, summary_text  # noqa: F401  (re-exported)
from selal_jax.verbs.report_runs import (
    CASE,
    NOT_COMPUTED,
    SLICE,
    TITLES,
    Baseline,
    case_value,
    class_dice,
    class_names,
    decided_by,
    dice,
    highest,
    highest_dice,
    histories,
    load_baseline,
    load_runs,
    normalised_auc,
)
from selal_jax.verbs.report_tables import (
    Reached,
    Stat,
    csv_table,
    last_queries_markdown,
    markdown_table,
)

PCTS = (10, 15, 20, 25, 30, 35)


def dice_at(history: list[dict], pct: float, by: str = SLICE) -> float | None:
    """Dice `by` of the last round at or below `pct` % labelled; None if the run has not
    reached it (or that round has no such Dice)."""
    if not history or history[-1]["pct_labelled"] < pct - 1e-9:
        return None
    below = [rec for rec in history if rec["pct_labelled"] <= pct + 1e-9]
    return dice(below[-1], by) if below else None


def first_reaching(history: list[dict], baseline: float | None, by: str = SLICE) -> dict | None:
    """The first round whose Dice `by` reaches the baseline's, or None."""
    if baseline is None:
        return None
    for rec in history:
        value = dice(rec, by)
        if value is not None and value >= baseline:
            return rec
    return None


def _at_pcts(hs: list[list[dict]], by: str, pcts) -> dict:
    """{'<by>_dice_at_<pct>pct': Stat}; a cell needs every seed to have reached the percentage."""
    out = {}
    for pct in pcts:
        values = [dice_at(h, pct, by) for h in hs]
        out[f"{by}_dice_at_{pct}pct"] = Stat([] if None in values else values)
    return out


def _highest_values(hs: list[list[dict]], by: str) -> list[float | None]:
    return [highest_dice(h, by) for h in hs]


def summary_rows(runs, baseline: Baseline | None, pcts=PCTS, by: str | None = None) -> list[dict]:
    """One row per strategy: {CSV key: cell} (`report_tables`), case metrics first, then the
    slice Dice (paper); "baseline_reached" is decided `by` (default `decided_by` the runs)."""
    by = by or decided_by([h for by_seed in runs.values() for h in histories(by_seed)])
    value = None if baseline is None else baseline.value(by)
    rows = []
    for name, by_seed in runs.items():
        hs = histories(by_seed)
        reached = [first_reaching(h, value, by) for h in hs]
        rows.append(
            {
                "strategy": name,
                "seeds": len(hs),
                "decided_by": f"{by}_dice",
                **_at_pcts(hs, CASE, pcts),
                "case_dice_last": Stat([dice(h[-1], CASE) for h in hs]),
                "case_dice_highest": Stat(_highest_values(hs, CASE)),
                "case_hd95_mm_last": Stat([case_value(h[-1], "case_hd95") for h in hs], 2),
                "baseline_reached": Reached(reached),
                "baseline_reached_target_pixels": _PixelsAt(reached),
                **_at_pcts(hs, SLICE, pcts),
                "slice_dice_highest": Stat(_highest_values(hs, SLICE)),
                "slice_dice_nauc": Stat([normalised_auc(h) for h in hs]),
            }
        )
    return rows


class _PixelsAt(Stat):
    """Labelled target pixels where the baseline is first reached: '/' if no seed reaches it,
    '-' if its records predate labelled_target_pixels."""

    def __init__(self, reached: list[dict | None]):
        pixels = [None if r is None else r.get("labelled_target_pixels") for r in reached]
        hits = [r for r in reached if r is not None]
        super().__init__(pixels, digits=0)
        self.older = any(r.get("labelled_target_pixels") is None for r in hits)
        if self.older:
            self.values = []

    def text(self) -> str:
        return "-" if self.older else (super().text() if self.n else "/")


def _summary_titles(by: str, pcts) -> dict:
    titles = {"strategy": "strategy", "seeds": "seeds"}
    for metric in (CASE, SLICE):
        titles.update({f"{metric}_dice_at_{p}pct": f"{p}%" for p in pcts})
        titles[f"{metric}_dice_highest"] = "highest"
    titles.update(
        case_dice_last="last round",
        case_hd95_mm_last="HD95 (mm), last round",
        baseline_reached="reaches baseline at",
        baseline_reached_target_pixels="baseline at target pixels",
        slice_dice_nauc="nAUC",
    )
    return titles


def summary_markdown(rows: list[dict], baseline: Baseline | None, by: str, pcts=PCTS) -> str:
    """summary.md's tables: the case Dice (with the baseline columns when it decides), then the
    slice Dice (paper); the baseline and the definitions under them."""
    if not rows:
        return "(no runs found)"
    titles = _summary_titles(by, pcts)
    reached = ["baseline_reached", "baseline_reached_target_pixels"]
    case_keys = [f"case_dice_at_{p}pct" for p in pcts]
    case_keys += ["case_dice_last", "case_dice_highest", "case_hd95_mm_last"]
    slice_keys = [f"slice_dice_at_{p}pct" for p in pcts] + ["slice_dice_highest", "slice_dice_nauc"]
    lines = ["### Case Dice (per test volume, mean over the test cases)", ""]
    if by == CASE:
        lines.append(markdown_table(rows, titles, ["strategy", "seeds", *case_keys, *reached]))
    elif any(row["case_dice_last"].n for row in rows):  # in some rounds, not in every one
        lines.append(markdown_table(rows, titles, ["strategy", "seeds", *case_keys]))
        lines.append(
            "\nNot every round of every run has a case Dice (eval.cases was off in some): "
            "highest and baseline by slice Dice (paper)."
        )
    else:
        lines.append(f"{NOT_COMPUTED}: highest and baseline by slice Dice (paper).")
    lines += ["", "### Slice Dice (paper): mean per-slice Dice, as the paper reports it", ""]
    keys = ["strategy", "seeds", *slice_keys, *(reached if by == SLICE else [])]
    lines.append(markdown_table(rows, titles, keys))
    base = "none found" if baseline is None else baseline.describe()
    lines.append(
        f'\nSupervised baseline: {base}. "highest" and "reaches baseline at" are decided '
        f"on the {TITLES[by]}; highest: the round with the highest Dice, never a round whose "
        "model predicts no target. Case Dice / HD95: each test volume at its own resolution "
        "(with several classes, the mean over them; per_class.md gives each). Slice Dice "
        "(paper): mean per-slice Dice on the test split, in which an empty prediction on an "
        "empty slice scores 1. baseline at target pixels: the labelled target pixels (label "
        "> 0) the run had trained on when it first reached the baseline. '-': not in the "
        "records (or not reached by every seed)."
    )
    return "\n".join(lines)


def warnings_markdown(runs, baseline: Baseline | None) -> str:
    """What a reviewer would raise (`run.review`), per run and seed; the splits' once, naming
    the runs concerned unless it is every run."""
    lines, splits = [], {}
    for name, by_seed in runs.items():
        for seed in sorted(by_seed):
            h = by_seed[seed]
            lines += [f"* {name}, seed {seed}: {n}" for n in review.run_notes(h, splits=False)]
            for note in review.split_notes(h[-1]):
                splits.setdefault(note, []).append(f"{name} (seed {seed})")
    total = sum(len(by_seed) for by_seed in runs.values())
    for note, where in splits.items():
        lines.append(f"* {'every run' if len(where) == total else ', '.join(where)}: {note}")
    lines += [f"* {note}" for note in (baseline.notes if baseline else ())]
    return "\n".join(["\n\n### Warnings", *lines]) if lines else ""


def class_rows(runs) -> list[dict]:
    """Per strategy and foreground class: the case Dice (last round, highest), then the slice
    Dice (paper) (highest, last round, last round's global), over seeds. Empty for binary runs."""
    rows = []
    for name, by_seed in runs.items():
        hs = histories(by_seed)
        names = class_names(hs[0])
        if len(names) < 2:
            continue
        for cls in names:

            def highest_of(h, by, cls=cls):
                best = highest(h, by, lambda rec: class_dice(rec, by, cls))
                return None if best is None else class_dice(best, by, cls)

            rows.append(
                {
                    "strategy": name,
                    "class": cls,
                    "seeds": len(hs),
                    "case_dice_last": Stat([class_dice(h[-1], CASE, cls) for h in hs]),
                    "case_dice_highest": Stat([highest_of(h, CASE) for h in hs]),
                    "slice_dice_highest": Stat([highest_of(h, SLICE) for h in hs]),
                    "slice_dice_last": Stat([class_dice(h[-1], SLICE, cls) for h in hs]),
                    "slice_dice_global_last": Stat(
                        [h[-1]["dice_global_per_class"][cls] for h in hs]
                    ),
                }
            )
    return rows


CLASS_TITLES = {
    "case_dice_last": "case Dice, last round",
    "case_dice_highest": "case Dice, highest",
    "slice_dice_highest": "slice Dice (paper), highest",
    "slice_dice_last": "slice Dice (paper), last round",
    "slice_dice_global_last": "slice Dice global, last round",
}


def class_markdown(rows: list[dict]) -> str:
    return markdown_table(rows, CLASS_TITLES, text_columns=2) + (
        "\n\nDice per foreground class on the test split: case Dice (each test volume at its "
        "own resolution, mean over the test cases), then the paper's slice Dice (mean per "
        "slice) and its global Dice. highest: each class's highest round, never one whose model "
        "predicts no target."
    )


def write_report(
    workdir: str,
    baseline: float | None = None,
    out_dir: str | None = None,
    reference: str | None = None,
    gallery_round: int | None = None,
) -> dict:
    """Writes summary.md/.csv, comparison.md/.csv, aubc.md/.csv, penalty.md/.csv,
    learning_curves.png, learning_curves_pixels.png (when records have labelled_target_pixels),
    per_class.md/.csv (with several classes), tsne.png (if embeddings exist) and the query
    galleries (`report_gallery`) to `out_dir` (default <workdir>/report); returns {name: path}
    and prints nothing. `baseline`: the supervised baseline's value of the Dice that decides
    (case Dice; slice Dice where the runs lack it), default read from supervised.json.
    `reference`: the run the comparison pairs against, as sweep.runs writes it
    ('strategy:mode[:option=value...]'; default 'random all' if present). `gallery_round`: the
    round whose query the galleries show (default the last with a query)."""
    runs = load_runs(workdir)
    if not runs:
        raise UserError(f"{workdir}: no {workdir_lib.RECORDS_FILE} found (nothing to report)")
    reference_name = resolve_reference(runs, reference)
    by = decided_by([h for by_seed in runs.values() for h in histories(by_seed)])
    base = load_baseline(workdir) if baseline is None else Baseline.given(baseline, by)
    out_dir = out_dir or os.path.join(workdir, workdir_lib.REPORT_DIR)
    os.makedirs(out_dir, exist_ok=True)
    paths = report_gallery.write_galleries(workdir, out_dir, gallery_round)  # may refuse first
    rows = summary_rows(runs, base, by=by)
    compared = comparison_rows(runs, reference_name)
    aubcs = aubc_rows(runs)
    summary = summary_markdown(rows, base, by) + warnings_markdown(runs, base)
    tables = [
        ("summary.md", summary + last_queries_markdown(runs)),
        ("summary.csv", csv_table(rows)),
        ("comparison.md", comparison_markdown(compared, reference_name)),
        ("comparison.csv", csv_table(compared)),
        ("aubc.md", aubc_markdown(aubcs)),
        ("aubc.csv", csv_table(aubcs)),
        *report_penalty.penalty_tables(runs),
    ]
    per_class = class_rows(runs)
    if per_class:
        tables += [
            ("per_class.md", class_markdown(per_class)),
            ("per_class.csv", csv_table(per_class)),
        ]
    for name, text in tables:
        paths[name] = os.path.join(out_dir, name)
        with atomic.atomic_open(paths[name], "w") as f:
            f.write(text + ("\n" if not text.endswith("\n") else ""))
    paths["learning_curves.png"] = plot_learning_curves(
        runs, base, os.path.join(out_dir, "learning_curves.png")
    )
    pixels = plot_learning_curves_pixels(
        runs, base, os.path.join(out_dir, "learning_curves_pixels.png")
    )
    if pixels is not None:
        paths["learning_curves_pixels.png"] = pixels
    for seed in sorted({s for by_seed in runs.values() for s in by_seed}):  # the lowest seed's
        embeddings = os.path.join(
            workdir_lib.seed_dir(workdir, seed), workdir_lib.ROUND0_DIR, workdir_lib.EMBEDDINGS_FILE
        )
        if os.path.isfile(embeddings):
            tsne = os.path.join(out_dir, "tsne.png")
            paths["tsne.png"] = plot_tsne(runs, embeddings, seed, tsne)
            break
    return paths
