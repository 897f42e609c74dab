"""Issue 24: nothing learned from blank or duplicated scans, sizes that make sense. Each test
failed before its fix."""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from selal_jax.base.errors import DataError
from selal_jax.data import cases, config_fields, loading, preprocess
from tests import helpers
from tests.test_data import data_config, load, replace_file, volumes

THIRDS = (1 / 3, 1 / 3, 1 / 3)


def msd(root, **fields):
    return data_config("msd", root, split=THIRDS, **fields)


def write_cases(tmp_path, n=3, **kwargs) -> str:
    return helpers.write_msd(str(tmp_path / "msd"), volumes(n), **kwargs)


# ------------------------------------------------------------------ data that cannot teach


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_a_constant_image_whose_label_has_target_is_refused_naming_it(tmp_path, value):
    root = write_cases(tmp_path)
    path = os.path.join(root, "imagesTr", "case_001.nii.gz")
    image, label = volumes(3)[1]
    assert label.any()
    replace_file(path, np.full_like(image, value))
    with pytest.raises(DataError, match=rf"{path}: the image is constant \({value:g} everywhere\)"):
        load(msd(root), tmp_path)


def test_a_constant_image_without_target_is_accepted(tmp_path):
    """A blank scan with an empty label teaches background, which is true: not refused."""
    root = write_cases(tmp_path)
    image, label = volumes(3)[1]
    replace_file(os.path.join(root, "imagesTr", "case_001.nii.gz"), np.zeros_like(image))
    replace_file(os.path.join(root, "labelsTr", "case_001.nii.gz"), np.zeros_like(label))
    splits = load(msd(root, keep_empty_slices=True), tmp_path)
    assert "case_001" in splits.train.cases


def test_a_dataset_of_blank_images_with_intact_labels_is_refused(tmp_path):
    vols = [(np.zeros_like(image), label) for image, label in volumes(3)]
    root = helpers.write_msd(str(tmp_path / "msd"), vols)
    with pytest.raises(DataError, match="the image is constant"):
        load(msd(root), tmp_path)


def test_a_dataset_with_no_target_anywhere_is_refused(tmp_path):
    vols = [(image, np.zeros_like(label)) for image, label in volumes(3)]
    root = helpers.write_msd(str(tmp_path / "msd"), vols)
    with pytest.raises(DataError, match=rf"{root}: no labelled case holds any target"):
        load(msd(root), tmp_path)
    assert not [n for n in os.listdir(tmp_path / "work" / "cache") if not n.startswith(".")]


