"""The nnU-Net v2 raw dataset layout: channels, classes, file endings and its refusals."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from selal_jax.base.errors import DataError
from selal_jax.data import loading
from tests import helpers
from tests.test_data import case_slices, data_config
from tests.test_data_multiclass import MSD_LABELS, SHAPE, classes_volumes, write_quirky_msd

CHANNELS = {"0": "FLAIR", "1": "T1", "2": "T2"}
LABELS = {"background": 0, "necrosis": 1, "edema": 2, "enhancing": 4}


def stored(vols):
    """The quirky MSD cohort's stored arrays and affines (flipped, permuted cases)."""
    ras = helpers.affine_for((1.0, 1.5, 3.0))
    out, affines = [], []
    for i, (image, label) in enumerate(vols):
        how = [None, "flip_xz", "swap_xy"][i % 3]
        if how is None:
            out.append((image, label))
            affines.append(ras)
        else:
            out.append((helpers.stored_as(image, how), helpers.stored_as(label, how)))
            voxel_map = helpers.flip_xz(image.shape) if how == "flip_xz" else helpers.swap_xy()
            affines.append(ras @ voxel_map)
    return out, affines


def assert_same_slices(a, b):
    assert a.train.cases == b.train.cases
    assert a.train.class_names == b.train.class_names
    assert a.train.channel_names == b.train.channel_names
    for case in a.train.cases:
        x, y = case_slices(a, case), case_slices(b, case)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize(
    "modality, classes", [("FLAIR,T2", "all"), ("all", "1+4,2"), ("1", ""), ("T1", "1+2+4")]
)
def test_nnunetv2_reads_as_the_same_msd_dataset(tmp_path, ending, modality, classes):
    vols = classes_volumes(6)
    msd = write_quirky_msd(str(tmp_path / "msd"), vols, modality=CHANNELS, labels=MSD_LABELS)
    arrays, affines = stored(vols)
    root = helpers.write_nnunetv2(
        str(tmp_path / "nnunet"), arrays, CHANNELS, LABELS, affines, file_ending=ending
    )
    fields = {"modality": modality, "classes": classes, "split": (0.5, 0.25, 0.25)}
    a = loading.load_dataset(data_config("msd", msd, **fields), str(tmp_path / "w_msd"))
    b = loading.load_dataset(data_config("nnunetv2", root, **fields), str(tmp_path / "w_nn"))
    assert_same_slices(a, b)


def test_nnunetv2_one_channel_default_case_order_and_names(tmp_path):
    vols = [helpers.make_volume(np.random.default_rng(i), SHAPE) for i in range(5)]
    names = ["zeta", "alpha", "mid_1", "beta", "mid_0"]
    root = helpers.write_nnunetv2(
        str(tmp_path / "nn"), vols, {"0": "T2"}, {"background": 0, "lesion": 1}, names=names
    )
    splits = loading.load_dataset(data_config("nnunetv2", root), str(tmp_path / "w"))
    assert splits.train.cases == sorted(names)
    assert splits.train.channel_names == ("T2",) and splits.train.class_names == ("target",)
    ct = helpers.write_nnunetv2(
        str(tmp_path / "ct"), vols, {"0": "CT"}, {"background": 0, "organ": 1}, names=names
    )
    assert (
        loading.load_dataset(data_config("nnunetv2", ct), str(tmp_path / "w2")).source.normalisation
        == "ct_window"
    )


def test_nnunetv2_ignore_label_is_unlabelled_voxels_never_a_class(tmp_path):
    """Issue 24: the ignore value is read, as unlabelled voxels: never target (0), no class; a
    slice of it alone is an unlabelled slice (test_export checks one). Listed in
    data.background_values, it reads as background, as before."""
    vols = classes_volumes(4)
    labels = {"background": 0, "necrosis": 1, "edema": 2, "ignore": 4}  # the highest value
    root = helpers.write_nnunetv2(str(tmp_path / "nn"), vols, CHANNELS, labels)
    fields = {"modality": "FLAIR", "classes": "all", "split": (0.5, 0.25, 0.25)}
    for background in ("", "4"):  # before: "unexpected label values [4]" without "4"
        fields["background_values"] = background
        splits = loading.load_dataset(
            data_config("nnunetv2", root, **fields), str(tmp_path / f"w{background}")
        )
        assert splits.train.class_names == ("necrosis", "edema")
        assert all(part.has_label.all() for part in (splits.train, splits.val, splits.test))
        for i, (_, label) in enumerate(vols):
            expected = np.select([label == 1, label == 2], [1, 2], 0)  # 4 -> 0 either way
            got = case_slices(splits, f"case_{i:03d}")["labels"]
            np.testing.assert_array_equal(got, np.moveaxis(expected, 2, 0))
        assert (np.asarray(vols[0][1]) == 4).any()  # not vacuous


def write_small(root, **meta):
    vols = classes_volumes(4)
    return helpers.write_nnunetv2(str(root), vols, CHANNELS, LABELS, **meta)


def edit_json(root, **changes):
    path = os.path.join(root, "dataset.json")
    with open(path) as f:
        meta = json.load(f)
    meta.update(changes)
    with open(path, "w") as f:
        json.dump(meta, f)
    return path


def test_nnunetv2_refusals_name_the_file_and_field(tmp_path):
    root = write_small(tmp_path / "nn")
    fields = {"modality": "FLAIR", "split": (0.5, 0.25, 0.25)}

    def load(**extra):
        config = data_config("nnunetv2", root, **{**fields, **extra})
        return loading.load_dataset(config, str(tmp_path / "w"))

    with pytest.raises(ValueError, match="config field data.modality: .* lists 3 channels"):
        load(modality="")
    os.remove(os.path.join(root, "imagesTr", "case_002_0002.nii.gz"))
    with pytest.raises(DataError, match=r"imagesTr/case_002_0002.nii.gz: missing channel 2 \(T2\)"):
        load(modality="all")
    load(modality="FLAIR,T1")  # the missing channel is not chosen
    os.remove(os.path.join(root, "labelsTr", "case_001.nii.gz"))
    with pytest.raises(DataError, match="labelsTr/case_001.nii.gz: missing label of case"):
        load()
    meta = edit_json(root, numTraining=7)
    os.remove(os.path.join(root, "imagesTr", "case_001_0000.nii.gz"))
    with pytest.raises(DataError, match="a label without images|missing channel 0"):
        load()
    regions = {"background": 0, "whole tumor": [1, 2, 4], "core": [1, 4], "enhancing": 4}
    edit_json(root, labels=regions, regions_class_order=[2, 1, 4])
    with pytest.raises(DataError, match=f"{meta}: field 'labels' defines regions"):
        load()
    edit_json(root, labels=LABELS, file_ending=".mha")
    with pytest.raises(DataError, match="field 'file_ending' must be one of"):
        load()


def test_nnunetv2_numtraining_must_match(tmp_path):
    root = write_small(tmp_path / "nn")
    meta = edit_json(root, numTraining=7)
    with pytest.raises(DataError, match=f"{meta}: field 'numTraining' is 7 but imagesTr holds 4"):
        loading.load_dataset(data_config("nnunetv2", root, modality="0"), str(tmp_path / "w"))
