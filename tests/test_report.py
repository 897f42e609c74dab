"""Summary table cells from hand-written records; plots and the sweep on a tiny run."""

import errno
import json
import os

import numpy as np
import pytest

from selal_jax.base import schema
from selal_jax.run import diagnostics
from selal_jax.verbs import report, report_comparison, report_plots, report_tables
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


def cells(row, keys):
    return [row[k].text() for k in keys]


def test_single_seed_cells_by_hand(tmp_path):
    """Records without per-case metrics: the explicit fallback on the slice Dice (paper)."""
    a = history("entropy", "selective", 0, PCTS, [0.50, 0.60, 0.72, 0.70, 0.75])
    b = history("random", "all", 0, [5.0, 12.5, 17.5], [0.40, 0.55, 0.65])
    write_run(str(tmp_path), a)
    write_run(str(tmp_path), b)
    runs = report.load_runs(str(tmp_path))
    baseline = report.Baseline(case_dice=None, dice=0.7)
    rows = {r["strategy"]: r for r in report.summary_rows(runs, baseline)}
    ent, rnd = rows["entropy selective"], rows["random all"]
    assert ent["decided_by"] == "slice_dice"
    slice_keys = [f"slice_dice_at_{p}pct" for p in (10, 15, 20, 25, 30, 35)]
    # entropy: 10% -> round at 10.0 (0.60); 15% -> 0.72; 20% -> 0.70; 25% -> 0.75; 30%, 35% not reached
    assert cells(ent, slice_keys) == ["0.6000", "0.7200", "0.7000", "0.7500", "-", "-"]
    assert ent["slice_dice_highest"].text() == "0.7500"
    assert ent["baseline_reached"].text() == "30 (15.0%)"  # first Dice >= 0.7: round 2, 15 % of 200
    # no case Dice in these records: every case cell is empty
    assert cells(ent, ["case_dice_at_10pct", "case_dice_last", "case_dice_highest"]) == ["-"] * 3
    # normalised AUC: trapezoids over [5, 25] divided by 20
    area = (
        5 * (0.50 + 0.60) / 2
        + 5 * (0.60 + 0.72) / 2
        + 5 * (0.72 + 0.70) / 2
        + 5 * (0.70 + 0.75) / 2
    )
    assert ent["slice_dice_nauc"].text() == f"{area / 20:.4f}"
    # random: 10% -> round at 5.0 (nearest at or below); 15% -> 12.5 (0.55); 20% not reached
    assert cells(rnd, slice_keys[:3]) == ["0.4000", "0.5500", "-"]
    assert rnd["baseline_reached"].text() == "/"
    assert rnd["seeds"] == 1
    text = report.summary_markdown(list(rows.values()), baseline, "slice")
    assert "case Dice: not computed (eval.cases=False): highest and baseline by slice Dice" in text


def with_case(h, case_dice, hd95=None):
    for rec, c in zip(h, case_dice, strict=True):
        rec["case_dice"] = c
        rec["case_hd95"] = 10.0 * (1 - c) if hd95 is None else hd95
    return h


def test_case_dice_decides_highest_and_baseline(tmp_path):
    """The slice Dice peaks at round 1 while the case Dice peaks at round 3: the case Dice
    decides 'highest' and 'reaches baseline at'."""
    slice_dice = [0.60, 0.90, 0.70, 0.72, 0.74]
    case_dice = [0.20, 0.10, 0.35, 0.50, 0.45]
    h = with_case(history("entropy", "selective", 0, PCTS, slice_dice), case_dice)
    write_run(str(tmp_path), h)
    runs = report.load_runs(str(tmp_path))
    (row,) = report.summary_rows(runs, report.Baseline(case_dice=0.3, dice=0.8))
    assert row["decided_by"] == "case_dice"
    assert row["case_dice_highest"].text() == "0.5000"
    assert row["slice_dice_highest"].text() == "0.9000"
    # first case Dice >= 0.3: round 2 (15 %), though round 1's slice Dice is above 0.8
    assert row["baseline_reached"].text() == "30 (15.0%)"
    assert row["case_dice_last"].text() == "0.4500"
    assert row["case_hd95_mm_last"].text() == f"{10 * (1 - 0.45):.2f}"
    table = report.round_table(h)
    assert table.splitlines()[0] == (
        "| round | labelled | % labelled | case Dice | HD95 (mm) | slice Dice (paper) | "
        "slice Dice, global |"
    )
    assert "highest case Dice 0.5000 at round 3 (40 labelled slices; HD95 5.00 mm; slice Dice " in (
        table
    )


