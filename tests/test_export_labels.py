"""Issue 23: the labels reach the nnU-Net export intact. Slices land on the source file's own
planes whatever its axis order and data.reorient; a clinician's labels finer than data.size are
exported voxel for voxel; classes get nnU-Net's consecutive values with the mapping written."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from selal_jax.run import label_store, loop, state
from selal_jax.run import workdir as workdir_lib
from selal_jax.verbs import annotate, export
from tests import helpers
from tests.helpers import smoke_config
from tests.test_export import check_export

TRAIN = {"train.max_epochs": 1, "train.min_steps_per_epoch": 2, "al.rounds": 1}
SHAPE = (20, 16, 12)
# Column i: the world (RAS) direction of file axis i; the name: where each file axis points.
DIRECTIONS = {
    "RAS": [(1, 0, 0), (0, 1, 0), (0, 0, 1)],
    "RSA": [(1, 0, 0), (0, 0, 1), (0, 1, 0)],
    "ASR": [(0, 1, 0), (0, 0, 1), (1, 0, 0)],
    "LPS": [(-1, 0, 0), (0, -1, 0), (0, 0, 1)],
}


def affine(codes: str, spacing=(1.0, 1.5, 2.0)) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = np.asarray(DIRECTIONS[codes], np.float64).T * np.asarray(spacing)
    assert "".join(nib.aff2axcodes(out)) == codes
    return out


def slice_voxels(shape, file_affine, canonical: bool, axis: int, index: int) -> np.ndarray:
    """Flat file-voxel indices on the loader's slice `index` along `axis`, found by putting each
    voxel's own index through nibabel's reorientation (the loader's `as_closest_canonical`)."""
    ids = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    if canonical:
        ids = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(ids, file_affine)).dataobj)
    return np.take(ids, index, axis=axis).ravel()


def check_nnunet_rules(out: str) -> dict:
    """What nnU-Net v2's verify_dataset_integrity asserts: consecutive label values from 0 with
    ignore the highest, no other value in a label file, label and image grids equal."""
    with open(os.path.join(out, "dataset.json")) as f:
        meta = json.load(f)
    values = sorted(meta["labels"].values())
    assert values[0] == 0 and np.all(np.ediff1d(values) == 1), meta["labels"]
    assert meta["labels"]["ignore"] == values[-1]
    for name in os.listdir(os.path.join(out, "labelsTr")):
        label = nib.load(os.path.join(out, "labelsTr", name))
        assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= set(values), name
        image = nib.load(os.path.join(out, "imagesTr", name.replace(".nii.gz", "_0000.nii.gz")))
        assert image.shape == label.shape
        np.testing.assert_allclose(image.affine, label.affine)
    return meta


def labelled_slices(config, workdir):
    """[(case files, canonical slice index)] of the run's labelled set, and the class names."""
    experiment = state.open_finished(config, workdir)
    pool, source = experiment.pool, experiment.splits.source
    ids = np.flatnonzero(experiment.labelled)
    out = [(source.cases[pool.subject[i]], int(pool.slice_index[i])) for i in ids]
    return out, tuple(pool.class_names)


def expected_export(config, slices, source_value, ignore) -> dict[str, np.ndarray]:
    """{case: volume} the export must write: on each labelled slice the source label file's
    voxels (each value through `source_value`), `ignore` elsewhere."""
    out = {}
    for case, index in slices:
        source = nib.load(case.label)
        true = np.asarray(source.dataobj)
        volume = out.setdefault(case.case_id, np.full(true.shape, ignore, np.int64))
        canonical = config.data.reorient == "canonical"
        flat = slice_voxels(true.shape, source.affine, canonical, config.data.axis, index)
        volume.ravel()[flat] = source_value(true.ravel()[flat])
    return out


# ---------------------------------------------- planes: permuted and flipped axes, reorient


def write_oriented(root: str, kind: str) -> str:
    """An MSD folder of cases stored RSA, ASR and LPS; binary (lesion 1) or BraTS-style classes
    (values 1, 2, 4)."""
    rng = np.random.default_rng(23)
    codes = ["RSA", "ASR", "LPS"] * 2
    volumes = []
    for _ in codes:
        if kind == "binary":
            volumes.append(helpers.make_volume(rng, SHAPE))
        else:
            image, label = helpers.make_classes_volume(rng, SHAPE, channels=1)
            volumes.append((image[..., 0], label))
    labels = {"0": "background", "1": "lesion"}
    if kind == "classes":
        labels = {"0": "background", "1": "necrotic", "2": "edema", "4": "enhancing"}
    return helpers.write_msd(root, volumes, [affine(c) for c in codes], labels=labels)


