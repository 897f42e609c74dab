"""Issue 24: the right words for each refusal, and a dataset fingerprint of the files' contents
(a copy with new mtimes is the same dataset, a changed file is not). Each test failed before."""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from selal_jax.base.errors import DataError
from selal_jax.data import cases, preprocess
from selal_jax.run import loop
from tests import helpers
from tests.test_data import data_config, load, volumes

THIRDS = (1 / 3, 1 / 3, 1 / 3)


def test_an_image_path_that_is_a_folder_is_said_to_be_one(tmp_path):
    root = helpers.write_msd(str(tmp_path / "msd"), volumes(3))
    meta_path = os.path.join(root, "dataset.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["training"][1]["image"] = "./imagesTr"
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    folder = os.path.join(root, "imagesTr")
    with pytest.raises(DataError, match=rf"lists {folder}, which is a folder, not a file"):
        load(data_config("msd", root, split=THIRDS), tmp_path)
    for path in (folder, folder + ".nii.gz", folder + ".nrrd"):  # the reader's own words
        os.makedirs(path, exist_ok=True)
        with pytest.raises(DataError, match=rf"^{path}: is a folder, not a image file$"):
            preprocess.check_header(cases.CaseFiles("x", path, None))


def test_a_bad_nrrd_header_line_is_named(tmp_path):
    path = helpers.write_nrrd(str(tmp_path / "a.nrrd"), volumes(1)[0][0], helpers.affine_for())
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw.replace(b"\nsizes:", b"\nthis line is bad\nsizes:", 1))
    with pytest.raises(DataError) as e:  # before: "not enough values to unpack"
        preprocess.check_header(cases.CaseFiles("a", path, None))
    assert str(e.value).startswith(f"{path}: unreadable NRRD image: line ")
    assert "'this line is bad' is not 'field: value'" in str(e.value)


def test_a_detached_header_whose_data_file_is_missing_says_so_once(tmp_path):
    path = helpers.write_nrrd(
        str(tmp_path / "a.nhdr"), volumes(1)[0][0], helpers.affine_for(), detached=True
    )
    (data_file,) = [n for n in os.listdir(tmp_path) if n != "a.nhdr"]
    os.remove(tmp_path / data_file)
    with pytest.raises(DataError) as e:  # before: found only when reading voxels, wrapped twice
        preprocess.check_header(cases.CaseFiles("a", path, None))
    assert str(e.value) == (
        f"{path}: NRRD field 'data file' names {tmp_path / data_file}, which is missing: the "
        "image's voxels are not there"
    )


