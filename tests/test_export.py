"""launch.py export-nnunet: a finished run's labelled set as a sparse nnU-Net v2 raw dataset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from selal_jax.data import config_fields, fitting, loading, preprocess, reading
from selal_jax.run import loop, state
from selal_jax.verbs import annotate, export
from tests.helpers import REPO, smoke_config

TRAIN = {"train.max_epochs": 1, "train.min_steps_per_epoch": 2, "al.rounds": 1}


def check_export(config, workdir: str, out: str) -> dict:
    """Reading each exported label file with the loader's forward path at the labelled slices
    gives the run's training labels; every other voxel is the ignore value; images are the
    source channels in the source geometry."""
    experiment = state.open_finished(config, workdir)
    train, source = experiment.pool, experiment.splits.source
    ids = np.flatnonzero(experiment.labelled)
    expected = np.asarray(train.labels[ids])
    subjects = np.asarray(train.subject[ids])
    index = np.asarray(train.slice_index[ids])
    settings = config_fields.make_settings(config.data, source)
    with open(os.path.join(out, "dataset.json")) as f:
        meta = json.load(f)
    assert set(meta) >= {"channel_names", "labels", "numTraining", "file_ending"}
    assert meta["file_ending"] == ".nii.gz"
    assert list(meta["channel_names"].values()) == list(train.channel_names)
    # nnU-Net v2's rules: 0, the classes and ignore consecutive, ignore the highest value
    values = sorted(meta["labels"].values())
    assert values == list(range(len(train.class_names) + 2))
    ignore = meta["labels"]["ignore"]
    assert ignore == values[-1] and meta["labels"]["background"] == 0
    assert meta["numTraining"] == len(set(subjects.tolist()))
    assert len(os.listdir(os.path.join(out, "labelsTr"))) == meta["numTraining"]
    n_images = len(os.listdir(os.path.join(out, "imagesTr")))
    assert n_images == meta["numTraining"] * len(train.channel_names)
    for subject in sorted(set(subjects.tolist())):
        case = source.cases[subject]
        path = os.path.join(out, "labelsTr", f"{case.case_id}.nii.gz")
        exported = nib.load(path)
        np.testing.assert_allclose(exported.affine, nib.load(case.image).affine)
        rows = np.flatnonzero(subjects == subject)
        label, img = reading.read_canonical(
            path, "label", None, as_float=False, reorient=settings.canonical
        )
        stack = preprocess.to_slices(label, settings.axis)
        assert np.all(np.delete(stack, index[rows], axis=0) == ignore)
        planes = stack[index[rows]]
        assert not np.any(planes == ignore)  # the labelled slices are labelled throughout
        spacing = np.sqrt(np.sum(img.affine[:3, :3] ** 2, axis=0)).astype(np.float32)
        # exported values are the class indices: the loader's fit of them is what it trained on
        fitted = fitting.fit_case_slices(planes, settings, spacing, is_label=True)
        np.testing.assert_array_equal(fitted, expected[rows])
        for c, (image_path, channel) in enumerate(case.channel_sources):
            written = nib.load(os.path.join(out, "imagesTr", f"{case.case_id}_{c:04d}.nii.gz"))
            source_img = nib.load(image_path)
            data = np.asanyarray(source_img.dataobj)
            data = data[..., channel] if data.ndim == 4 else data
            np.testing.assert_array_equal(np.asanyarray(written.dataobj), data)
            np.testing.assert_allclose(written.affine, source_img.affine)
    return meta


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory, cohort_root):
    config = smoke_config(**{"data.root": cohort_root, **TRAIN})
    workdir = str(tmp_path_factory.mktemp("binary"))
    loop.run(config, workdir)
    return config, workdir


def test_cli_exports_a_binary_run_and_refuses_a_non_empty_out(binary_run, tmp_path):
    config, workdir = binary_run
    out = str(tmp_path / "Dataset001_Run")
    launch = [sys.executable, os.path.join(REPO, "launch.py"), "export-nnunet"]
    proc = subprocess.run(
        launch + [f"--workdir={workdir}", f"--out={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = check_export(config, workdir, out)
    assert meta["labels"] == {"background": 0, "target": 1, "ignore": 2}
    with pytest.raises(export.ExportError, match="already exists and is not empty"):
        export.export_nnunet(config, workdir, out)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    with pytest.raises(export.ExportError, match="no checkpoint"):
        export.export_nnunet(config, str(tmp_path / "nothing"), str(tmp_path / "o2"))


def test_multiclass_run_exports_its_classes_and_channels(tmp_path):
    overrides = {"data.root": str(tmp_path / "cohort"), "data.synthetic.kind": "multiclass"}
    config = smoke_config(**overrides, **TRAIN)
    workdir = str(tmp_path / "run")
    loop.run(config, workdir)
    out = export.export_nnunet(config, workdir, str(tmp_path / "out"))
    meta = check_export(config, workdir, out)
    assert meta["labels"] == {"background": 0, "halo": 1, "core": 2, "ignore": 3}
    assert meta["channel_names"] == {"0": "MRI_A", "1": "MRI_B"}


def test_human_run_exports_the_imported_annotations(tmp_path, cohort_root):
    """The exported labels are what training used: a clinician's (here: empty) corrections of
    the queried slices, not the dataset's labels."""
    config = smoke_config(**{"data.root": cohort_root, "al.annotator": "human", **TRAIN})
    workdir = str(tmp_path / "run")
    loop.run(config, workdir)
    query = annotate.export_query(config, workdir)
    labels_dir = os.path.join(query, annotate.LABELS_DIR)
    for name in os.listdir(labels_dir):  # the clinician erases every prefilled mask
        image = nib.load(os.path.join(labels_dir, name))
        nib.save(
            nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine, image.header),
            os.path.join(labels_dir, name),
        )
    annotate.import_labels(config, workdir, query)
    out = export.export_nnunet(config, workdir, str(tmp_path / "out"))
    check_export(config, workdir, out)
    with open(os.path.join(query, annotate.QUERY_JSON)) as f:
        queried = json.load(f)["cases"]
    some = queried[0]
    label = np.asarray(nib.load(os.path.join(out, "labelsTr", f"{some['case_id']}.nii.gz")).dataobj)
    plane = np.take(label, some["slice_indices"][0], axis=some["axis"])
    assert not plane.any()  # 0, not the dataset's label nor ignore
    shutil.rmtree(out)


