"""Summary table cells from hand-written records; plots and the sweep on a tiny run."""

import json
import os

import numpy as np
import pytest

from selal_jax.base import schema
from selal_jax.run import diagnostics
from selal_jax.verbs import report, report_plots, report_tables
from tests.helpers import REPO


def history(strategy, mode, seed, pcts, dices, pool=200):
    return [
        {
            "round": i,
            "n_labelled": round(p * pool / 100),
            "pct_labelled": p,
            "dice": d,
            "dice_global": d / 2,
            "strategy": strategy,
            "mode": mode,
            "seed": seed,
            "queried": [],
        }
        for i, (p, d) in enumerate(zip(pcts, dices, strict=True))
    ]


PCTS = [5.0, 10.0, 15.0, 20.0, 25.0]


def write_run(root, h):
    path = os.path.join(root, f"seed-{h[0]['seed']}", f"{h[0]['strategy']}-{h[0]['mode']}")
    os.makedirs(path)
    with open(os.path.join(path, "records.jsonl"), "w") as f:
        for rec in h:
            f.write(json.dumps(rec) + "\n")


def test_single_seed_cells_by_hand(tmp_path):
    a = history("entropy", "selective", 0, PCTS, [0.50, 0.60, 0.72, 0.70, 0.75])
    b = history("random", "all", 0, [5.0, 12.5, 17.5], [0.40, 0.55, 0.65])
    write_run(str(tmp_path), a)
    write_run(str(tmp_path), b)
    runs = report.load_runs(str(tmp_path))
    rows = {r["strategy"]: r for r in report.summary_rows(runs, baseline=0.7)}
    ent, rnd = rows["entropy selective"], rows["random all"]
    # entropy: 10% -> round at 10.0 (0.60); 15% -> 0.72; 20% -> 0.70; 25% -> 0.75; 30%, 35% not reached
    assert [ent[f"{p}%"] for p in (10, 15, 20, 25, 30, 35)] == [
        "0.6000",
        "0.7200",
        "0.7000",
        "0.7500",
        "-",
        "-",
    ]
    assert ent["highest"] == "0.7500"
    assert ent["reaches baseline at"] == "30 (15.0%)"  # first Dice >= 0.7: round 2, 15 % of 200
    # normalised AUC: trapezoids over [5, 25] divided by 20
    area = (
        5 * (0.50 + 0.60) / 2
        + 5 * (0.60 + 0.72) / 2
        + 5 * (0.72 + 0.70) / 2
        + 5 * (0.70 + 0.75) / 2
    )
    assert ent["nAUC"] == f"{area / 20:.4f}"
    # random: 10% -> round at 5.0 (nearest at or below); 15% -> 12.5 (0.55); 20% not reached
    assert [rnd[f"{p}%"] for p in (10, 15, 20)] == ["0.4000", "0.5500", "-"]
    assert rnd["reaches baseline at"] == "/"
    assert rows["random all"]["seeds"] == "1"


def test_several_seeds_give_mean_and_std_and_partial_crossings(tmp_path):
    for seed, dices in ((0, [0.5, 0.6, 0.7, 0.8, 0.8]), (1, [0.5, 0.6, 0.65, 0.68, 0.69])):
        write_run(str(tmp_path), history("bald", "selective", seed, PCTS, dices))
    runs = report.load_runs(str(tmp_path))
    (row,) = report.summary_rows(runs, baseline=0.7)
    assert row["seeds"] == "2"
    assert row["15%"] == f"{np.mean([0.7, 0.65]):.4f} ± {np.std([0.7, 0.65], ddof=1):.4f}"
    assert row["highest"] == f"{np.mean([0.8, 0.69]):.4f} ± {np.std([0.8, 0.69], ddof=1):.4f}"
    assert row["reaches baseline at"] == "30 (15.0%) [1 of 2 seeds]"
    table = report_tables.markdown_table([row], 0.7)
    assert "| bald selective | 2 |" in table and "0.7000" in table
    csv_text = report_tables.csv_table([row])
    assert csv_text.splitlines()[0].startswith("strategy,seeds,10%")


def test_no_baseline_gives_slash_and_duplicate_runs_are_refused(tmp_path):
    h = history("entropy", "all", 0, PCTS, [0.1, 0.2, 0.3, 0.4, 0.5])
    write_run(str(tmp_path), h)
    (row,) = report.summary_rows(report.load_runs(str(tmp_path)), baseline=None)
    assert row["reaches baseline at"] == "/"
    other = tmp_path / "copy"
    write_run(str(other), h)
    with pytest.raises(ValueError, match="second run"):
        report.load_runs(str(tmp_path))