def test_unlabelled_cases_do_not_count_as_target(tmp_path):
    """allow_unlabelled: the labelled cases alone decide (their labels are all zero here)."""
    vols = [(image, np.zeros_like(label)) for image, label in volumes(4)]
    root = helpers.write_msd(str(tmp_path / "msd"), vols)
    os.remove(os.path.join(root, "labelsTr", "case_003.nii.gz"))
    meta_path = os.path.join(root, "dataset.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["training"][3].pop("label")
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(DataError, match="no labelled case holds any target"):
        load(msd(root, allow_unlabelled=True), tmp_path)


def test_a_validation_split_without_target_is_warned_about(tmp_path, caplog):
    vols = volumes(3)
    vols[1] = (vols[1][0], np.zeros_like(vols[1][1]))  # case_001: no target
    root = helpers.write_msd(str(tmp_path / "msd"), vols)
    split_file = tmp_path / "split.json"
    split_file.write_text(
        json.dumps({"train": ["case_000"], "val": ["case_001"], "test": ["case_002"]})
    )
    config = msd(root, split_file=str(split_file))
    splits = load(config, tmp_path)
    assert splits.target_slices["val"] == 0 and splits.target_slices["test"] > 0
    assert "no target in the validation split" in caplog.text
    caplog.clear()
    load(config, tmp_path)  # from the cache: said again
    assert "no target in the validation split" in caplog.text


# ------------------------------------------------------------ a duplicate under another name


def _add_case(root, name, image_from, label_from):
    meta_path = os.path.join(root, "dataset.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["training"].append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta["numTraining"] += 1
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return image_from, label_from


def test_a_byte_identical_copy_under_another_name_is_refused_naming_both(tmp_path):
    root = write_cases(tmp_path, 5)
    for sub in ("imagesTr", "labelsTr"):
        shutil.copy(
            os.path.join(root, sub, "case_001.nii.gz"), os.path.join(root, sub, "copy_001.nii.gz")
        )
    _add_case(root, "copy_001.nii.gz", None, None)
    with pytest.raises(DataError, match="identical image voxels") as e:
        load(msd(root), tmp_path)
    for name in ("case_001", "copy_001"):
        assert os.path.join(root, "imagesTr", f"{name}.nii.gz") in str(e.value)


def test_the_same_voxels_in_another_file_format_are_refused_too(tmp_path):
    """A re-saved copy (uncompressed .nii, other bytes, same voxels) is the same scan."""
    root = write_cases(tmp_path, 5)
    image, label = volumes(5)[2]
    nib.save(nib.Nifti1Image(image, helpers.affine_for()), os.path.join(root, "imagesTr", "x.nii"))
    nib.save(nib.Nifti1Image(label, helpers.affine_for()), os.path.join(root, "labelsTr", "x.nii"))
    _add_case(root, "x.nii", None, None)
    with pytest.raises(DataError, match=r"case_002.*identical image voxels|identical.*case_002"):
        load(msd(root), tmp_path)


def test_the_case_digests_are_kept_in_the_cache(tmp_path):
    root = write_cases(tmp_path)
    splits = load(msd(root), tmp_path)
    (folder,) = [n for n in os.listdir(tmp_path / "work" / "cache") if not n.startswith(".")]
    with open(tmp_path / "work" / "cache" / folder / "meta.json") as f:
        meta = json.load(f)
    digests = meta["image_digests"]
    assert sorted(digests) == ["case_000", "case_001", "case_002"]
    assert len(set(digests.values())) == 3
    assert splits.fingerprint == folder


# ------------------------------------------------------- a declared size beyond the file's


def _bomb(path: str, dims=(4096, 4096, 4096)) -> str:
    """A NIfTI whose header declares `dims` int16 voxels, followed by a few bytes of data."""
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), helpers.affine_for())
    header = image.header.copy()
    header.set_data_shape(dims)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 128  # vox_offset 352: header, extension, data
    if path.endswith(".gz"):
        import gzip

        raw = gzip.compress(raw)
    with open(path, "wb") as f:
        f.write(raw)
    return path


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_declared_size_beyond_the_file_is_refused_before_reading_voxels(tmp_path, suffix):
    path = _bomb(str(tmp_path / f"bomb{suffix}"))
    case = cases.CaseFiles("bomb", path, None)
    # the header pass: before, it returned the shape and the voxel pass allocated 128 GiB
    with pytest.raises(
        DataError, match=rf"{path}: truncated or corrupt: the header declares 4096x4096x4096 int16"
    ):
        preprocess.check_header(case)


def test_a_declared_nrrd_size_beyond_the_file_is_refused(tmp_path):
    path = str(tmp_path / "bomb.nrrd")
    helpers.write_nrrd(path, np.zeros((4, 4, 4), np.int16), helpers.affine_for())
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw.replace(b"sizes: 4 4 4", b"sizes: 4096 4096 4096"))
    with pytest.raises(
        DataError, match=rf"{path}: truncated or corrupt: the header declares 4096x4096x4096 int16"
    ):
        preprocess.check_header(cases.CaseFiles("bomb", path, None))


# --------------------------------------------------------------------- sizes that make sense


@pytest.mark.parametrize("split", [(0.5, 0.5, 0.5), (1, 1, 1), (0.7, 0.15, 0.1)])
def test_split_fractions_must_sum_to_one(split):
    config = data_config("msd", "/nowhere", split=split)
    with pytest.raises(ValueError, match=r"config field data.split: .*sum to 1"):
        config_fields.validate_data_config(config)


def test_split_fractions_that_sum_to_one_up_to_rounding_pass():
    for split in ((0.7, 0.15, 0.15), THIRDS, (0.6, 0.2, 0.2), (0.8, 0.1, 0.1)):
        config_fields.validate_data_config(data_config("msd", "/nowhere", split=split))