def test_an_nnunet_file_ending_that_no_file_has_is_named(tmp_path):
    root = helpers.write_nnunetv2(
        str(tmp_path / "nn"), volumes(3), {"0": "MRI"}, {"background": 0, "lesion": 1}
    )
    meta_path = os.path.join(root, "dataset.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["file_ending"] = ".nii"
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(DataError) as e:  # before: "numTraining is 3 but imagesTr holds 0 cases"
        load(data_config("nnunetv2", root, split=THIRDS), tmp_path)
    assert str(e.value) == (
        f"{meta_path}: field 'file_ending' is '.nii', but no file of {root}/imagesTr ends in "
        "it; its 3 volume files end in '.nii.gz' (set file_ending to '.nii.gz')"
    )


def test_an_integer_image_whose_scl_slope_overflows_is_said_so(tmp_path):
    root = helpers.write_msd(str(tmp_path / "msd"), volumes(3, kind="ct"))
    path = os.path.join(root, "imagesTr", "case_001.nii.gz")
    image = nib.load(path)
    scaled = nib.Nifti1Image(np.asarray(image.dataobj), image.affine)
    scaled.header.set_slope_inter(1e37, 0.0)  # int16 values of 40 HU x 1e37: beyond float32
    nib.save(scaled, path)
    with pytest.raises(DataError) as e:  # before: "contains ... NaN or Inf voxels"
        load(data_config("msd", root, split=THIRDS), tmp_path)
    message = str(e.value)
    assert message.startswith(f"{path}: the header's scaling (scl_slope 1e+37, scl_inter 0) ")
    assert "int16 values beyond float32's range" in message and "NaN" not in message


# ---------------------------------------------------- a fingerprint of the files' contents


def copy_with_new_mtimes(src: str, dst: str) -> str:
    """`cp -r`: the same bytes, every file's mtime the time of the copy."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    for folder, _, files in os.walk(dst):
        for name in files:
            os.utime(os.path.join(folder, name), ns=(1, 10**18 + hash(name) % 10**9))
    return dst


def test_a_copy_with_new_mtimes_reuses_the_cache_and_a_changed_file_does_not(tmp_path, monkeypatch):
    root = helpers.write_msd(str(tmp_path / "msd"), volumes(3))
    first = load(data_config("msd", root, split=THIRDS), tmp_path)
    copy = copy_with_new_mtimes(root, str(tmp_path / "copy"))

    def no_build(*args, **kwargs):
        raise AssertionError("the cache was rebuilt for a copy of the same files")

    with monkeypatch.context() as patch:
        patch.setattr(preprocess, "process_case", no_build)
        again = load(data_config("msd", copy, split=THIRDS), tmp_path)
    assert again.fingerprint == first.fingerprint
    with open(os.path.join(copy, "labelsTr", "case_002.nii.gz"), "ab") as f:
        f.write(b"\0")  # another file: another fingerprint
    changed = load(data_config("msd", copy, split=THIRDS), tmp_path)
    assert changed.fingerprint != first.fingerprint


def test_a_copy_with_new_mtimes_resumes_and_a_changed_file_is_refused(
    tmp_path, cohort_root, monkeypatch
):
    from tests.helpers import smoke_config

    root = shutil.copytree(cohort_root, str(tmp_path / "cohort"))
    workdir = str(tmp_path / "run")
    config = smoke_config(**{"data.root": root, "al.rounds": 0})
    history = loop.run(config, workdir)
    copy = copy_with_new_mtimes(root, str(tmp_path / "copy"))
    moved = smoke_config(**{"data.root": copy, "al.rounds": 0})

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(loop.fit_lib, "fit", no_training)
    assert loop.run(moved, workdir) == history  # before: refused, "data.root" changed
    image = os.path.join(copy, "imagesTr", sorted(os.listdir(os.path.join(copy, "imagesTr")))[0])
    with open(image, "ab") as f:  # another file (gzip skips the padding: still readable)
        f.write(b"\0")
    with pytest.raises(ValueError, match=rf"{workdir}: the dataset changed since this run was "):
        loop.run(moved, workdir)


def test_runs_and_caches_keyed_by_mtimes_are_still_found(tmp_path, monkeypatch):
    """Caches and runs written before contents were hashed keep working: the cache under the
    old key is adopted, the old fingerprint accepted."""
    from selal_jax.run import workdir as workdir_lib

    root = helpers.write_msd(str(tmp_path / "msd"), volumes(3))
    config = data_config("msd", root, split=THIRDS)
    first = load(config, tmp_path)
    cache_dir = tmp_path / "work" / "cache"
    assert first.legacy_fingerprint != first.fingerprint
    os.rename(cache_dir / first.fingerprint, cache_dir / first.legacy_fingerprint)
    with monkeypatch.context() as patch:
        patch.setattr(preprocess, "process_case", lambda *a, **k: pytest.fail("rebuilt"))
        again = load(config, tmp_path)
    assert sorted(n for n in os.listdir(cache_dir) if not n.startswith(".")) == [first.fingerprint]
    assert again.legacy_fingerprint == first.legacy_fingerprint
    flat = {"data.root": root}
    workdir_lib.check_compatible(  # a run that stored the old fingerprint resumes
        flat, first.legacy_fingerprint, flat, again.fingerprint, where="w",
        legacy_fingerprint=again.legacy_fingerprint,
    )  # fmt: skip
    with pytest.raises(ValueError, match="the dataset changed"):
        workdir_lib.check_compatible(
            flat, "0123456789abcdef", flat, again.fingerprint, where="w",
            legacy_fingerprint=again.legacy_fingerprint,
        )  # fmt: skip
