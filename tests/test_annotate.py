"""A human annotator: query export, label import, their checks, and the clinician round trip."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import nibabel as nib
import numpy as np
import pytest

from selal_jax.base import schema
from selal_jax.data import cases, config_fields, fitting, label_volumes, loading
from selal_jax.run import checkpointing, label_store, loop, parts, state
from selal_jax.run import workdir as workdir_lib
from selal_jax.verbs import annotate
from tests import helpers
from tests.helpers import REPO, comparable, restore_final, smoke_config

# Smoke sizes, trained just enough that the uncertainty scores are not all 0 (ties).
TRAIN = {"train.max_epochs": 2, "train.min_steps_per_epoch": 6, "train.learning_rate": 1e-2}


def correct(export_dir: str, truth) -> None:
    """The clinician: writes the true masks into the queried slices of each exported volume
    (and zeros elsewhere); `truth(case_id)` is the path of the case's true label file."""
    with open(os.path.join(export_dir, annotate.QUERY_JSON)) as f:
        query = json.load(f)
    for case in query["cases"]:
        path = os.path.join(export_dir, case["label_file"])
        exported = nib.load(path)
        true = np.asarray(nib.load(truth(case["case_id"])).dataobj)
        data = np.zeros(exported.shape, np.uint8)
        index = [slice(None)] * 3
        for i in case["slice_indices"]:
            index[case["axis"]] = i
            data[tuple(index)] = true[tuple(index)]
        nib.save(nib.Nifti1Image(data, exported.affine, exported.header), path)


def labelled_ids(config, workdir) -> set[int]:
    experiment = state.open_finished(config, workdir)
    return set(np.flatnonzero(experiment.labelled).tolist())


# ------------------------------------------------------------------ the clinician round trip


@pytest.fixture(scope="module")
def cohort_config(cohort_root):
    return {"data.root": cohort_root, **TRAIN}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, cohort_config):
    config = smoke_config(**cohort_config)
    workdir = str(tmp_path_factory.mktemp("simulated"))
    return config, workdir, loop.run(config, workdir)


@pytest.fixture(scope="module")
def clinician(tmp_path_factory, cohort_config, cohort_root):
    """The human workflow on the same data and seed: run, export, correct, import, ... ."""
    config = smoke_config(**cohort_config, **{"al.annotator": "human"})
    workdir = str(tmp_path_factory.mktemp("human"))

    def truth(case_id):
        return os.path.join(cohort_root, "labelsTr", f"{case_id}.nii.gz")

    steps = []
    for _ in range(config.al.rounds):
        history = loop.run(config, workdir)
        with open(os.path.join(workdir, workdir_lib.RECORDS_FILE)) as f:
            records = [json.loads(line) for line in f]
        export = annotate.export_query(config, workdir)
        correct(export, truth)
        summary = annotate.import_labels(config, workdir, export)
        steps.append(
            {
                "history": history,
                "records": records,
                "export": export,
                "summary": summary,
                "labelled": labelled_ids(config, workdir),
            }
        )
    final = loop.run(config, workdir)
    return config, workdir, steps, final