def test_redundancy_is_mean_off_diagonal_cosine_similarity():
    f = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    cos = [0.0, 1 / np.sqrt(2), 1 / np.sqrt(2)]  # pairs (0,1), (0,2), (1,2)
    np.testing.assert_allclose(diagnostics.redundancy(f), np.mean(cos), rtol=1e-12)
    assert diagnostics.redundancy(f[:1]) is None


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, cohort_root):
    from selal_jax.verbs import sweep
    from tests.helpers import smoke_config

    config = smoke_config(**{"data.root": cohort_root, "al.rounds": 1, "train.max_epochs": 1})
    config.sweep.runs = "random:all,entropy:selective"
    config.sweep.seeds = "0"
    workdir = str(tmp_path_factory.mktemp("sweep"))
    paths = sweep.run(config, workdir)
    return config, workdir, paths


def test_sweep_shares_round0_and_renders_both_plots(tiny_sweep):
    config, workdir, paths = tiny_sweep
    for name in ("summary.md", "summary.csv", "comparison.md", "comparison.csv"):
        assert os.path.exists(paths[name])
    for name in ("learning_curves.png", "learning_curves_pixels.png", "tsne.png"):
        with open(paths[name], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    runs = report.load_runs(workdir)
    assert set(runs) == {"random all", "entropy selective"}
    r0 = [runs[name][0][0] for name in runs]
    # the same round-0 model: identical round-0 metrics; different queries afterwards
    assert r0[0]["dice"] == r0[1]["dice"] and r0[0]["val_loss"] == r0[1]["val_loss"]
    assert r0[0]["queried"] != r0[1]["queried"]
    with open(os.path.join(workdir, "supervised", "supervised.json")) as f:
        sup = json.load(f)
    assert sup["n_labelled"] > r0[0]["n_labelled"]
    for rec in r0:
        assert {
            "queried_mean_pred_target_pixels",
            "queried_mean_pred_boundary_pixels",
            "queried_redundancy",
        } <= set(rec)


def test_rerunning_a_finished_sweep_recomputes_nothing(tiny_sweep):
    from selal_jax.verbs import sweep

    config, workdir, paths = tiny_sweep
    before = {
        p: os.path.getmtime(os.path.join(workdir, p))
        for p in ("seed-0/random-all/records.jsonl", "supervised/supervised.json")
    }
    sweep.run(config, workdir)
    after = {p: os.path.getmtime(os.path.join(workdir, p)) for p in before}
    assert before == after


def test_a_sweep_continues_with_its_workdir_alone_and_refuses_a_changed_config(tiny_sweep):
    """`launch.py sweep --workdir=W` takes the config the sweep was started with (config.json):
    the finished sweep is recomputed from nothing. A config its runs would refuse is refused at
    once, before any run, and config.json keeps the sweep's own."""
    import subprocess
    import sys

    from selal_jax.run import workdir as workdir_lib
    from selal_jax.verbs import sweep

    config, workdir, paths = tiny_sweep
    records = os.path.join(workdir, "seed-0", "random-all", "records.jsonl")
    stored = os.path.join(workdir, workdir_lib.SWEEP_CONFIG_FILE)
    before = os.path.getmtime(records)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch.py"), "sweep", f"--workdir={workdir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "random all" in proc.stdout and os.path.getmtime(records) == before
    with open(stored) as f:
        assert json.load(f) == schema.flatten(config)
    changed = config.copy_and_resolve_references()
    changed.al.query_size = 3
    with pytest.raises(ValueError, match=r"al.query_size: 6 -> 3"):
        sweep.run(changed, workdir)
    with open(stored) as f:
        assert json.load(f)["al.query_size"] == 6


def test_per_class_table_cells_by_hand(tmp_path):
    for seed, (core, halo) in enumerate(
        [([0.2, 0.5, 0.4], [0.6, 0.7, 0.9]), ([0.3, 0.7, 0.6], [0.5, 0.8, 0.7])]
    ):
        h = history("entropy", "selective", seed, [5.0, 10.0, 15.0], [0.0, 0.0, 0.0])
        for i, rec in enumerate(h):
            rec["dice_per_class"] = {"halo": halo[i], "core": core[i]}
            rec["dice_global_per_class"] = {"halo": halo[i] / 2, "core": core[i] / 4}
            rec["dice"] = (halo[i] + core[i]) / 2
            rec["dice_global"] = (halo[i] / 2 + core[i] / 4) / 2
        write_run(tmp_path, h)
    paths = report.write_report(str(tmp_path))
    with open(paths["per_class.csv"]) as f:
        lines = f.read().splitlines()
    assert lines[0] == "strategy,class,seeds,highest,last round,last round (global)"
    # halo: highest 0.9 and 0.8 -> 0.85 ± 0.0707; last 0.9, 0.7 -> 0.80 ± 0.1414; global half
    assert lines[1] == "entropy selective,halo,2,0.8500 ± 0.0707,0.8000 ± 0.1414,0.4000 ± 0.0707"
    # core: highest 0.5, 0.7 -> 0.60 ± 0.1414; last 0.4, 0.6 -> 0.50 ± 0.1414; global quarter
    assert lines[2] == "entropy selective,core,2,0.6000 ± 0.1414,0.5000 ± 0.1414,0.1250 ± 0.0354"
    table = report.round_table(h)
    assert table.splitlines()[0].endswith("| halo | core |")
    # last round of seed 1: mean (0.7 + 0.6) / 2, global (0.35 + 0.15) / 2, halo, core
    assert table.splitlines()[-3] == "| 2 | 30 | 15.0 | 0.6500 | 0.2500 | 0.7000 | 0.6000 |"


def test_binary_runs_have_no_per_class_table(tmp_path):
    write_run(tmp_path, history("random", "all", 0, PCTS, [0.5, 0.6, 0.7, 0.7, 0.8]))
    assert "per_class.md" not in report.write_report(str(tmp_path))


# ------------------------------------- issue 14: annotation cost, statistics, t-SNE panels


def with_pixels(h, pixels, case_dice=None, case_hd95=None):
    for rec, p in zip(h, pixels, strict=True):
        rec["labelled_target_pixels"] = p
        rec["labelled_slices_with_target"] = p // 10
    if case_dice is not None:
        h[-1]["case_dice"], h[-1]["case_hd95"] = case_dice, case_hd95
    return h


def test_target_pixels_at_the_baseline_and_case_columns_by_hand(tmp_path):
    a0 = with_pixels(
        history("entropy", "selective", 0, PCTS, [0.5, 0.6, 0.72, 0.7, 0.75]),
        [100, 220, 310, 400, 480],
        case_dice=0.8,
        case_hd95=4.0,
    )
    a1 = with_pixels(
        history("entropy", "selective", 1, PCTS, [0.5, 0.6, 0.65, 0.71, 0.75]),
        [100, 200, 290, 420, 500],
        case_dice=0.7,
        case_hd95=6.0,
    )
    a2 = with_pixels(
        history("entropy", "selective", 2, PCTS, [0.5, 0.6, 0.6, 0.6, 0.6]),
        [90, 200, 300, 400, 500],
        case_dice=0.6,
        case_hd95=8.0,
    )
    old = history("random", "all", 0, PCTS, [0.5, 0.71, 0.7, 0.7, 0.7])  # no new fields
    for h in (a0, a1, a2, old):
        write_run(str(tmp_path), h)
    rows = {r["strategy"]: r for r in report.summary_rows(report.load_runs(str(tmp_path)), 0.7)}
    ent, rnd = rows["entropy selective"], rows["random all"]
    # seed 0 first reaches 0.7 at round 2 (310 pixels), seed 1 at round 3 (420), seed 2 never
    assert ent["baseline at target pixels"] == (
        f"{np.mean([310, 420]):.0f} ± {np.std([310, 420], ddof=1):.0f} [2 of 3 seeds]"
    )
    assert rnd["reaches baseline at"] == "20 (10.0%)"
    assert rnd["baseline at target pixels"] == "-"  # old records: no pixel counts
    assert ent["case Dice"] == f"{0.7:.4f} ± {np.std([0.8, 0.7, 0.6], ddof=1):.4f}"
    assert ent["case HD95"] == f"{6.0:.4f} ± {2.0:.4f}"
    assert rnd["case Dice"] == rnd["case HD95"] == "-"
    columns = list(ent)
    assert columns.index("baseline at target pixels") == columns.index("reaches baseline at") + 1
    assert (
        report.summary_rows(report.load_runs(str(tmp_path)), None)[0]["baseline at target pixels"]
        == "/"
    )
    # per-class case values (a dict) average over the classes
    assert report.case_value({"case_dice": {"a": 0.2, "b": 0.6}}, "case_dice") == 0.4
    assert report.case_value({"case_hd95": None}, "case_hd95") is None


def np_bootstrap(values, resamples=10_000, seed=0):
    """The interval reimplemented: percentile bootstrap of the mean, default_rng(seed)."""
    x = np.asarray(values, np.float64)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    return np.percentile(x[idx].mean(axis=1), [2.5, 97.5])


def test_stats_bootstrap_wilcoxon_and_the_minimum_attainable_p():
    from scipy import stats as sp

    from selal_jax.core import stats

    x = [0.71, 0.74, 0.69, 0.77, 0.72]
    np.testing.assert_allclose(stats.bootstrap_interval(x), np_bootstrap(x), rtol=0, atol=0)
    assert stats.bootstrap_interval([0.5]) is None
    assert [stats.min_wilcoxon_p(n) for n in (1, 2, 5, 6)] == [1.0, 0.5, 0.0625, 0.03125]
    assert stats.min_pairs_for(0.05) == 6 and stats.min_pairs_for(0.01) == 8
    values = {s: 0.70 + 0.01 * s for s in range(7)}
    reference = {s: 0.70 + 0.003 * s * (-1) ** s for s in range(7)}
    reference[6] = None  # a seed without its reference value is not paired
    got = stats.paired_comparison(values, reference)
    d = np.array([values[s] - reference[s] for s in range(6)])
    assert got["seeds"] == list(range(6))
    np.testing.assert_allclose(got["differences"], d)
    np.testing.assert_allclose(got["mean"], d.mean())
    np.testing.assert_allclose(got["interval"], np_bootstrap(d))
    assert got["p"] == sp.wilcoxon(d).pvalue  # d[0] = 0 is dropped: 5 non-zero differences
    assert "5 non-zero paired differences" in got["note"] and "2/2^5 = 0.0625" in got["note"]
    assert "at least 6 paired seeds" in got["note"]
    six = stats.paired_comparison({s: 1.0 + s for s in range(6)}, {s: 0.0 for s in range(6)})
    assert six["note"] == "" and six["p"] == sp.wilcoxon(np.arange(1.0, 7.0)).pvalue == 0.03125
    zeros = stats.paired_comparison({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})
    assert zeros["p"] is None and "every paired difference is 0" in zeros["note"]
    assert stats.paired_comparison({0: 0.5}, {1: 0.5})["mean"] is None


def test_comparison_table_against_the_reference_by_hand(tmp_path):
    from scipy import stats as sp

    dices = {
        "random all": [[0.5, 0.6, 0.62], [0.5, 0.58, 0.66], [0.52, 0.6, 0.61]],
        "entropy selective": [[0.5, 0.64, 0.7], [0.5, 0.62, 0.69], [0.52, 0.6, 0.72]],
    }
    pcts = [5.0, 10.0, 15.0]
    for name, per_seed in dices.items():
        strategy, mode = name.split()
        for seed, d in enumerate(per_seed):
            h = history(strategy, mode, seed, pcts, d)
            if strategy == "entropy":
                h[-1]["case_dice"], h[-1]["case_hd95"] = 0.6 + 0.1 * seed, 5.0 - seed
            write_run(str(tmp_path), h)
    paths = report.write_report(str(tmp_path))
    with open(paths["comparison.csv"]) as f:
        import csv

        rows = {r["strategy"]: r for r in csv.DictReader(f)}
    ent, rnd = rows["entropy selective"], rows["random all"]

    def nauc(d):
        return (5 * (d[0] + d[1]) / 2 + 5 * (d[1] + d[2]) / 2) / 10

    def cell(values):
        lo, hi = np_bootstrap(values)
        return f"{np.mean(values):.4f} [{lo:.4f}, {hi:.4f}]"

    highest = [max(d) for d in dices["entropy selective"]]
    assert ent["highest [95% CI]"] == cell(highest)
    assert ent["nAUC [95% CI]"] == cell([nauc(d) for d in dices["entropy selective"]])
    assert ent["case Dice [95% CI]"] == cell([0.6, 0.7, 0.8])
    assert ent["case HD95 [95% CI]"] == cell([5.0, 4.0, 3.0])
    assert rnd["case Dice [95% CI]"] == "-" and rnd["paired seeds"] == "reference"
    d = np.array(
        [
            nauc(e) - nauc(r)
            for e, r in zip(dices["entropy selective"], dices["random all"], strict=True)
        ]
    )
    lo, hi = np_bootstrap(d)
    assert ent["paired seeds"] == "3"
    assert ent["ΔnAUC"] == f"{d.mean():+.4f}"
    assert ent["ΔnAUC [95% CI]"] == f"[{lo:+.4f}, {hi:+.4f}]"
    assert ent["Wilcoxon p"] == f"{sp.wilcoxon(d).pvalue:.4g}" == "0.25"
    assert "2/2^3 = 0.25" in ent["note"] and "at least 6 paired seeds" in ent["note"]
    with open(paths["comparison.md"]) as f:
        text = f.read()
    assert "10,000 resamples" in text and "against 'random all'" in text
    assert "* entropy selective: 3 non-zero paired differences" in text
    # another reference, named on the command line; an absent one is refused
    report.write_report(str(tmp_path), reference="entropy:selective")
    with open(paths["comparison.csv"]) as f:
        rows = {r["strategy"]: r for r in csv.DictReader(f)}
    assert rows["random all"]["ΔnAUC"] == f"{-d.mean():+.4f}"
    with pytest.raises(ValueError, match="no run 'bald selective'"):
        report.write_report(str(tmp_path), reference="bald")


def test_no_reference_run_says_so_and_single_seed_has_no_interval(tmp_path):
    write_run(tmp_path, history("entropy", "all", 0, PCTS, [0.5, 0.6, 0.7, 0.7, 0.8]))
    paths = report.write_report(str(tmp_path))
    with open(paths["comparison.md"]) as f:
        text = f.read()
    assert "No paired comparison: no 'random all' run" in text
    assert "| entropy all | 1 | 0.8000 [-] |" in text
    assert "learning_curves_pixels.png" not in paths  # no record has pixel counts


def test_pixel_curves_and_one_tsne_panel_per_strategy(tmp_path):
    import matplotlib.pyplot as plt

    runs = {}
    for i, name in enumerate(
        ("random all", "random_predicted all", "entropy selective", "bald target")
    ):
        strategy, mode = name.split()
        h = with_pixels(
            history(strategy, mode, 0, PCTS, [0.5, 0.6, 0.7, 0.7, 0.8]), [10, 20, 30, 40, 50]
        )
        h[0]["queried"] = [i, i + 4]
        runs[name] = {0: h}
    runs["entropy selective"][1] = runs["entropy selective"][0]  # another seed only
    path = report_plots.plot_learning_curves_pixels(runs, 0.7, str(tmp_path / "pixels.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    coords = np.random.default_rng(0).normal(size=(12, 2))
    fig, panels = report_plots.tsne_figure(runs, coords, np.arange(12), seed=0)
    assert len(panels) == 4 and [ax.get_title() for ax in panels] == list(runs)
    assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) == 4
    plt.close(fig)
    embeddings = tmp_path / "pool_embeddings.npz"
    np.savez(
        embeddings,
        features=np.random.default_rng(1).normal(size=(12, 5)),
        target_pixels=np.arange(12),
    )
    out = report_plots.plot_tsne(runs, str(embeddings), 0, str(tmp_path / "tsne.png"))
    assert os.path.getsize(out) > 0


def test_cli_report_passes_the_reference_and_prints_the_comparison(tmp_path):
    import subprocess
    import sys

    for name in ("random all", "entropy selective"):
        write_run(tmp_path, history(*name.split(), 0, PCTS, [0.5, 0.6, 0.7, 0.7, 0.8]))
    command = [sys.executable, os.path.join(REPO, "launch.py"), "report", f"--workdir={tmp_path}"]
    proc = subprocess.run(
        command + ["--reference=entropy:selective"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "| strategy | seeds | 10% |" in proc.stdout  # the summary, then the comparison
    assert "Paired by seed against 'entropy selective'" in proc.stdout
    assert "comparison.csv" in proc.stdout


# ------------------------------------- issue 27: the last query, readable without the cache


def test_the_last_query_is_listed_as_case_and_slice(tmp_path):
    h = history("entropy", "selective", 0, PCTS[:3], [0.5, 0.6, 0.7])
    h[0].update(queried=[4, 9], queried_slices=[["a", 3], ["b", 12]])
    h[1].update(queried=[7, 1, 2], queried_slices=[["b", 0], ["a", 17], ["c", 5]])
    older = history("random", "all", 0, PCTS[:2], [0.4, 0.5])  # records without queried_slices
    older[0]["queried"] = [3]
    write_run(tmp_path, h)
    write_run(tmp_path, older)
    line = "round 1 queried 3 slices (case:slice, in selection order): b:0, a:17, c:5"
    # round 2 queried nothing (the last round): round 1 is the last query
    assert report.round_table(h).splitlines()[-1] == line
    assert "queried" not in report.round_table(older)
    with open(report.write_report(str(tmp_path))["summary.md"]) as f:
        summary = f.read()
    assert f"* entropy selective, seed 0: {line}" in summary.splitlines()
    assert "random all, seed" not in summary
