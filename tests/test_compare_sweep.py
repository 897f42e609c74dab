"""configs/default.py:compare, the sweep of the strategies issue, end to end at smoke size
(`:compare_smoke`): every run's folder and options, the shared round 0, the report's tables and
galleries; and the ClaSP-like variant on one class being power-sampled selective entropy."""

from __future__ import annotations

import os

import numpy as np
import pytest

from selal_jax.core import rng, selection
from selal_jax.core.stats import MIN_BOOTSTRAP_N
from selal_jax.run import workdir as workdir_lib
from selal_jax.verbs import report, report_gallery
from tests.helpers import config_from_flags, launch
from tests.test_sampling import mixed_stats

FOLDERS = (
    "random_predicted-all",
    "random_label-all",
    "entropy-all",
    "entropy-selective",
    "entropy-selective-power",
    "entropy-selective-power-class_balanced",
)
CLASP = "entropy-selective-power-class_balanced"


def test_compare_variant_runs_the_field_s_comparison_on_two_classes():
    """configs/default.py:compare: the references, entropy all and selective, selective with
    power sampling and the ClaSP-like variant, on the two-class cohort (where the
    class-stratified target half differs from the plain one); each run's config validates; its
    seeds are enough for the report's bootstrap intervals and for a signed-rank p below 0.05
    (the smallest two-sided p of n non-zero differences is 2 / 2^n)."""
    from configs import default
    from selal_jax.verbs import run_names, sweep

    for arg in ("compare", "compare_smoke"):
        c = default.get_config(arg)
        folders = sweep.run_folders(c, "/nonexistent", run_names.parse_runs(c.sweep.runs), 0)
        assert tuple(folders.values()) == FOLDERS
        assert c.data.synthetic.kind == "multiclass" and c.data.classes == "all"
    seeds = sweep.parse_seeds(default.get_config("compare").sweep.seeds)
    assert len(set(seeds)) == len(seeds) >= MIN_BOOTSTRAP_N
    assert 2 / 2 ** len(seeds) < 0.05


def test_runs_with_options_pass_through_a_string_flag_intact():
    runs = "random:all,entropy:selective:sampling=power:class_balanced=True:max_per_case=2"
    config = config_from_flags(["--config=configs/default.py", f"--config.sweep.runs={runs}"])
    assert config.sweep.runs == runs


def test_on_one_class_the_clasp_like_query_is_the_power_sampled_one():
    gen = np.random.default_rng(0)
    n = 40  # stats without class fields: one class, the target stream's
    stats = mixed_stats(gen, n)._replace(class_target_sum=None, class_target_count=None)
    ids = np.sort(gen.choice(500, n, replace=False))
    for seed in range(5):
        key = rng.sample_key(rng.round_key(rng.root_key(seed), 1))
        plain, clasp = (
            selection.select(stats, ids, 9, mode="selective", sampling="power", key=key, **extra)
            for extra in ({}, {"class_balanced": True})
        )
        assert clasp.ids.tolist() == plain.ids.tolist() and clasp.streams == plain.streams
        np.testing.assert_array_equal(clasp.scores, plain.scores)


@pytest.mark.slow
def test_the_compare_sweep_end_to_end(tmp_path):
    workdir = str(tmp_path / "compare")
    proc = launch("sweep", "--config=configs/default.py:compare_smoke", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for seed in (0, 1):
        seed_dir = os.path.join(workdir, f"seed-{seed}")
        assert sorted(os.listdir(seed_dir)) == sorted([*FOLDERS, "round0"])
        histories = {
            f: workdir_lib.read_records(os.path.join(seed_dir, f, "records.jsonl")) for f in FOLDERS
        }
        # one shared round 0: the same model, so the same metrics, in every run of the seed
        assert len({(h[0]["dice"], h[0]["val_loss"]) for h in histories.values()}) == 1
        assert {h[0]["sampling"] for h in histories.values()} == {"top_k", "power"}
        clasp = histories[CLASP]
        assert clasp[0]["class_balanced"] is True and clasp[0]["sampling"] == "power"
    report_dir = os.path.join(workdir, "report")
    expected = {"summary.md", "comparison.md", "penalty.md", "penalty.csv", "aubc.md"}
    expected |= {f"gallery-{f}.png" for f in FOLDERS if f.startswith("entropy")}
    present = set(os.listdir(report_dir))
    assert expected <= present
    assert not any(f.startswith("gallery-random") for f in present)  # random scores nothing
    runs = report.load_runs(workdir)
    with open(os.path.join(report_dir, "penalty.md")) as f:
        penalty = f.read()
    for name in runs:
        assert f"| {name} |" in penalty
    assert "entropy selective power class_balanced" in runs
    # the class-stratified query: a class's own target mask scored its slices
    gallery = report_gallery.build_gallery(os.path.join(workdir, "seed-0", CLASP))
    by_class = [r for r in gallery.rows if r.stream.startswith("target:")]
    assert by_class, [r.stream for r in gallery.rows]
    for row in by_class:
        c = int(row.stream.split(":")[1])
        assert row.target.sum() <= (row.uncertainty >= 0).sum()
        np.testing.assert_allclose(
            np.sum(row.uncertainty[row.target], dtype=np.float64), row.score, rtol=2e-5, atol=1e-6
        )
        assert c in (1, 2)