def test_the_export_inspects_and_loads_with_ignore_as_unlabelled(binary_run, tmp_path):
    """Issue 24: `inspect` and the loader read the product's own export. Its ignore voxels are
    unlabelled, never target: a slice of ignore alone is an unlabelled slice (has_label False,
    mask 0); the labelled slices hold the run's labels."""
    from selal_jax.verbs import inspect_data

    config, workdir = binary_run
    out = export.export_nnunet(config, workdir, str(tmp_path / "Dataset501_Run"))
    experiment = state.open_finished(config, workdir)
    train = experiment.pool
    ids = np.flatnonzero(experiment.labelled)
    labelled = {
        (train.cases[train.subject[i]], int(train.slice_index[i])): np.asarray(train.labels[i])
        for i in ids
    }
    data = smoke_config(
        **{
            "data.layout": "nnunetv2",
            "data.root": out,
            "data.split": (1 / 3, 1 / 3, 1 / 3),
            "al.annotator": "human",
        }
    )
    info = inspect_data.describe(data, str(tmp_path / "inspect"))  # before: label value 2 refused
    assert sum(info["n_slices"].values()) > 0
    splits = loading.load_dataset(data.data, str(tmp_path / "inspect"))
    seen = {}
    for part in (splits.train, splits.val, splits.test):
        for i in range(len(part)):
            key = (part.cases[part.subject[i]], int(part.slice_index[i]))
            if part.has_label[i]:
                seen[key] = np.asarray(part.labels[i])
            else:
                assert key not in labelled and not np.asarray(part.labels[i]).any(), key
    assert sorted(seen) == sorted(labelled)
    for key, mask in seen.items():
        np.testing.assert_array_equal(mask, labelled[key])
    # the held-out splits keep their labelled slices alone: metrics see known voxels only
    assert splits.val.has_label.all() and splits.test.has_label.all()