def test_several_seeds_give_mean_and_std_and_partial_crossings(tmp_path):
    for seed, dices in ((0, [0.5, 0.6, 0.7, 0.8, 0.8]), (1, [0.5, 0.6, 0.65, 0.68, 0.69])):
        write_run(str(tmp_path), history("bald", "selective", seed, PCTS, dices))
    runs = report.load_runs(str(tmp_path))
    (row,) = report.summary_rows(runs, report.Baseline(case_dice=None, dice=0.7))
    assert row["seeds"] == 2
    want = f"{np.mean([0.7, 0.65]):.4f} ± {np.std([0.7, 0.65], ddof=1):.4f}"
    assert row["slice_dice_at_15pct"].text() == want
    want = f"{np.mean([0.8, 0.69]):.4f} ± {np.std([0.8, 0.69], ddof=1):.4f}"
    assert row["slice_dice_highest"].text() == want
    assert row["baseline_reached"].text() == "30 (15.0%) [1 of 2 seeds]"
    table = report.summary_markdown([row], report.Baseline(case_dice=None, dice=0.7), "slice")
    slice_cells = f"| bald selective | 2 | 0.6000 ± 0.0000 | {row['slice_dice_at_15pct'].text()} |"
    assert slice_cells in table and "Supervised baseline: " in table
    csv_text = report_tables.csv_table([row])
    assert csv_text.splitlines()[0].startswith("strategy,seeds,decided_by,case_dice_at_10pct_mean")


def test_no_baseline_gives_slash_and_duplicate_runs_are_refused(tmp_path):
    h = history("entropy", "all", 0, PCTS, [0.1, 0.2, 0.3, 0.4, 0.5])
    write_run(str(tmp_path), h)
    (row,) = report.summary_rows(report.load_runs(str(tmp_path)), baseline=None)
    assert row["baseline_reached"].text() == "/"
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
    config.sweep.supervised_max_epochs = 3  # the paper's cap of 100 is long for a test
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
    import csv

    case = {0: ([0.1, 0.3, 0.2], [0.5, 0.4, 0.6]), 1: ([0.2, 0.1, 0.4], [0.3, 0.7, 0.5])}
    for seed, (core, halo) in enumerate(
        [([0.2, 0.5, 0.4], [0.6, 0.7, 0.9]), ([0.3, 0.7, 0.6], [0.5, 0.8, 0.7])]
    ):
        h = history("entropy", "selective", seed, [5.0, 10.0, 15.0], [0.0, 0.0, 0.0])
        for i, rec in enumerate(h):
            rec["dice_per_class"] = {"halo": halo[i], "core": core[i]}
            rec["dice_global_per_class"] = {"halo": halo[i] / 2, "core": core[i] / 4}
            rec["dice"] = (halo[i] + core[i]) / 2
            rec["dice_global"] = (halo[i] / 2 + core[i] / 4) / 2
            case_core, case_halo = case[seed][0][i], case[seed][1][i]
            rec["case_dice_per_class"] = {"halo": case_halo, "core": case_core}
            rec["case_dice"] = (case_halo + case_core) / 2
            rec["case_hd95"] = 3.0
        write_run(tmp_path, h)
    paths = report.write_report(str(tmp_path))
    with open(paths["per_class.csv"]) as f:
        rows = {r["class"]: r for r in csv.DictReader(f)}

    def check(row, key, values):
        np.testing.assert_allclose(float(row[f"{key}_mean"]), np.mean(values), rtol=1e-12)
        np.testing.assert_allclose(float(row[f"{key}_sd"]), np.std(values, ddof=1), rtol=1e-12)
        assert float(row[f"{key}_n"]) == len(values)

    halo, core = rows["halo"], rows["core"]
    check(halo, "case_dice_last", [0.6, 0.5])  # each seed's last round
    check(halo, "case_dice_highest", [0.6, 0.7])  # each seed's highest round
    check(core, "case_dice_last", [0.2, 0.4])
    check(core, "case_dice_highest", [0.3, 0.4])
    check(halo, "slice_dice_highest", [0.9, 0.8])
    check(halo, "slice_dice_last", [0.9, 0.7])
    check(halo, "slice_dice_global_last", [0.45, 0.35])
    check(core, "slice_dice_highest", [0.5, 0.7])
    check(core, "slice_dice_global_last", [0.1, 0.15])
    with open(paths["per_class.md"]) as f:
        md = f.read().splitlines()
    assert md[0].startswith(
        "| strategy | class | seeds | case Dice, last round | case Dice, highest"
    )
    assert md[2].startswith(
        f"| entropy selective | halo | 2 | {0.55:.4f} ± {np.std([0.6, 0.5], ddof=1):.4f} |"
    )
    table = report.round_table(h)
    assert table.splitlines()[0] == (
        "| round | labelled | % labelled | case Dice | HD95 (mm) | case Dice halo | case Dice core "
        "| slice Dice (paper) | slice Dice, global | slice Dice halo | slice Dice core |"
    )
    # last round of seed 1: case mean (0.5 + 0.4) / 2, HD95, halo, core, slice mean
    # (0.7 + 0.6) / 2, global (0.35 + 0.15) / 2, halo, core
    assert table.splitlines()[4] == (
        "| 2 | 30 | 15.0 | 0.4500 | 3.00 | 0.5000 | 0.4000 | 0.6500 | 0.2500 | 0.7000 | 0.6000 |"
    )


