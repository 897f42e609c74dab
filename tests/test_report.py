"""Summary table cells from hand-written records; plots and the sweep on a tiny run."""

import json
import os

import numpy as np
import pytest

from selal_jax import diagnostics, report


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
    table = report.markdown_table([row], 0.7)
    assert "| bald selective | 2 |" in table and "0.7000" in table
    csv_text = report.csv_table([row])
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
    from selal_jax import sweep
    from tests.conftest import smoke_config

    config = smoke_config(**{"data.root": cohort_root, "al.rounds": 1, "train.max_epochs": 1})
    config.sweep.runs = "random:all,entropy:selective"
    config.sweep.seeds = "0"
    workdir = str(tmp_path_factory.mktemp("sweep"))
    paths = sweep.run(config, workdir)
    return config, workdir, paths


def test_sweep_shares_round0_and_renders_both_plots(tiny_sweep):
    config, workdir, paths = tiny_sweep
    for name in ("summary.md", "summary.csv", "learning_curves.png", "tsne.png"):
        assert os.path.exists(paths[name])
    for name in ("learning_curves.png", "tsne.png"):
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
    from selal_jax import sweep

    config, workdir, paths = tiny_sweep
    before = {
        p: os.path.getmtime(os.path.join(workdir, p))
        for p in ("seed-0/random-all/records.jsonl", "supervised/supervised.json")
    }
    sweep.run(config, workdir)
    after = {p: os.path.getmtime(os.path.join(workdir, p)) for p in before}
    assert before == after


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