@pytest.mark.parametrize("reorient", ["none", "canonical"])
@pytest.mark.parametrize("kind", ["binary", "classes"])
def test_labelled_slices_are_exported_on_the_source_files_own_planes(tmp_path, reorient, kind):
    """Every labelled slice of the export equals the dataset's label file on that slice (through
    nibabel's own reorientation of voxel indices), every other voxel is ignore."""
    root = write_oriented(str(tmp_path / "msd"), kind)
    overrides = {
        "data.layout": "msd",
        "data.root": root,
        "data.size": (16, 16),
        "data.reorient": reorient,
        "al.initial_size": 8,
        **TRAIN,
    }
    if kind == "classes":
        overrides["data.classes"] = "1,2,4"
    config = smoke_config(**overrides)
    workdir = str(tmp_path / "run")
    loop.run(config, workdir)
    out = export.export_nnunet(config, workdir, str(tmp_path / "Dataset001"))
    meta = check_nnunet_rules(out)
    slices, class_names = labelled_slices(config, workdir)
    # The labelled slices lie on the permuted files too (with reorient=none on a file axis
    # other than the file's axial one).
    codes = {"".join(nib.aff2axcodes(nib.load(case.image).affine)) for case, _ in slices}
    assert codes & {"RSA", "ASR"}, codes
    if kind == "binary":
        assert meta["labels"] == {"background": 0, "target": 1, "ignore": 2}
        lut = np.asarray([0, 1])
    else:  # BraTS's values 1, 2, 4 as nnU-Net's 1, 2, 3, and the way back
        assert class_names == ("necrotic", "edema", "enhancing")
        labels = {"background": 0, "necrotic": 1, "edema": 2, "enhancing": 3, "ignore": 4}
        assert meta["labels"] == labels
        mapping = meta["label_mapping"]
        assert mapping["dataset_value"] == [0, 1, 2, 4]
        assert {k: v["dataset_values"] for k, v in mapping["classes"].items()} == {
            "1": [1],
            "2": [2],
            "3": [4],
        }
        assert [v["name"] for v in mapping["classes"].values()] == list(class_names)
        lut = np.asarray([0, 1, 2, 0, 3])
    expected = expected_export(config, slices, lambda v: lut[v], meta["labels"]["ignore"])
    for case_id, volume in expected.items():
        written = np.asarray(nib.load(os.path.join(out, "labelsTr", f"{case_id}.nii.gz")).dataobj)
        np.testing.assert_array_equal(written, volume, err_msg=case_id)
    assert any((v > 0).any() & (v < meta["labels"]["ignore"]).any() for v in expected.values())
    check_export(config, workdir, out)  # the loader's fit of the export is what it trained on


# ------------------------------------- a clinician's detail finer than data.size, kept as is

FINE = (64, 64, 5)


@pytest.fixture(scope="module")
def fine_run(tmp_path_factory):
    """A human run on 64 x 64 slices trained at 16 x 16 (files stored LPS and RAS), awaiting
    round 0's labels, its query exported, and the clinician's corrections: a 1-voxel line on
    each queried slice, different on each."""
    base = tmp_path_factory.mktemp("fine")
    rng = np.random.default_rng(7)
    codes = ["LPS", "RAS"] * 3
    affines = [affine(c, (1.0, 1.0, 3.0)) for c in codes]
    volumes = [helpers.make_volume(rng, FINE) for _ in codes]
    root = helpers.write_msd(str(base / "msd"), volumes, affines)
    config = smoke_config(
        **{
            "data.layout": "msd",
            "data.root": root,
            "data.size": (16, 16),
            "al.annotator": "human",
            "al.query_size": 4,
            **TRAIN,
        }
    )
    workdir = str(base / "run")
    loop.run(config, workdir)
    query = annotate.export_query(config, workdir)
    with open(os.path.join(query, annotate.QUERY_JSON)) as f:
        cases = json.load(f)["cases"]
    lines = {}  # case -> the corrected volume
    for n, case in enumerate(cases):
        path = os.path.join(query, case["label_file"])
        data = np.zeros(nib.load(path).shape, np.uint8)
        for k, index in enumerate(case["slice_indices"]):
            plane = np.moveaxis(data, case["axis"], 0)[index]
            plane[3 + 7 * n + 5 * k, 5:60] = 1  # one voxel wide: 16 x 16 cannot hold it
        lines[case["case_id"]] = data
    return config, workdir, query, cases, lines


def correct_as(folder: str, query: str, cases, lines, fmt: str) -> None:
    os.makedirs(folder)
    for case in cases:
        exported = nib.load(os.path.join(query, case["label_file"]))
        data = lines[case["case_id"]]
        if fmt == "nifti":
            image = nib.Nifti1Image(data, exported.affine, exported.header)
            nib.save(image, os.path.join(folder, f"{case['case_id']}.nii.gz"))
        else:  # Slicer: LPS, cropped to the segments' extent
            helpers.write_seg_nrrd(
                os.path.join(folder, f"{case['case_id']}.seg.nrrd"), data, exported.affine
            )