def _stop_before_training(monkeypatch):
    from selal_jax.run import loop

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(loop.fit_lib, "fit", stop)
    return Stop


def test_an_eval_batch_beyond_the_largest_split_is_capped_once(
    tmp_path, cohort_root, monkeypatch, caplog
):
    from selal_jax.core import parallel
    from selal_jax.run import loop
    from tests.helpers import smoke_config

    config = smoke_config(**{"data.root": cohort_root, "train.eval_batch_size": 10**6})
    seen = []
    original = parallel.map_batches

    def spy(fn, ids, *arrays, batch_size, **kwargs):
        seen.append(batch_size)
        if batch_size > 72:  # before: 10**6 slices of padding, 4 GB, then the next call ...
            raise AssertionError(f"a batch of {batch_size} slices for a split of at most 72")
        return original(fn, ids, *arrays, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(parallel, "map_batches", spy)
    stop = _stop_before_training(monkeypatch)
    with pytest.raises(stop):  # the untrained validation loss is computed first, then fit
        loop.run(config, str(tmp_path / "run"))
    # smoke cohort: 8 subjects of 12 slices, split 6/1/1: the largest split has 72 slices
    assert seen == [72]
    capped = [r for r in caplog.records if "train.eval_batch_size" in r.getMessage()]
    assert len(capped) == 1 and "10000" in capped[0].getMessage() and "72" in capped[0].getMessage()


def test_a_training_batch_beyond_the_labelled_set_warns(tmp_path, cohort_root, monkeypatch, caplog):
    from selal_jax.run import loop
    from tests.helpers import smoke_config

    config = smoke_config(**{"data.root": cohort_root, "train.batch_size": 5000})
    stop = _stop_before_training(monkeypatch)
    with pytest.raises(stop):
        loop.run(config, str(tmp_path / "run"))
    assert (
        "train.batch_size 5000 exceeds the 8 labelled slices of round 0: each step repeats "
        "them 625 times" in caplog.text
    )


# -------------------------------------------------------------------------- found by reading


def test_a_class_head_with_the_official_convention_is_refused_before_training(
    tmp_path, monkeypatch
):
    from selal_jax.run import loop
    from tests.helpers import smoke_config

    config = smoke_config(
        **{
            "data.synthetic.kind": "multiclass",
            "al.convention": "official",
            "al.strategy": "entropy",
        }
    )
    _stop_before_training(monkeypatch)  # before: round 0 trained, then scoring's trace failed
    with pytest.raises(ValueError, match=r"config field al.convention: 'official' .*2 classes"):
        loop.run(config, str(tmp_path / "run"))


@pytest.mark.parametrize(
    "field, value",
    [("n_subjects", 6), ("shape", (32, 32, 10)), ("seed", 1), ("spacing", (1.0, 1.0, 3.0))],
)
def test_an_existing_synthetic_cohort_of_other_parameters_is_refused(tmp_path, field, value):
    from selal_jax.data import synthetic
    from tests.helpers import smoke_config

    config = smoke_config()
    syn = config.data.synthetic
    root = str(tmp_path / "cohort")
    synthetic.write_cohort(root, syn.n_subjects, tuple(syn.shape), syn.seed, tuple(syn.spacing))
    syn[field] = value
    config.data.root = root
    with pytest.raises(DataError, match=rf"config field data.synthetic.{field}"):
        loading.load_dataset(config.data, str(tmp_path / "work"))  # before: reused as it was


def test_an_existing_synthetic_cohort_of_the_same_parameters_is_reused(tmp_path, cohort_root):
    from selal_jax.data import synthetic
    from tests.helpers import smoke_config

    syn = smoke_config().data.synthetic
    before = {
        n: os.stat(os.path.join(cohort_root, "imagesTr", n)).st_mtime_ns
        for n in os.listdir(os.path.join(cohort_root, "imagesTr"))
    }
    synthetic.write_cohort(
        cohort_root, syn.n_subjects, tuple(syn.shape), syn.seed, tuple(syn.spacing)
    )
    after = {n: os.stat(os.path.join(cohort_root, "imagesTr", n)).st_mtime_ns for n in before}
    assert after == before