def test_per_class_highest_is_never_a_round_that_predicts_nothing():
    """Round 1 predicts no target: its per-class slice Dice (every empty slice scores 1) and its
    case Dice are the largest, yet each class's highest is that of rounds 0 and 2 (the rule of
    the case-Dice headline, report_runs.highest)."""
    halo, core = [0.6, 0.95, 0.7], [0.4, 0.9, 0.3]
    h = history("entropy", "selective", 0, [5.0, 10.0, 15.0], [0.5, 0.92, 0.5])
    for i, rec in enumerate(h):
        rec["dice_per_class"] = {"halo": halo[i], "core": core[i]}
        rec["dice_global_per_class"] = {"halo": halo[i], "core": core[i]}
        rec["case_dice_per_class"] = {"halo": halo[i] - 0.1, "core": core[i] - 0.1}
        rec["test_slices_predicted_target"] = 0 if i == 1 else 5
    rows = {row["class"]: row for row in report.class_rows({"entropy selective": {0: h}})}
    assert rows["halo"]["slice_dice_highest"].values == [0.7]
    assert rows["core"]["slice_dice_highest"].values == [0.4]
    np.testing.assert_allclose(rows["halo"]["case_dice_highest"].values, [0.6])
    np.testing.assert_allclose(rows["core"]["case_dice_highest"].values, [0.3])


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
    runs = report.load_runs(str(tmp_path))
    baseline = report.Baseline(case_dice=None, dice=0.7)
    rows = {r["strategy"]: r for r in report.summary_rows(runs, baseline)}
    ent, rnd = rows["entropy selective"], rows["random all"]
    # only the last rounds have a case Dice: decided by the slice Dice, said so
    assert ent["decided_by"] == "slice_dice"
    # seed 0 first reaches 0.7 at round 2 (310 pixels), seed 1 at round 3 (420), seed 2 never
    assert ent["baseline_reached_target_pixels"].text() == (
        f"{np.mean([310, 420]):.0f} ± {np.std([310, 420], ddof=1):.0f} [2 of 3 seeds]"
    )
    assert rnd["baseline_reached"].text() == "20 (10.0%)"
    assert rnd["baseline_reached_target_pixels"].text() == "-"  # old records: no pixel counts
    assert ent["case_dice_last"].text() == f"{0.7:.4f} ± {np.std([0.8, 0.7, 0.6], ddof=1):.4f}"
    assert ent["case_hd95_mm_last"].text() == f"{6.0:.2f} ± {2.0:.2f}"
    assert rnd["case_dice_last"].text() == rnd["case_hd95_mm_last"].text() == "-"
    columns = list(ent)
    assert columns.index("baseline_reached_target_pixels") == columns.index("baseline_reached") + 1
    (row, _) = report.summary_rows(runs, None)
    assert row["baseline_reached_target_pixels"].text() == "/"
    text = report.summary_markdown(list(rows.values()), baseline, "slice")
    assert "Not every round of every run has a case Dice (eval.cases was off in some)" in text
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