@pytest.mark.parametrize("fmt", ["nifti", "seg.nrrd"])
def test_a_clinicians_fine_detail_is_exported_voxel_for_voxel(fine_run, tmp_path, fmt):
    config, workdir, query, cases, lines = fine_run
    copy, labels = str(tmp_path / "run"), str(tmp_path / "labels")
    shutil.copytree(workdir, copy)
    correct_as(labels, query, cases, lines, fmt)
    annotate.import_labels(config, copy, labels)
    store = label_store.LabelStore(os.path.join(copy, workdir_lib.ANNOTATIONS_DIR))
    with np.load(store.path(0)) as f:
        note = json.loads(str(f["note"]))
    for case in cases:  # the digest of each file read
        path = os.path.join(labels, os.path.basename(note["files"][case["case_id"]]))
        with open(path, "rb") as f:
            assert note["sha256"][case["case_id"]] == hashlib.sha256(f.read()).hexdigest()
    out = export.export_nnunet(config, copy, str(tmp_path / "out"))
    check_nnunet_rules(out)
    slices, _ = labelled_slices(config, copy)
    with open(os.path.join(query, annotate.QUERY_JSON)) as f:
        asked = {(row["case_id"], row["canonical_index"]) for row in json.load(f)["slices"]}
    # Not queried (the initial set): the dataset's label file; queried: the clinician's file.
    dataset = [(case, i) for case, i in slices if (case.case_id, i) not in asked]
    expected = expected_export(config, dataset, lambda v: v, 2)
    for case in cases:
        want = expected.setdefault(case["case_id"], np.full(FINE, 2, np.int64))
        line = np.moveaxis(lines[case["case_id"]], case["axis"], 0)
        np.moveaxis(want, case["axis"], 0)[case["slice_indices"]] = line[case["slice_indices"]]
    for case_id, want in expected.items():
        written = np.asarray(nib.load(os.path.join(out, "labelsTr", f"{case_id}.nii.gz")).dataobj)
        np.testing.assert_array_equal(written, want, err_msg=case_id)
    # Not vacuous: the training masks at 16 x 16, scaled back, would not be the lines.
    for plane, mask in zip(*exported_round(config, copy, out), strict=True):
        assert plane.any() and not np.array_equal(plane, np.kron(mask, np.ones((4, 4))))


def exported_round(config, workdir: str, out: str) -> tuple[list[np.ndarray], np.ndarray]:
    """([n] exported planes of round 0's imported slices, read as the loader reads them, and
    [n, H, W] their training masks in the annotation file)."""
    ids, masks = label_store.LabelStore(os.path.join(workdir, workdir_lib.ANNOTATIONS_DIR)).read(0)
    experiment = state.open_finished(config, workdir)
    pool = experiment.pool
    rows = [(pool.cases[pool.subject[i]], int(pool.slice_index[i])) for i in ids]
    planes = []
    for case_id, index in rows:
        path = os.path.join(out, "labelsTr", f"{case_id}.nii.gz")
        label = np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)
        planes.append(np.take(label, index, axis=config.data.axis))
    return planes, masks


def test_an_annotation_file_without_native_labels_exports_its_masks_with_a_warning(
    fine_run, tmp_path, monkeypatch, caplog
):
    """Older annotation files hold the data.size masks only: they still load and export
    (mapped back to the source grid, as before), and the export says so."""
    config, workdir, query, cases, lines = fine_run
    copy, labels = str(tmp_path / "run"), str(tmp_path / "labels")
    shutil.copytree(workdir, copy)
    correct_as(labels, query, cases, lines, "nifti")
    monkeypatch.setattr(label_store.NativeLabels, "arrays", lambda self: {})  # an old writer
    annotate.import_labels(config, copy, labels)
    monkeypatch.undo()
    store = label_store.LabelStore(os.path.join(copy, workdir_lib.ANNOTATIONS_DIR))
    assert store.read_native(0) is None
    with caplog.at_level(logging.WARNING):
        out = export.export_nnunet(config, copy, str(tmp_path / "out"))
    assert "round_000.npz: written before imports kept the source resolution" in caplog.text
    for plane, mask in zip(*exported_round(config, copy, out), strict=True):
        # 64 x 64 from 16 x 16 by nearest neighbour: each mask pixel a 4 x 4 block
        np.testing.assert_array_equal(plane, np.kron(mask, np.ones((4, 4), np.uint8)))
