"""The query gallery: its panels' arrays against the recorded scores and a NumPy computation
from the round's checkpoint; the round chosen when checkpoints were deleted; a read-only run."""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest

from selal_jax.base.errors import UserError
from selal_jax.core import rng, scoring
from selal_jax.run import loop
from selal_jax.run import state as state_lib
from selal_jax.run import workdir as workdir_lib
from selal_jax.verbs import report_gallery
from tests.helpers import launch, smoke_config
from tests.test_read_only import _snapshot, read_only  # noqa: F401  (a fixture)


@pytest.fixture(scope="module")
def bald_run(tmp_path_factory, cohort_root):
    """(workdir, data root, records) of a finished smoke run of selective BALD (MC dropout)
    keeping every round's checkpoint, its data copied beside it."""
    tmp = tmp_path_factory.mktemp("gallery")
    root = str(tmp / "data")
    shutil.copytree(cohort_root, root)
    workdir = str(tmp / "run")
    loop.run(
        smoke_config(**{"data.root": root, "al.strategy": "bald", "checkpoint.keep": 3}), workdir
    )
    return workdir, root, workdir_lib.read_records(os.path.join(workdir, "records.jsonl"))


def masked_score(row: report_gallery.GalleryRow) -> float:
    """The stream's sum of the uncertainty over its mask (the smoke config aggregates by sum)."""
    mask = {"target": row.target, "boundary": row.boundary}[row.stream.split(":")[0]]
    return float(np.sum(row.uncertainty[mask], dtype=np.float64))


@pytest.mark.parametrize("round_index", [None, 0])
def test_the_panels_sum_to_the_recorded_scores(bald_run, round_index):
    workdir, _, records = bald_run
    gallery = report_gallery.build_gallery(workdir, round_index)
    expected_round = 1 if round_index is None else 0  # the last round with a query: 1 of 0..2
    assert gallery.round == expected_round and gallery.note == ""
    record = records[expected_round]
    assert [[r.case, r.slice_index] for r in gallery.rows] == record["queried_slices"]
    assert [r.stream for r in gallery.rows] == record["queried_streams"]
    sums = [masked_score(r) for r in gallery.rows]
    # the MC passes are the ones that scored: the maps' sums are the recorded scores
    np.testing.assert_allclose(sums, record["queried_scores"], rtol=2e-5, atol=1e-6)
    assert max(sums) > 0.1  # not a vacuous match of empty masks


def test_the_panels_are_the_numpy_formulas_of_the_round_s_model(bald_run):
    workdir, _, records = bald_run
    gallery = report_gallery.build_gallery(workdir)
    config = workdir_lib.stored_config(workdir)
    run = state_lib.open_finished(config, workdir)
    parts, al = run.parts, run.parts.config.al
    variables = run.variables(gallery.round)
    ids = np.array(records[gallery.round]["queried"])
    images = np.asarray(run.pool.images[ids], np.float32)
    np.testing.assert_array_equal(np.stack([r.image for r in gallery.rows]), images)
    with rng.classic_threefry():
        logits = scoring.mc_logits(
            parts.model,
            variables,
            images,
            ids.astype(np.int32),
            rng.score_key(rng.round_key(parts.root, gallery.round)),
            int(al.mc_passes),
        )
    z = np.asarray(logits, np.float64)  # [n, passes, H, W]
    p = 1 / (1 + np.exp(-z))

    def entropy(q):
        return -(q * np.log(q) + (1 - q) * np.log1p(-q))

    mean_p = p.mean(axis=1)
    bald = np.maximum(entropy(mean_p) - entropy(p).mean(axis=1), 0)
    u = np.stack([r.uncertainty for r in gallery.rows])
    np.testing.assert_allclose(u, bald, rtol=1e-3, atol=2e-6)
    t, b = float(al.target_threshold), float(al.boundary_width)
    clear = np.abs(mean_p - t) > 1e-5  # pixels that float32 rounding cannot move across T
    target = np.stack([r.target for r in gallery.rows])
    np.testing.assert_array_equal(target[clear], (mean_p > t)[clear])
    near = np.abs(np.abs(mean_p - 0.5) - b) > 1e-5
    boundary = np.stack([r.boundary for r in gallery.rows])
    np.testing.assert_array_equal(boundary[near], (np.abs(mean_p - 0.5) < b)[near])
    deterministic = np.asarray(parts.model.apply(variables, images, False), np.float64)
    prediction = np.stack([r.prediction for r in gallery.rows])
    np.testing.assert_array_equal(prediction, (deterministic > 0).astype(np.uint8))
    assert jax.tree_util.tree_leaves(variables)  # restored, not the untrained model


def test_the_round_shown_when_checkpoints_were_deleted():
    history = [{"round": 0, "queried": [1]}, {"round": 1, "queried": [2]}, {"round": 2}]
    assert report_gallery.choose_round(history, [1, 2], None) == (1, "")
    r, note = report_gallery.choose_round(history, [1, 2], 0)
    assert r == 1 and "round 0's checkpoint was deleted" in note and "showing round 1" in note
    with pytest.raises(UserError, match="--gallery_round=2: that round queried nothing"):
        report_gallery.choose_round(history, [1, 2], 2)
    with pytest.raises(UserError, match="no kept checkpoint of a round with a query"):
        report_gallery.choose_round(history, [2], None)


def test_report_writes_the_gallery_of_a_read_only_run_elsewhere(bald_run, tmp_path, read_only):  # noqa: F811
    workdir, root, _ = bald_run
    before = _snapshot([workdir, root])
    out = str(tmp_path / "report")
    proc = read_only(
        ["report", f"--workdir={workdir}", f"--out={out}", "--gallery_round=0"], [workdir, root]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "gallery.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {os.path.join(out, 'gallery.png')}" in proc.stdout
    assert _snapshot([workdir, root]) == before


def test_a_round_without_a_query_is_refused_in_one_line(bald_run, tmp_path):
    workdir, _, _ = bald_run
    proc = launch("report", f"--workdir={workdir}", f"--out={tmp_path}", "--gallery_round=2")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --gallery_round=2: that round queried nothing; rounds with a query: [0, 1]"
    )
    assert os.listdir(tmp_path) == []  # refused before any file was written