def write_comparison_runs(root, n_seeds):
    """Two strategies over `n_seeds` seeds, 3 rounds each with slice and case Dice; returns
    {name: [per seed: (slice Dice [3], case Dice [3], HD95 [3])]}."""
    rng = np.random.default_rng(7)
    numbers = {}
    for name, shift in (("random all", 0.0), ("entropy selective", 0.03)):
        strategy, mode = name.split()
        numbers[name] = []
        for seed in range(n_seeds):
            slice_dice = np.round([0.5, 0.6 + shift, 0.62 + shift] + rng.normal(0, 0.02, 3), 4)
            case_dice = np.round([0.2, 0.3 + shift, 0.4 + shift] + rng.normal(0, 0.03, 3), 4)
            hd95 = np.round(rng.uniform(3, 20, 3), 2)
            h = history(strategy, mode, seed, [5.0, 10.0, 15.0], slice_dice.tolist())
            with_case(h, case_dice.tolist())
            for rec, v in zip(h, hd95, strict=True):
                rec["case_hd95"] = float(v)
            write_run(str(root), h)
            numbers[name].append((slice_dice, case_dice, hd95))
    return numbers


def nauc(d):
    return (5 * (d[0] + d[1]) / 2 + 5 * (d[1] + d[2]) / 2) / 10


def read_csv(path):
    import csv

    with open(path) as f:
        return {r["strategy"]: r for r in csv.DictReader(f)}


def test_comparison_table_against_the_reference_by_hand(tmp_path):
    """Five seeds: every cell's mean, sd, n and 95 % bootstrap interval (reimplemented in
    NumPy), the paired differences and the Wilcoxon p (SciPy), as numbers in comparison.csv."""
    from scipy import stats as sp

    numbers = write_comparison_runs(tmp_path, 5)
    paths = report.write_report(str(tmp_path))
    rows = read_csv(paths["comparison.csv"])
    ent, rnd = rows["entropy selective"], rows["random all"]

    def check(row, key, values):
        values = np.asarray(values, np.float64)
        np.testing.assert_allclose(float(row[f"{key}_mean"]), values.mean(), rtol=1e-12)
        np.testing.assert_allclose(float(row[f"{key}_sd"]), values.std(ddof=1), rtol=1e-12)
        assert int(row[f"{key}_n"]) == len(values)
        np.testing.assert_allclose(
            [float(row[f"{key}_ci_low"]), float(row[f"{key}_ci_high"])],
            np_bootstrap(values),
            rtol=1e-12,
        )

    mine = numbers["entropy selective"]
    check(ent, "case_dice_last", [c[-1] for _, c, _ in mine])
    check(ent, "case_dice_highest", [c.max() for _, c, _ in mine])
    check(ent, "case_dice_aubc", [nauc(c) for _, c, _ in mine])  # % labelled: 5, 10, 15
    check(ent, "case_hd95_mm_last", [h[-1] for _, _, h in mine])
    check(ent, "slice_dice_highest", [s.max() for s, _, _ in mine])
    check(ent, "slice_dice_nauc", [nauc(s) for s, _, _ in mine])
    theirs = numbers["random all"]
    d_case = np.array([m[1][-1] - t[1][-1] for m, t in zip(mine, theirs, strict=True)])
    d_nauc = np.array([nauc(m[0]) - nauc(t[0]) for m, t in zip(mine, theirs, strict=True)])
    check(ent, "delta_case_dice_last", d_case)
    check(ent, "delta_slice_dice_nauc", d_nauc)
    np.testing.assert_allclose(
        float(ent["delta_case_dice_last_wilcoxon_p"]), sp.wilcoxon(d_case).pvalue, rtol=1e-12
    )
    np.testing.assert_allclose(
        float(ent["delta_slice_dice_nauc_wilcoxon_p"]), sp.wilcoxon(d_nauc).pvalue, rtol=1e-12
    )
    assert int(ent["paired_seeds"]) == 5 and ent["reference"] == "random all"
    assert np.isnan(float(rnd["paired_seeds"])) and np.isnan(
        float(rnd["delta_case_dice_last_mean"])
    )
    assert "at least 6 paired seeds" in ent["note"]  # 5 seeds: p >= 2/2^5
    with open(paths["comparison.md"]) as f:
        text = f.read()
    lo, hi = np_bootstrap([c[-1] for _, c, _ in mine])
    mean = np.mean([c[-1] for _, c, _ in mine])
    assert f"| entropy selective | 5 | {mean:.4f} [{lo:.4f}, {hi:.4f}] |" in text
    assert "10,000 resamples" in text and "against 'random all'" in text
    assert "No interval from fewer than" not in text
    # another reference, named on the command line; an absent one is refused
    report.write_report(str(tmp_path), reference="entropy:selective")
    rows = read_csv(paths["comparison.csv"])
    np.testing.assert_allclose(
        float(rows["random all"]["delta_slice_dice_nauc_mean"]), -d_nauc.mean(), rtol=1e-12
    )
    with pytest.raises(ValueError, match="no run 'bald selective'"):
        report.write_report(str(tmp_path), reference="bald")