def test_clinician_writing_true_masks_reproduces_the_simulated_loop(simulated, clinician):
    sim_config, sim_workdir, sim_history = simulated
    config, workdir, steps, final = clinician
    queries = [rec["queried"] for rec in sim_history]
    labelled = set(labelled_ids(sim_config, sim_workdir)) - {i for q in queries for i in q}
    for r, step in enumerate(steps):
        # The run stops after round r's query: the same query, its labels not yet known.
        assert [rec["round"] for rec in step["history"]] == list(range(r + 1))
        pending = step["records"][-1]
        assert pending["queried"] == queries[r]
        assert pending["queried_streams"] == sim_history[r]["queried_streams"]
        assert pending["queried_scores"] == sim_history[r]["queried_scores"]
        assert pending["queried_with_target"] is None
        assert comparable(step["history"][:r]) == comparable(sim_history[:r])
        # After the import: the simulated loop's labelled set.
        labelled |= set(queries[r])
        assert step["labelled"] == labelled
        assert step["summary"]["n_labelled"] == len(labelled)
        assert step["summary"]["queried_with_target"] == sim_history[r]["queried_with_target"]
    assert comparable(final) == comparable(sim_history)
    with open(os.path.join(workdir, workdir_lib.RECORDS_FILE)) as f:
        assert comparable([json.loads(line) for line in f]) == comparable(sim_history)
    for a, b in zip(
        jax.tree_util.tree_leaves(restore_final(config, workdir)[0]),
        jax.tree_util.tree_leaves(restore_final(sim_config, sim_workdir)[0]),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_export_lists_each_queried_slice(clinician, simulated):
    _, _, steps, _ = clinician
    _, _, sim_history = simulated
    export = steps[0]["export"]
    with open(os.path.join(export, annotate.QUERY_CSV), newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == annotate.CSV_FIELDS
    assert [int(row["pool_id"]) for row in rows] == sim_history[0]["queried"]
    assert [row["stream"] for row in rows] == sim_history[0]["queried_streams"]
    np.testing.assert_allclose(
        [float(row["score"]) for row in rows], sim_history[0]["queried_scores"], rtol=1e-6
    )
    with open(os.path.join(export, annotate.QUERY_JSON)) as f:
        query = json.load(f)
    assert query["round"] == 0 and query["n_slices"] == len(rows)
    for row in rows:  # the synthetic cohort is RAS: file axes are the canonical ones
        assert (row["axis"], row["slice_index"]) == (row["canonical_axis"], row["canonical_index"])
        assert os.path.isfile(row["image_file"])
        assert os.path.isfile(os.path.join(export, row["label_file"]))


def test_changed_or_missing_annotation_file_is_refused_on_resume(clinician, tmp_path):
    config, workdir, _, _ = clinician
    copy = str(tmp_path / "w")
    shutil.copytree(workdir, copy)
    path = os.path.join(copy, workdir_lib.ANNOTATIONS_DIR, "round_000.npz")
    with open(path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(label_store.LabelStoreError, match="round_000.npz: changed"):
        loop.run(config, copy)
    os.remove(path)
    with pytest.raises(label_store.LabelStoreError, match="round_000.npz: missing"):
        loop.run(config, copy)


# ------------------------------------------------- unlabelled pool, reoriented files, rejections

SHAPE = (32, 32, 10)


def _affines() -> list[np.ndarray]:
    """Voxel-to-world matrices of the 8 cases: RAS, flipped and permuted axes."""
    nx, ny, nz = SHAPE

    def m(columns, origin=(0.0, 0.0, 0.0)):
        out = np.eye(4)
        out[:3, :3] = np.asarray(columns, np.float64).T  # column i: direction of file axis i
        out[:3, 3] = origin
        return out

    return [
        m([(1, 0, 0), (0, 1, 0), (0, 0, 2)]),  # RAS
        m([(-1, 0, 0), (0, 1, 0), (0, 0, 2)], (nx - 1, 0, 0)),  # LAS: x flipped
        m([(-1, 0, 0), (0, -1, 0), (0, 0, 2)], (nx - 1, ny - 1, 0)),  # LPS (DICOM-like)
        m([(1, 0, 0), (0, 1, 0), (0, 0, -2)], (0, 0, 2 * (nz - 1))),  # z flipped
        m([(0, 1, 0), (1, 0, 0), (0, 0, 2)]),  # x and y swapped
        m([(1, 0, 0), (0, 0, 1), (0, 2, 0)]),  # coronal acquisition: j is z
        m([(0, 0, -1), (0, 1, 0), (2, 0, 0)], (0, 0, nx - 1)),  # i is -z, k is x
        m([(1, 0, 0), (0, 1, 0), (0, 0, 2)]),  # RAS
    ]


UNLABELLED = ("case_002", "case_005", "case_006")


@pytest.fixture(scope="module")
def oriented(tmp_path_factory):
    """An MSD folder whose cases have various orientations, three without labels in
    dataset.json (their label files stay on disk as the clinician's truth), and a human run
    awaiting round 0's labels, with the query exported."""
    base = tmp_path_factory.mktemp("oriented")
    vols = [helpers.make_volume(np.random.default_rng([5, i]), SHAPE) for i in range(8)]
    root = helpers.write_msd(str(base / "msd"), vols, affines=_affines())
    meta_path = os.path.join(root, "dataset.json")
    with open(meta_path) as f:
        meta = json.load(f)
    for entry in meta["training"]:
        if any(case in entry["image"] for case in UNLABELLED):
            del entry["label"]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    overrides = {
        "data.layout": "msd",
        "data.root": root,
        "data.allow_unlabelled": True,
        "al.annotator": "human",
        "al.query_size": 12,
        **TRAIN,
    }
    config = smoke_config(**overrides)
    workdir = str(base / "run")
    loop.run(config, workdir)
    export = annotate.export_query(config, workdir)
    return config, workdir, export, root


def truth_of(root):
    return lambda case_id: os.path.join(root, "labelsTr", f"{case_id}.nii.gz")


def read_query(export):
    with open(os.path.join(export, annotate.QUERY_JSON)) as f:
        return json.load(f)


def test_simulated_annotator_refuses_an_unlabelled_pool(oriented, tmp_path):
    config, _, _, _ = oriented
    simulated = config.copy_and_resolve_references()
    simulated.al.annotator = "simulated"
    with pytest.raises(ValueError, match="3 training cases have no labels.*al.annotator=human"):
        parts.build(simulated, str(tmp_path))


def test_export_is_in_each_files_own_geometry(oriented):
    config, workdir, export, root = oriented
    query = read_query(export)
    cases = {c["case_id"]: c for c in query["cases"]}
    # The data covers what it should: unlabelled cases and files whose slice axis is not k.
    assert set(cases) & set(UNLABELLED)
    assert {c["axis"] for c in cases.values()} >= {1, 2}
    for case_id, case in cases.items():
        source = nib.load(case["image_file"])
        exported = nib.load(os.path.join(export, case["label_file"]))
        assert exported.shape == source.shape
        np.testing.assert_allclose(exported.affine, source.affine)
        assert nib.aff2axcodes(exported.affine) == nib.aff2axcodes(source.affine)
        assert exported.get_data_dtype() == np.uint8
        data = np.asarray(exported.dataobj)
        assert set(np.unique(data).tolist()) <= {0, 1}
        outside = np.ones(data.shape[case["axis"]], bool)
        outside[case["slice_indices"]] = False
        assert not np.take(data, np.flatnonzero(outside), axis=case["axis"]).any()
        # The listed file slice is the canonical slice the loader cut (checked through nibabel).
        canonical = np.asarray(nib.as_closest_canonical(exported).dataobj)
        rows = [s for s in query["slices"] if s["case_id"] == case_id]
        for row in rows:
            plane = np.take(data, row["slice_index"], axis=row["axis"])
            canonical_plane = np.take(canonical, row["canonical_index"], axis=row["canonical_axis"])
            assert plane.sum() == canonical_plane.sum()


def loader_labels(root, tmp_path) -> dict[tuple[str, int], np.ndarray]:
    """{(case, canonical slice): mask} as the loader makes them from the true label files."""
    full = str(tmp_path / "full")
    shutil.copytree(root, full)
    meta_path = os.path.join(full, "dataset.json")
    with open(meta_path) as f:
        meta = json.load(f)
    for entry in meta["training"]:
        entry["label"] = entry["image"].replace("imagesTr", "labelsTr")
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    config = smoke_config(**{"data.layout": "msd", "data.root": full})
    splits = loading.load_dataset(config.data, str(tmp_path / "full-work"))
    out = {}
    for part in (splits.train, splits.val, splits.test):
        for i in range(len(part)):
            out[(part.cases[part.subject[i]], int(part.slice_index[i]))] = part.labels[i]
    return out


def test_clinician_on_an_unlabelled_pool_with_reoriented_files(oriented, tmp_path):
    config, workdir, export, root = oriented
    copy, labels = str(tmp_path / "run"), str(tmp_path / "labels")
    shutil.copytree(workdir, copy)
    shutil.copytree(export, labels)
    correct(labels, truth_of(root))
    summary = annotate.import_labels(config, copy, labels)
    expected = loader_labels(root, tmp_path)
    experiment = state.open_finished(config, copy)
    ids = np.asarray(experiment.history[-1]["queried"])
    assert experiment.awaiting is None and experiment.labelled[ids].all()
    assert summary["n_slices"] == len(ids) and summary["n_labelled"] == experiment.labelled.sum()
    train = experiment.pool
    got = train.labels[ids]  # what training reads: the imported masks
    cases = [train.cases[train.subject[i]] for i in ids]
    for k, pool_id in enumerate(ids):
        want = expected[(cases[k], int(train.slice_index[pool_id]))]
        np.testing.assert_array_equal(got[k], want, err_msg=f"{cases[k]}")
    assert set(cases) & set(UNLABELLED)
    assert got[[c in UNLABELLED for c in cases]].any()  # not vacuous: target was imported
    labelled = np.flatnonzero(experiment.labelled)
    drawn = (np.asarray(train.labels[labelled]) > 0).reshape(len(labelled), -1).sum(1)
    dataset = (np.asarray(experiment.splits.train.labels[labelled]) > 0).sum()
    history = loop.run(config, copy)  # the next round
    assert [r["round"] for r in history] == [0, 1]
    assert history[0]["queried_with_target"] == int(got.reshape(len(ids), -1).any(1).sum())
    # the annotation cost counts the imported masks (the dataset has none for unlabelled cases)
    assert history[1]["labelled_target_pixels"] == int(drawn.sum()) != int(dataset)
    assert history[1]["labelled_slices_with_target"] == int((drawn > 0).sum())
    assert history[1]["n_labelled"] == summary["n_labelled"]


def test_importing_the_unchanged_prefill_gives_back_the_predicted_masks(oriented, tmp_path):
    config, workdir, export, _ = oriented
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    experiment = state.open_finished(config, copy)
    ids = np.asarray(experiment.history[-1]["queried"])
    predicted = annotate.predicted_masks(experiment, ids)
    source = experiment.splits.source
    settings = config_fields.make_settings(config.data, source)
    canonical = [
        label_volumes.Geometry.of(source.cases[s], settings).canonical_shape()
        for s in experiment.pool.subject[ids]
    ]
    annotate.import_labels(config, copy, export)  # the export folder itself works too
    stored_ids, masks = label_store.LabelStore(
        os.path.join(copy, workdir_lib.ANNOTATIONS_DIR)
    ).read(0)
    np.testing.assert_array_equal(stored_ids, ids)
    # Exact where the loader did not resize (canonical in-plane shape = data.size).
    same_size = np.asarray([shape[:2] == tuple(config.data.size) for shape in canonical])
    assert same_size.any() and predicted[same_size].any()
    np.testing.assert_array_equal(masks[same_size], predicted[same_size])


@pytest.mark.parametrize("resample", ["crop", "resize"])
def test_prefill_lands_on_the_canonical_slices_the_loader_cuts(tmp_path, resample):
    settings = cases.Settings(
        axis=2,
        size=(32, 32),
        resample=resample,
        normalisation="zscore",
        ct_window=(0.0, 1.0),
        keep_empty_slices=True,
        target_values=None,
        allowed_labels=None,
        reorient="canonical",
    )
    rng = np.random.default_rng(0)
    for k, affine in enumerate(_affines()):
        path = str(tmp_path / f"c{k}.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), affine), path)
        geometry = label_volumes.Geometry.of(cases.CaseFiles(f"c{k}", path, None), settings)
        canonical_index = np.array([1, 4])
        masks = (rng.random((2, 32, 32)) < 0.3).astype(np.uint8)
        volume = label_volumes.prefill_volume(geometry, canonical_index, masks, 2)
        assert volume.shape == SHAPE and volume.dtype == np.uint8
        canonical = nib.as_closest_canonical(nib.Nifti1Image(volume, affine))
        stack = np.moveaxis(np.asarray(canonical.dataobj), 2, 0)  # preprocess.to_slices
        expected = fitting.unfit_slices(masks, stack.shape[1:], resample)
        np.testing.assert_array_equal(stack[canonical_index], 2 * expected)
        assert not np.delete(stack, canonical_index, axis=0).any()
        if stack.shape[1:] == (32, 32):  # no fitting: the loader gets the masks back exactly
            back = fitting.fit_slices(stack[canonical_index] // 2, (32, 32), resample, True)
            np.testing.assert_array_equal(back, masks)
        for c, index in zip(canonical_index, geometry.file_index(canonical_index), strict=True):
            plane = np.take(volume, index, axis=geometry.file_axis)
            assert plane.sum() == stack[c].sum() > 0


def test_unfit_inverts_fit_where_fit_loses_nothing():
    rng = np.random.default_rng(1)
    small = (rng.random((3, 10, 12)) < 0.4).astype(np.uint8)
    padded = fitting.fit_slices(small, (16, 16), "crop", is_label=True)
    np.testing.assert_array_equal(fitting.unfit_slices(padded, (10, 12), "crop"), small)
    upsampled = fitting.fit_slices(small, (20, 24), "resize", is_label=True)
    np.testing.assert_array_equal(fitting.unfit_slices(upsampled, (10, 12), "resize"), small)
    odd = fitting.unfit_slices(upsampled, (13, 7), "resize")
    assert odd.shape == (3, 13, 7)


def test_cli_query_and_import_labels_use_the_runs_stored_config(oriented, tmp_path):
    _, workdir, _, _ = oriented
    copy, out = str(tmp_path / "run"), str(tmp_path / "export")
    shutil.copytree(workdir, copy)
    launch = [sys.executable, os.path.join(REPO, "launch.py")]
    proc = subprocess.run(launch + ["bogus"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and "expected one of" in proc.stderr
    proc = subprocess.run(
        launch + ["query", f"--workdir={copy}", f"--out={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isfile(os.path.join(out, annotate.QUERY_CSV))
    proc = subprocess.run(
        launch + ["import-labels", f"--workdir={copy}", f"--labels={out}/labels"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isfile(os.path.join(copy, workdir_lib.ANNOTATIONS_DIR, "round_000.npz"))


def test_the_human_loop_continues_with_the_workdir_alone(oriented, tmp_path):
    """After the first command, every step takes --workdir alone: the next round runs with the
    run's stored config, and a --config.X=... given without --config changes that config (and
    is checked as any change is), for `run` and `query` alike."""
    config, workdir, export, root = oriented
    copy, labels = str(tmp_path / "run"), str(tmp_path / "labels")
    shutil.copytree(workdir, copy)
    shutil.copytree(export, labels)
    correct(labels, truth_of(root))
    annotate.import_labels(config, copy, labels)
    launch = [sys.executable, os.path.join(REPO, "launch.py")]
    proc = subprocess.run(
        launch + [f"--workdir={copy}"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round 1: the query of" in proc.stdout  # the next round ran and awaits its labels
    records = helpers.read_records(copy)
    assert [r["round"] for r in records] == [0, 1] and records[1]["queried_with_target"] is None
    stored = schema.flatten(workdir_lib.stored_config(copy))
    assert stored == schema.flatten(config)
    for verb in ([], ["query"]):
        proc = subprocess.run(
            launch + verb + [f"--workdir={copy}", "--config.train.patience=9"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 1, proc.stderr[-3000:]
        # the stored config with the one field changed, not configs/default.py's
        assert "config differs from the one this run was started with (train.patience: 2 -> 9)" in (
            proc.stderr
        ), proc.stderr[-3000:]
    assert helpers.read_records(copy) == records


def test_workflow_refusals(oriented, tmp_path):
    config, workdir, export, _ = oriented
    with pytest.raises(annotate.AnnotationError, match="already exists"):
        annotate.export_query(config, workdir, out=export)  # holds an export: never overwritten
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    annotate.import_labels(config, copy, export)
    for action in (
        lambda: annotate.import_labels(config, copy, export),
        lambda: annotate.export_query(config, copy, str(tmp_path / "again")),
    ):
        with pytest.raises(annotate.AnnotationError, match="no query awaits labels"):
            action()
    simulated = config.copy_and_resolve_references()
    simulated.al.annotator = "simulated"
    with pytest.raises(annotate.AnnotationError, match="al.annotator is 'simulated'"):
        annotate.export_query(simulated, copy)
    with pytest.raises(annotate.AnnotationError, match="no checkpoint"):
        annotate.import_labels(config, str(tmp_path / "empty"), export)


# ---------------------------------------------------------------------------- rejections


def _first_case(export):
    case = read_query(export)["cases"][0]
    return case, os.path.join(export, case["label_file"])


def _rewrite(path, data=None, affine=None):
    old = nib.load(path)
    data = np.asarray(old.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(data, old.affine if affine is None else affine), path)


def _outside_slice(case):
    shape = nib.load(case["image_file"]).shape
    return next(i for i in range(shape[case["axis"]]) if i not in case["slice_indices"])


def missing(case, path):
    os.remove(path)
    return "missing; case"


def unreadable(case, path):
    with open(path, "wb") as f:
        f.write(b"not a nifti at all")
    return "unreadable NIfTI label"


def wrong_shape(case, path):
    _rewrite(path, np.zeros((32, 32, 9), np.uint8))
    return "differs from the source image's"


def wrong_affine(case, path):
    old = nib.load(path)
    _rewrite(path, affine=old.affine @ np.diag([-1.0, 1.0, 1.0, 1.0]))
    return "affine (orientation, spacing or origin) differs"


def unexpected_value(case, path):
    data = np.asarray(nib.load(path).dataobj).copy()
    index = [slice(None)] * 3
    index[case["axis"]] = case["slice_indices"][0]
    data[tuple(index)][0, 0] = 3
    _rewrite(path, data)
    return "unexpected label values [3]"


def not_integer(case, path):
    data = np.asarray(nib.load(path).dataobj).astype(np.float32)
    index = [slice(None)] * 3
    index[case["axis"]] = case["slice_indices"][0]
    data[tuple(index)][0, 0] = 0.5
    _rewrite(path, data)
    return "label values must be integers"


def outside_query(case, path):
    data = np.asarray(nib.load(path).dataobj).copy()
    index = [slice(None)] * 3
    index[case["axis"]] = _outside_slice(case)
    data[tuple(index)][2:5, 2:5] = 1
    _rewrite(path, data)
    return f"non-zero voxels on 1 slices outside the query (axis {case['axis']}, slices [{_outside_slice(case)}])"


def two_files(case, path):
    nib.save(nib.load(path), path[: -len(".gz")])  # <case>.nii next to <case>.nii.gz
    return "two files for queried case"


REJECTIONS = [
    missing,
    unreadable,
    wrong_shape,
    wrong_affine,
    unexpected_value,
    not_integer,
    outside_query,
    two_files,
]


def _snapshot(workdir):
    with open(os.path.join(workdir, workdir_lib.RECORDS_FILE)) as f:
        records = f.read()
    annotations = os.path.join(workdir, workdir_lib.ANNOTATIONS_DIR)
    return records, sorted(os.listdir(annotations)) if os.path.isdir(annotations) else []


@pytest.mark.parametrize("spoil", REJECTIONS, ids=[f.__name__ for f in REJECTIONS])
def test_a_rejected_file_is_named_with_its_reason_and_nothing_changes(oriented, tmp_path, spoil):
    config, workdir, export, root = oriented
    labels = str(tmp_path / "labels")
    shutil.copytree(os.path.join(export, annotate.LABELS_DIR), labels)
    case, path = _first_case(export)
    path = os.path.join(labels, os.path.basename(path))
    reason = spoil(case, path)
    before = _snapshot(workdir)
    with pytest.raises(annotate.AnnotationError) as info:
        annotate.import_labels(config, workdir, labels)
    message = str(info.value)
    assert "nothing changed" in message and "(1 problems)" in message, message
    assert path in message and reason in message, message
    assert _snapshot(workdir) == before  # the other, valid files were not imported either


def test_changes_outside_the_query_can_be_allowed_and_are_ignored(oriented, tmp_path):
    config, workdir, export, _ = oriented
    copy, labels = str(tmp_path / "run"), str(tmp_path / "labels")
    shutil.copytree(workdir, copy)
    shutil.copytree(os.path.join(export, annotate.LABELS_DIR), labels)
    case, path = _first_case(export)
    path = os.path.join(labels, os.path.basename(path))
    outside_query(case, path)
    annotate.import_labels(config, copy, labels, allow_changes_outside_query=True)
    reference = str(tmp_path / "reference")
    shutil.copytree(workdir, reference)
    annotate.import_labels(config, reference, export)
    stores = [
        label_store.LabelStore(os.path.join(w, workdir_lib.ANNOTATIONS_DIR))
        for w in (copy, reference)
    ]
    for a, b in zip(stores[0].read(0), stores[1].read(0), strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_import_interrupted_after_its_commit_point_is_applied_on_resume(
    oriented, tmp_path, monkeypatch
):
    config, workdir, export, _ = oriented
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed after the annotation file was renamed into place")

    monkeypatch.setattr(checkpointing, "write_json_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        annotate.import_labels(config, copy, export)
    monkeypatch.undo()
    experiment = state.open_finished(config, copy)
    ids = experiment.history[-1]["queried"]
    assert experiment.awaiting is None and experiment.labelled[ids].all()
    assert experiment.history[-1]["queried_with_target"] is not None


def test_runs_started_before_the_annotator_fields_existed_stay_resumable():
    current = schema.flatten(smoke_config())
    stored = {k: v for k, v in current.items() if k not in schema.ADDED_KEYS}
    assert schema.differences(stored, current) == []
    human = schema.flatten(smoke_config(**{"al.annotator": "human"}))
    assert schema.differences(stored, human) == ["al.annotator"]


def test_finished_human_run_with_more_rounds_is_refused(clinician, tmp_path):
    config, workdir, _, final = clinician
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    more = smoke_config(**{**dict(TRAIN), "data.root": config.data.root, "al.annotator": "human"})
    more.al.rounds = config.al.rounds + 1
    with pytest.raises(ValueError, match="cannot be extended"):
        loop.run(more, copy)
    assert loop.run(config, copy) == final  # the finished run itself still loads


def test_an_interrupted_save_is_not_a_checkpoint(tmp_path, cohort_root):
    config = smoke_config(**{"data.root": cohort_root, "al.annotator": "human"})
    os.makedirs(tmp_path / "checkpoints" / "0.orbax-checkpoint-tmp-1700000000")
    with pytest.raises(annotate.AnnotationError, match="no checkpoint"):
        annotate.export_query(config, str(tmp_path))


# ------------------------------------------------ the clinician round trip with several classes


@pytest.fixture(scope="module")
def multiclass_overrides(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mc") / "cohort")
    return {"data.root": root, "data.synthetic.kind": "multiclass", **TRAIN}


@pytest.fixture(scope="module")
def multiclass_simulated(tmp_path_factory, multiclass_overrides):
    config = smoke_config(**multiclass_overrides, **{"al.rounds": 1})
    workdir = str(tmp_path_factory.mktemp("mc-simulated"))
    return config, workdir, loop.run(config, workdir)


def test_multiclass_clinician_reproduces_the_simulated_loop(
    multiclass_simulated, multiclass_overrides, tmp_path
):
    sim_config, _, sim_history = multiclass_simulated
    assert list(sim_history[0]["dice_per_class"]) == ["halo", "core"]
    config = smoke_config(**multiclass_overrides, **{"al.rounds": 1, "al.annotator": "human"})
    workdir = str(tmp_path / "human")
    root = config.data.root

    def truth(case_id):
        return os.path.join(root, "labelsTr", f"{case_id}.nii.gz")

    loop.run(config, workdir)
    export = annotate.export_query(config, workdir)
    with open(os.path.join(export, annotate.QUERY_JSON)) as f:
        assert json.load(f)["label_values"] == {"halo": 1, "core": 2}
    # The prefill holds the model's argmax classes written as the dataset's label values.
    prefilled = np.unique(
        np.concatenate(
            [
                np.asarray(nib.load(os.path.join(export, "labels", name)).dataobj).ravel()
                for name in os.listdir(os.path.join(export, "labels"))
            ]
        )
    )
    assert set(prefilled.tolist()) <= {0, 1, 2}
    # A value outside the classes is refused by file and value; nothing is imported.
    spoiled = str(tmp_path / "spoiled")
    shutil.copytree(export, spoiled)
    correct(spoiled, truth)
    name = sorted(os.listdir(os.path.join(spoiled, "labels")))[0]
    path = os.path.join(spoiled, "labels", name)
    image = nib.load(path)
    data = np.asarray(image.dataobj).copy()
    data[data == 2] = 7
    nib.save(nib.Nifti1Image(data, image.affine, image.header), path)
    with pytest.raises(annotate.AnnotationError, match=rf"{name}.*unexpected label values \[7\]"):
        annotate.import_labels(config, workdir, spoiled)
    correct(export, truth)
    annotate.import_labels(config, workdir, export)
    final = loop.run(config, workdir)
    assert comparable(final) == comparable(sim_history)


def test_slicer_segmentations_and_nrrd_label_maps_import_as_their_nifti(oriented, tmp_path):
    """The corrected volumes saved from 3D Slicer (.seg.nrrd, cropped to the segments, LPS; or
    a plain .nrrd label map) import to exactly the masks of the same corrections as NIfTI."""
    config, workdir, export, root = oriented
    corrected = str(tmp_path / "corrected")
    shutil.copytree(export, corrected)
    correct(corrected, truth_of(root))
    slicer = str(tmp_path / "slicer_files")
    os.makedirs(slicer)
    kinds = set()
    for name in sorted(os.listdir(os.path.join(corrected, annotate.LABELS_DIR))):
        image = nib.load(os.path.join(corrected, annotate.LABELS_DIR, name))
        data = np.asarray(image.dataobj)
        case = name[: -len(".nii.gz")]
        if data.any() and len(kinds) % 2 == 0:
            helpers.write_seg_nrrd(os.path.join(slicer, f"{case}.seg.nrrd"), data, image.affine)
            kinds.add("seg")
        else:
            helpers.write_nrrd(os.path.join(slicer, f"{case}.nrrd"), data, image.affine)
            kinds.add("nrrd")
    assert kinds == {"seg", "nrrd"}
    masks = {}
    for name, labels in (("nifti", corrected), ("slicer", slicer)):
        copy = str(tmp_path / f"run_{name}")
        shutil.copytree(workdir, copy)
        annotate.import_labels(config, copy, labels)
        masks[name] = label_store.LabelStore(os.path.join(copy, workdir_lib.ANNOTATIONS_DIR)).read(
            0
        )
    np.testing.assert_array_equal(masks["slicer"][0], masks["nifti"][0])
    np.testing.assert_array_equal(masks["slicer"][1], masks["nifti"][1])
    assert masks["nifti"][1].any()