def test_fewer_than_five_seeds_give_their_values_not_an_interval(tmp_path):
    """Two seeds: no bootstrap interval (the seeds' values instead, and NaN in the CSV)."""
    numbers = write_comparison_runs(tmp_path, 2)
    paths = report.write_report(str(tmp_path))
    rows = read_csv(paths["comparison.csv"])
    ent = rows["entropy selective"]
    for key in ("case_dice_last", "slice_dice_nauc", "delta_case_dice_last"):
        assert np.isnan(float(ent[f"{key}_ci_low"])) and np.isnan(float(ent[f"{key}_ci_high"]))
        assert int(ent[f"{key}_n"]) == 2
    last = [c[-1] for _, c, _ in numbers["entropy selective"]]
    with open(paths["comparison.md"]) as f:
        text = f.read()
    values = ", ".join(f"{v:.4f}" for v in last)
    assert f"| entropy selective | 2 | {np.mean(last):.4f} (seeds {values}) |" in text
    assert "No interval from fewer than 5 seeds" in text
    pairs = zip(numbers["entropy selective"], numbers["random all"], strict=True)
    d = [e[1][-1] - r[1][-1] for e, r in pairs]  # entropy - random, per seed
    assert f"{np.mean(d):+.4f} (seeds {d[0]:+.4f}, {d[1]:+.4f})" in text
    from selal_jax.core import stats

    assert stats.bootstrap_interval([0.1, 0.2, 0.3, 0.4]) is None
    assert stats.bootstrap_interval([0.1, 0.2, 0.3, 0.4, 0.5]) is not None


def test_no_reference_run_says_so_and_single_seed_has_no_interval(tmp_path):
    write_run(tmp_path, history("entropy", "all", 0, PCTS, [0.5, 0.6, 0.7, 0.7, 0.8]))
    paths = report.write_report(str(tmp_path))
    with open(paths["comparison.md"]) as f:
        text = f.read()
    assert "No paired comparison: no 'random all' run" in text
    assert "| entropy all | 1 | - | - | - | - | 0.8000 (1 seed) |" in text
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
    baseline = report.Baseline(case_dice=None, dice=0.7)
    path = report_plots.plot_learning_curves_pixels(runs, baseline, str(tmp_path / "pixels.png"))
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


def test_tsne_of_a_sweep_that_cannot_be_written_is_drawn_without_its_cache(tmp_path, monkeypatch):
    """`report --out` on a read-only sweep: tsne.npy cannot be written beside the embeddings,
    so the coordinates are computed (those a writable sweep caches) and nothing is left."""
    embeddings = tmp_path / "pool_embeddings.npz"
    features = np.random.default_rng(1).normal(size=(12, 5))
    np.savez(embeddings, features=features, target_pixels=np.arange(12))
    cached = report_plots.tsne_coordinates(str(embeddings))
    os.remove(tmp_path / "tsne.npy")

    def refuse(path, mode="w"):
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(report_plots.atomic, "atomic_open", refuse)
    coords = report_plots.tsne_coordinates(str(embeddings))
    np.testing.assert_array_equal(coords, cached)
    assert sorted(os.listdir(tmp_path)) == ["pool_embeddings.npz"]


def test_seeds_from_ten_on_are_in_numeric_order_in_every_table(tmp_path):
    """seed-10 sorts before seed-2 as a folder name; the bootstrap resamples values by position,
    so the comparison's and aubc.md's AUBC intervals agree only if both see the seeds in one
    order: numeric, as a NumPy bootstrap of the per-seed AUBCs by hand gives."""
    gen = np.random.default_rng(4)
    by_hand = []
    for seed in range(11):
        case = np.sort(gen.uniform(0.2, 0.8, len(PCTS)))
        write_run(tmp_path, with_case(history("entropy", "selective", seed, PCTS, case), case))
        n = np.array(PCTS) * 200 / 100
        by_hand.append(np.sum((case[1:] + case[:-1]) / 2 * np.diff(n)) / (n[-1] - n[0]))
    runs = report.load_runs(str(tmp_path))
    assert list(runs["entropy selective"]) == list(range(11))
    expected = np_bootstrap(np.array(by_hand))
    (comparison,) = report_comparison.comparison_rows(runs, None)
    (aubc,) = report_comparison.aubc_rows(runs)
    np.testing.assert_allclose(comparison["case_dice_aubc"].interval, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(aubc["case_dice_aubc"].interval, expected, rtol=0, atol=1e-12)


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
