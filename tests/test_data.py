"""Dataset layouts, preprocessing, cache and bad-input errors, on tiny NIfTI files in tmp dirs."""

from __future__ import annotations

import gzip
import json
import os

import nibabel as nib
import numpy as np
import pytest

from configs import default
from selal_jax.base.errors import DataError
from selal_jax.data import cache, layouts, loading, preprocess, splitting
from tests import helpers
from tests.helpers import REPO, config_from_flags, set_fields

SHAPE = (16, 16, 6)


def zscore(volume: np.ndarray) -> np.ndarray:
    """MRI normalisation by hand, in float64: over the non-zero voxels, background stays 0."""
    v = volume.astype(np.float64)
    fg = v != 0
    return np.where(fg, (v - v[fg].mean()) / v[fg].std(), 0.0)


def data_config(layout: str, root, size=SHAPE[:2], **fields):
    config = default.get_config().data
    config.layout = layout
    config.root = str(root)
    config.size = tuple(size)
    return set_fields(config, fields, sep="__")


def load(config, tmp_path):
    return loading.load_dataset(config, str(tmp_path / "work"))


def volumes(n: int, shape=SHAPE, kind: str = "mri", seed: int = 0):
    return [helpers.make_volume(np.random.default_rng([seed, i]), shape, kind) for i in range(n)]


def case_slices(splits, case_id: str) -> dict[str, np.ndarray]:
    """All slices of one case, gathered from the three splits, in slice order."""
    out = {"images": [], "labels": [], "slice_index": [], "spacing": []}
    for part in (splits.train, splits.val, splits.test):
        rows = [i for i in range(len(part)) if part.cases[part.subject[i]] == case_id]
        for key in out:
            out[key].append(np.asarray(getattr(part, key))[rows])
    out = {k: np.concatenate(v) for k, v in out.items()}
    order = np.argsort(out["slice_index"])
    return {k: v[order] for k, v in out.items()}


def axial(volume: np.ndarray) -> np.ndarray:
    return np.moveaxis(volume, 2, 0)


# ----------------------------------------------------------------------------- layouts


def test_msd_layout_slices_zscore_split_and_describe(tmp_path):
    vols = volumes(20)
    root = helpers.write_msd(str(tmp_path / "msd"), vols)
    # Resource forks as shipped inside the real Task09 archive: never listed, never read.
    for sub in ("imagesTr", "labelsTr"):
        with open(tmp_path / "msd" / sub / "._case_000.nii.gz", "wb") as f:
            f.write(b"\x00\x05\x16\x07 not a nifti")
    splits = load(data_config("msd", root), tmp_path)

    assert (len(splits.train), len(splits.val), len(splits.test)) == (14 * 6, 3 * 6, 3 * 6)
    subjects = [set(np.unique(p.subject).tolist()) for p in (splits.train, splits.val, splits.test)]
    assert [len(s) for s in subjects] == [14, 3, 3]
    assert set.union(*subjects) == set(range(20)) and not (subjects[0] & subjects[1])
    assert splits.train.images.dtype == np.float32 and splits.train.labels.dtype == np.uint8
    assert splits.train.shape == SHAPE[:2]
    for i, (image, label) in enumerate(vols):
        got = case_slices(splits, f"case_{i:03d}")
        np.testing.assert_array_equal(got["slice_index"], np.arange(SHAPE[2]))
        np.testing.assert_allclose(got["images"], axial(zscore(image)), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got["labels"], axial(label))
        np.testing.assert_allclose(got["spacing"], np.tile([1.0, 1.0, 2.0], (SHAPE[2], 1)))
    test = splits.test
    assert test.describe(4) == f"case {test.cases[test.subject[4]]}, slice {test.slice_index[4]}"


def test_split_is_seeded_and_by_subject(tmp_path):
    root = helpers.write_msd(str(tmp_path / "msd"), volumes(10))
    a = load(data_config("msd", root, split_seed=1), tmp_path / "a")
    b = load(data_config("msd", root, split_seed=1), tmp_path / "b")
    c = load(data_config("msd", root, split_seed=2), tmp_path / "c")
    np.testing.assert_array_equal(a.test.subject, b.test.subject)
    assert set(a.test.subject.tolist()) != set(c.test.subject.tolist())


def test_msd_ct_window_is_chosen_from_dataset_json(tmp_path):
    vols = volumes(3, kind="ct")
    root = helpers.write_msd(str(tmp_path / "msd"), vols, modality={"0": "CT"})
    splits = load(data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3)), tmp_path)
    image = vols[0][0].astype(np.float64)
    expected = (np.clip(image, -160, 240) + 160) / 400
    np.testing.assert_allclose(
        case_slices(splits, "case_000")["images"], axial(expected), atol=1e-6
    )


def test_msd_4d_image_needs_a_modality_and_loads_the_chosen_channel(tmp_path):
    vols = volumes(3)
    four_d = [(np.stack([img, img**2, np.sqrt(img)], axis=-1), lab) for img, lab in vols]
    modality = {"0": "FLAIR", "1": "T1w", "2": "T2w"}
    root = helpers.write_msd(str(tmp_path / "msd"), four_d, modality=modality)
    with pytest.raises(DataError, match=r"case_00\d.nii.gz: 4D image with 3 channels"):
        load(data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3)), tmp_path / "a")
    splits = load(
        data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3), modality="t2w"), tmp_path / "b"
    )
    expected = axial(zscore(np.sqrt(vols[1][0])))
    np.testing.assert_allclose(case_slices(splits, "case_001")["images"], expected, atol=1e-5)
    splits = load(
        data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3), modality="1"), tmp_path / "c"
    )
    expected = axial(zscore(vols[1][0] ** 2))
    np.testing.assert_allclose(case_slices(splits, "case_001")["images"], expected, atol=1e-5)


@pytest.mark.parametrize(
    "target, values", [("whole", (1, 2, 4)), ("core", (1, 4)), ("enhancing", (4,))]
)
def test_brats_grades_modality_and_targets(tmp_path, target, values):
    hgg, lgg = volumes(2, kind="brats", seed=1), volumes(3, kind="brats", seed=2)
    for _, seg in lgg:  # nested regions, so that every target is present
        seg[2:10, 2:10, 1:5] = 2
        seg[4:8, 4:8, 2:4] = 4
        seg[5:7, 5:7, 2:3] = 1
    ids = helpers.write_brats(str(tmp_path / "brats"), {"HGG": hgg, "LGG": lgg})
    (tmp_path / "brats" / "LGG" / "._BraTS19_LGG_000_1").write_bytes(b"resource fork")
    (tmp_path / "brats" / "name_mapping.csv").write_text("Grade,BraTS_2019_subject_ID\n")
    config = data_config(
        "brats",
        tmp_path / "brats",
        split=(1 / 3, 1 / 3, 1 / 3),
        brats__grades="LGG",
        brats__target=target,
    )
    splits = load(config, tmp_path / target)
    assert sorted(splits.train.cases) == sorted(ids["LGG"])
    for i, case in enumerate(ids["LGG"]):
        image, seg = lgg[i]
        got = case_slices(splits, case)
        np.testing.assert_allclose(got["images"], axial(zscore(image)), atol=1e-5)
        np.testing.assert_array_equal(got["labels"], axial(np.isin(seg, values)))
    assert np.isin(lgg[0][1], values).any()  # each target is present, so the test can fail


def test_brats_modality_choice_and_both_grades(tmp_path):
    vols = volumes(3, kind="brats")
    ids = helpers.write_brats(str(tmp_path / "brats"), {"HGG": vols[:1], "LGG": vols[1:]})
    config = data_config(
        "brats", tmp_path / "brats", split=(1 / 3, 1 / 3, 1 / 3), brats__modality="t2"
    )
    splits = load(config, tmp_path)
    assert len(splits.train.cases) == 3
    expected = axial(zscore(helpers.brats_modality(vols[0][0], 3)))
    np.testing.assert_allclose(case_slices(splits, ids["HGG"][0])["images"], expected, atol=1e-5)


def test_paired_folders_with_suffix_multilabel_target_and_strict_labels(tmp_path):
    vols = []
    for image, lesion in volumes(3):
        label = lesion.copy()
        label[:4] = 2
        label[-4:] = 3
        vols.append((image, label))
    names = helpers.write_paired(str(tmp_path / "p"), vols, label_suffix="_seg")
    (tmp_path / "p" / "images" / "._subject00.nii.gz").write_bytes(b"resource fork")
    (tmp_path / "p" / "labels" / ".DS_Store").write_bytes(b"")
    config = data_config(
        "paired",
        tmp_path / "p",
        split=(1 / 3, 1 / 3, 1 / 3),
        label_values=(1, 3),
        paired__label_suffix="_seg",
    )
    splits = load(config, tmp_path / "a")
    for name, (image, label) in zip(names, vols, strict=True):
        got = case_slices(splits, name)
        np.testing.assert_array_equal(got["labels"], axial(np.isin(label, (1, 3))))
        np.testing.assert_allclose(got["images"], axial(zscore(image)), atol=1e-5)

    config.paired.strict_labels = True
    with pytest.raises(DataError, match=r"subject0\d_seg.nii.gz: unexpected label values \[2\]"):
        load(config, tmp_path / "b")


def test_mixed_inplane_sizes_resize_and_crop_record_spacing(tmp_path):
    small = helpers.make_volume(np.random.default_rng(0), (16, 16, 6))
    big_image = np.zeros((32, 32, 6), np.float32)
    big_image[4:28, 4:28] = np.random.default_rng(1).uniform(1, 2, (24, 24, 6))
    big_label = np.zeros((32, 32, 6), np.uint8)
    big_label[8:24, 12:20, 2:4] = 1  # aligned to 2x2 blocks: exact under 2x nearest downsampling
    other = helpers.make_volume(np.random.default_rng(2), (16, 16, 6))  # not `small`: a copy
    vols = [small, (big_image, big_label), other]  # under another name is refused (issue 24)
    affines = [helpers.affine_for((1, 1, 2)), helpers.affine_for((0.5, 0.5, 3)), np.eye(4)]
    root = helpers.write_msd(str(tmp_path / "msd"), vols, affines=affines)

    splits = load(data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3)), tmp_path / "resize")
    got = case_slices(splits, "case_001")
    expected_label = np.zeros((6, 16, 16), np.uint8)
    expected_label[2:4, 4:12, 6:10] = 1
    np.testing.assert_array_equal(got["labels"], expected_label)
    assert got["images"].shape == (6, 16, 16)
    np.testing.assert_allclose(got["spacing"][0], [0.5, 0.5, 3])
    np.testing.assert_allclose(case_slices(splits, "case_002")["spacing"][0], [1, 1, 1])

    splits = load(
        data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3), resample="crop"), tmp_path / "crop"
    )
    got = case_slices(splits, "case_001")
    np.testing.assert_array_equal(got["labels"], axial(big_label)[:, 8:24, 8:24])
    np.testing.assert_allclose(got["images"], axial(zscore(big_image))[:, 8:24, 8:24], atol=1e-5)
    got = case_slices(splits, "case_000")  # 16x16 already: untouched
    np.testing.assert_allclose(got["images"], axial(zscore(small[0])), atol=1e-5)


def test_flipped_and_permuted_affines_give_the_same_canonical_slices(tmp_path):
    image, label = helpers.make_volume(np.random.default_rng(3), (16, 12, 6))
    label[2:5, 3:4, 1] = 1  # something asymmetric in every direction
    ras = helpers.affine_for((1.0, 2.0, 3.0))
    nx, ny, nz = image.shape
    flip_xz = np.array([[-1, 0, 0, nx - 1], [0, 1, 0, 0], [0, 0, -1, nz - 1], [0, 0, 0, 1.0]])
    swap_xy = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    # Each copy scaled by 2**k: another scan for the duplicate check, the same one bit for bit
    # after z-scoring (a power of two scales the mean and deviation exactly).
    flipped = (image[::-1, :, ::-1] * 2.0, label[::-1, :, ::-1])
    permuted = (image.transpose(1, 0, 2) * 4.0, label.transpose(1, 0, 2))
    # Same world coordinates: voxel i of the flipped file is voxel flip_xz @ i of the original.
    vols = [(image, label), flipped, permuted]
    root = helpers.write_msd(
        str(tmp_path / "msd"), vols, affines=[ras, ras @ flip_xz, ras @ swap_xy]
    )
    # The flipped file really is stored differently (LAI-like), and nibabel agrees it maps back.
    stored = nib.load(os.path.join(root, "imagesTr", "case_001.nii.gz"))
    assert nib.aff2axcodes(stored.affine) == ("L", "A", "I")
    splits = load(data_config("msd", root, size=(16, 12), split=(1 / 3, 1 / 3, 1 / 3)), tmp_path)
    reference = case_slices(splits, "case_000")
    np.testing.assert_allclose(reference["images"], axial(zscore(image)), atol=1e-5)
    for case in ("case_001", "case_002"):
        got = case_slices(splits, case)
        np.testing.assert_array_equal(got["images"], reference["images"])
        np.testing.assert_array_equal(got["labels"], reference["labels"])
        np.testing.assert_allclose(got["spacing"], reference["spacing"])
    np.testing.assert_allclose(reference["spacing"][0], [1.0, 2.0, 3.0])


def test_split_with_unlabelled_subjects_holds_out_only_labelled_ones():
    plain = splitting.split_subjects(20, (0.7, 0.15, 0.15), 3)
    same = splitting.split_subjects(20, (0.7, 0.15, 0.15), 3, np.ones(20, bool))
    for a, b in zip(plain, same, strict=True):
        np.testing.assert_array_equal(a, b)
    # val/test sizes follow the labelled count (17 labelled: still 3 and 3), so unlabelling
    # three training subjects of the plain split changes nothing.
    labelled = np.ones(20, bool)
    labelled[plain[0][:3]] = False
    for a, b in zip(
        plain, splitting.split_subjects(20, (0.7, 0.15, 0.15), 3, labelled), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    labelled = np.arange(20) % 2 == 0
    train, val, test = splitting.split_subjects(20, (0.7, 0.15, 0.15), 3, labelled)
    assert (len(val), len(test)) == (2, 2) and labelled[val].all() and labelled[test].all()
    assert set(np.flatnonzero(~labelled)) <= set(train.tolist())
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(20))
    with pytest.raises(DataError, match="of 2 labelled subjects leaves"):
        splitting.split_subjects(20, (0.7, 0.15, 0.15), 3, np.arange(20) < 2)


def test_unlabelled_cases_join_the_training_pool_in_each_layout(tmp_path):
    vols = volumes(6)
    root = helpers.write_msd(str(tmp_path / "msd"), vols)
    meta_path = os.path.join(root, "dataset.json")
    with open(meta_path) as f:
        meta = json.load(f)
    for i in (1, 4):
        del meta["training"][i]["label"]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    expect_error(msd(root), tmp_path / "a", meta_path, "training[1]", "allow_unlabelled")
    splits = load(
        data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3), allow_unlabelled=True), tmp_path
    )
    train = splits.train
    unlabelled = {train.cases[s] for s in train.subject[~train.has_label]}
    assert unlabelled == {"case_001", "case_004"}
    assert splits.val.has_label.all() and splits.test.has_label.all()
    assert not train.labels[~train.has_label].any()  # unlabelled slices have all-0 masks
    got = case_slices(splits, "case_001")
    np.testing.assert_allclose(got["images"], axial(zscore(vols[1][0])), atol=1e-5)
    # The cache key does not depend on the flag: a fully labelled dataset keeps its cache.
    full = helpers.write_msd(str(tmp_path / "full"), vols)
    a = load(data_config("msd", full, split=(1 / 3, 1 / 3, 1 / 3)), tmp_path / "b").fingerprint
    b = load(
        data_config("msd", full, split=(1 / 3, 1 / 3, 1 / 3), allow_unlabelled=True), tmp_path / "b"
    )
    assert a == b.fingerprint and b.train.has_label.all()

    names = helpers.write_paired(str(tmp_path / "p"), vols)
    os.remove(os.path.join(tmp_path / "p", "labels", f"{names[2]}.nii.gz"))
    config = data_config(
        "paired", tmp_path / "p", split=(1 / 3, 1 / 3, 1 / 3), allow_unlabelled=True
    )
    train = load(config, tmp_path / "c").train
    assert {train.cases[s] for s in train.subject[~train.has_label]} == {names[2]}

    ids = helpers.write_brats(str(tmp_path / "brats"), {"LGG": volumes(6, kind="brats")})
    case = ids["LGG"][3]
    os.remove(os.path.join(tmp_path / "brats", "LGG", case, f"{case}_seg.nii.gz"))
    config = data_config(
        "brats",
        tmp_path / "brats",
        split=(1 / 3, 1 / 3, 1 / 3),
        brats__grades="LGG",
        allow_unlabelled=True,
    )
    train = load(config, tmp_path / "d").train
    assert {train.cases[s] for s in train.subject[~train.has_label]} == {case}


def test_sagittal_axis(tmp_path):
    vols = volumes(3)
    root = helpers.write_msd(str(tmp_path / "msd"), vols)
    splits = load(
        data_config("msd", root, size=(16, 6), axis=0, split=(1 / 3, 1 / 3, 1 / 3)), tmp_path
    )
    got = case_slices(splits, "case_002")
    np.testing.assert_allclose(got["images"], zscore(vols[2][0]), atol=1e-5)  # [X, Y, Z]
    np.testing.assert_array_equal(got["labels"], vols[2][1])


def test_drop_empty_slices_keeps_source_indices(tmp_path):
    vols = volumes(3)
    for image, _ in vols:
        image[:, :, [0, 4]] = 0
    root = helpers.write_msd(str(tmp_path / "msd"), vols)
    config = data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3), keep_empty_slices=False)
    splits = load(config, tmp_path)
    got = case_slices(splits, "case_001")
    np.testing.assert_array_equal(got["slice_index"], [1, 2, 3, 5])
    np.testing.assert_allclose(got["images"], axial(zscore(vols[1][0]))[[1, 2, 3, 5]], atol=1e-5)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 12


# ----------------------------------------------------------------------------- cache


def test_second_run_reads_the_cache_without_touching_voxels(tmp_path, monkeypatch):
    root = helpers.write_msd(str(tmp_path / "msd"), volumes(3))
    config = data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3))
    first = load(config, tmp_path)
    caches = [n for n in os.listdir(tmp_path / "work" / "cache") if not n.startswith(".")]
    assert caches == [first.fingerprint]  # (beside it: the digest index, .source_digests.json)

    def no_reading(*args, **kwargs):
        raise AssertionError("NIfTI read on a warm cache")

    monkeypatch.setattr(nib, "load", no_reading)
    second = load(config, tmp_path)
    assert second.fingerprint == first.fingerprint
    assert isinstance(second.train.images, np.memmap) and not second.train.images.flags.writeable
    np.testing.assert_array_equal(second.train.images, first.train.images)
    np.testing.assert_array_equal(second.val.labels, first.val.labels)
    np.testing.assert_array_equal(second.test.slice_index, first.test.slice_index)
    assert second.train.cases == first.train.cases

    # A touched source file (a new mtime, the same bytes) keeps the cache (issue 24: the key
    # hashes contents); changed bytes or a changed preprocessing option mean another cache.
    label = os.path.join(root, "labelsTr", "case_001.nii.gz")
    st = os.stat(label)
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load(config, tmp_path).fingerprint == first.fingerprint  # nib.load still refused
    monkeypatch.undo()
    with open(label, "ab") as f:
        f.write(b"\0")  # gzip skips trailing padding: the same voxels, other bytes
    changed = load(config, tmp_path).fingerprint
    config.size = (8, 8)
    resized = load(config, tmp_path)
    assert len({first.fingerprint, changed, resized.fingerprint}) == 3
    caches = [n for n in os.listdir(tmp_path / "work" / "cache") if not n.startswith(".")]
    assert sorted(caches) == sorted([first.fingerprint, changed, resized.fingerprint])
    assert resized.train.shape == (8, 8)


def test_moved_dataset_keeps_its_fingerprint(tmp_path):
    root = helpers.write_msd(str(tmp_path / "a"), volumes(3))
    first = load(data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3)), tmp_path)
    os.rename(root, tmp_path / "b")
    moved = load(data_config("msd", tmp_path / "b", split=(1 / 3, 1 / 3, 1 / 3)), tmp_path)
    assert moved.fingerprint == first.fingerprint


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, DataError])
def test_interrupted_cache_build_leaves_nothing(tmp_path, monkeypatch, interruption):
    root = helpers.write_msd(str(tmp_path / "msd"), volumes(4))
    config = data_config("msd", root, split=(0.5, 0.25, 0.25))
    real, calls = preprocess.process_case, []

    def flaky(case, settings):
        calls.append(case.case_id)
        if len(calls) == 3:
            raise interruption("stopped")
        return real(case, settings)

    monkeypatch.setattr(preprocess, "process_case", flaky)
    with pytest.raises(interruption):
        load(config, tmp_path)
    assert os.listdir(tmp_path / "work" / "cache") == []  # neither a cache nor its temp folder
    monkeypatch.undo()
    splits = load(config, tmp_path)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 4 * SHAPE[2]


def test_npy_appender_final_header_matches_rows(tmp_path):
    path = str(tmp_path / "x.npy")
    rows = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    writer = cache.NpyAppender(path, (2, 3), np.float32, max_rows=10**9)
    writer.append(rows[:2])
    writer.append(rows[2:])
    writer.close()
    np.testing.assert_array_equal(np.load(path), rows)
    np.testing.assert_array_equal(np.load(path, mmap_mode="r")[3], rows[3])


# ----------------------------------------------------------------------------- bad input


def write_three(tmp_path, **kwargs) -> str:
    return helpers.write_msd(str(tmp_path / "msd"), volumes(3), **kwargs)


def replace_file(path: str, image: np.ndarray, affine=None):
    nib.save(nib.Nifti1Image(image, helpers.affine_for() if affine is None else affine), path)


def expect_error(config, tmp_path, *fragments):
    with pytest.raises(DataError) as info:
        load(config, tmp_path)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


def msd(root):
    return data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3))


def test_missing_dataset_json(tmp_path):
    os.makedirs(tmp_path / "empty")
    path = os.path.join(tmp_path / "empty", "dataset.json")
    expect_error(msd(tmp_path / "empty"), tmp_path, path, "missing dataset.json")


def test_dataset_json_lists_a_missing_file(tmp_path):
    root = write_three(tmp_path)
    missing = os.path.join(root, "labelsTr", "case_002.nii.gz")
    os.remove(missing)
    expect_error(msd(root), tmp_path, missing, "does not exist")


def test_unreadable_nifti(tmp_path):
    root = write_three(tmp_path)
    path = os.path.join(root, "imagesTr", "case_001.nii.gz")
    with gzip.open(path, "wb") as f:
        f.write(b"this is not a NIfTI header" * 3)
    expect_error(msd(root), tmp_path, path, "unreadable NIfTI image")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_nifti(tmp_path, suffix):
    vols = volumes(3)
    root = str(tmp_path / "p")
    names = helpers.write_paired(root, vols)
    path = os.path.join(root, "images", f"{names[2]}{suffix}")
    if suffix == ".nii":
        os.remove(path + ".gz")
        nib.save(nib.Nifti1Image(vols[2][0], helpers.affine_for()), path)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    config = data_config("paired", root, split=(1 / 3, 1 / 3, 1 / 3))
    expect_error(config, tmp_path, path, "truncated or corrupt")


def test_shape_mismatch(tmp_path):
    root = write_three(tmp_path)
    path = os.path.join(root, "labelsTr", "case_000.nii.gz")
    replace_file(path, np.zeros((16, 16, 5), np.uint8))
    expect_error(msd(root), tmp_path, path, "label shape (16, 16, 5) differs from image shape")


def test_affine_mismatch(tmp_path):
    root = write_three(tmp_path)
    path = os.path.join(root, "labelsTr", "case_000.nii.gz")
    replace_file(path, volumes(1)[0][1], helpers.affine_for((1.0, 1.0, 3.0)))
    expect_error(msd(root), tmp_path, path, "label affine differs")


def test_all_header_problems_are_reported_at_once(tmp_path):
    root = write_three(tmp_path)
    first = os.path.join(root, "labelsTr", "case_000.nii.gz")
    last = os.path.join(root, "labelsTr", "case_002.nii.gz")
    replace_file(first, np.zeros((16, 16, 5), np.uint8))
    replace_file(last, np.zeros((16, 15, 6), np.uint8))
    expect_error(msd(root), tmp_path, "2 of 3 cases", first, last)


def test_non_integer_labels(tmp_path):
    root = write_three(tmp_path)
    path = os.path.join(root, "labelsTr", "case_001.nii.gz")
    label = np.zeros(SHAPE, np.float32)
    label[2:4, 2:4, 2] = 0.5
    replace_file(path, label)
    expect_error(msd(root), tmp_path, path, "label values must be integers, found [0.5]")


def test_unexpected_label_values_msd_and_brats(tmp_path):
    root = write_three(tmp_path)
    path = os.path.join(root, "labelsTr", "case_002.nii.gz")
    label = volumes(3)[2][1].copy()
    label[0, 0, 0] = 7
    replace_file(path, label)
    expect_error(msd(root), tmp_path / "a", path, "unexpected label values [7]", "[0, 1]")

    vols = volumes(3, kind="brats")
    vols[1][1][0, 0, 0] = 3
    ids = helpers.write_brats(str(tmp_path / "brats"), {"LGG": vols})
    bad = os.path.join(tmp_path / "brats", "LGG", ids["LGG"][1], f"{ids['LGG'][1]}_seg.nii.gz")
    config = data_config(
        "brats", tmp_path / "brats", split=(1 / 3, 1 / 3, 1 / 3), brats__grades="LGG"
    )
    expect_error(config, tmp_path / "b", bad, "unexpected label values [3]", "[0, 1, 2, 4]")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_voxels(tmp_path, value):
    root = write_three(tmp_path)
    path = os.path.join(root, "imagesTr", "case_001.nii.gz")
    image = volumes(2)[1][0].copy()
    image[3, 4, 5] = value
    replace_file(path, image)
    expect_error(msd(root), tmp_path, path, "1 NaN or Inf voxels")


def test_4d_paired_image_without_modality(tmp_path):
    vols = [(np.stack([img, img], -1), lab) for img, lab in volumes(3)]
    root = str(tmp_path / "p")
    names = helpers.write_paired(root, vols)
    path = os.path.join(root, "images", f"{names[0]}.nii.gz")
    config = data_config("paired", root, split=(1 / 3, 1 / 3, 1 / 3))
    expect_error(config, tmp_path, path, "4D image with 2 channels and no modality chosen")


def test_empty_dataset_after_filtering(tmp_path):
    # Blank scans with empty labels (a blank image with target is refused first: issue 24).
    vols = [(np.zeros_like(img), np.zeros_like(lab)) for img, lab in volumes(3)]
    root = helpers.write_msd(str(tmp_path / "msd"), vols)
    config = data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3), keep_empty_slices=False)
    expect_error(config, tmp_path / "a", root, "no slices left after filtering")

    os.makedirs(tmp_path / "brats" / "LGG")
    config = data_config("brats", tmp_path / "brats", brats__grades="LGG")
    expect_error(config, tmp_path / "b", str(tmp_path / "brats"), "no cases found")
    os.makedirs(tmp_path / "p" / "images")
    os.makedirs(tmp_path / "p" / "labels")
    (tmp_path / "p" / "images" / "._x.nii.gz").write_bytes(b"resource fork")
    expect_error(data_config("paired", tmp_path / "p"), tmp_path / "c", "no cases found")


def test_split_leaving_val_or_test_empty(tmp_path):
    root = write_three(tmp_path)
    expect_error(data_config("msd", root), tmp_path / "a", "leaves val empty")
    expect_error(
        data_config("msd", root, split=(2 / 3, 1 / 3, 0)), tmp_path / "b", "leaves test empty"
    )
    # Non-empty by subjects, but the test subject's slices are all filtered out.
    vols = volumes(3)
    vols[2] = (np.zeros_like(vols[2][0]), np.zeros_like(vols[2][1]))  # a blank, empty scan
    root = helpers.write_msd(str(tmp_path / "msd2"), vols)
    config = data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3), keep_empty_slices=False)
    message = expect_error(config, tmp_path / "c", "split (1 subjects) is empty after filtering")
    assert os.listdir(tmp_path / "c" / "work" / "cache") == [], message


def test_missing_brats_and_paired_files(tmp_path):
    vols = volumes(3, kind="brats")
    ids = helpers.write_brats(str(tmp_path / "brats"), {"LGG": vols})
    seg = os.path.join(tmp_path / "brats", "LGG", ids["LGG"][0], f"{ids['LGG'][0]}_seg.nii.gz")
    os.remove(seg)
    config = data_config(
        "brats", tmp_path / "brats", split=(1 / 3, 1 / 3, 1 / 3), brats__grades="LGG"
    )
    expect_error(config, tmp_path / "a", seg, "missing BraTS seg file")
    config.brats.grades = "HGG"
    hgg = os.path.join(tmp_path / "brats", "HGG")
    expect_error(config, tmp_path / "b", hgg, "missing BraTS grade folder")

    root = str(tmp_path / "p")
    names = helpers.write_paired(root, volumes(3))
    orphan = os.path.join(root, "images", f"{names[1]}.nii.gz")
    os.remove(os.path.join(root, "labels", f"{names[1]}.nii.gz"))
    expect_error(data_config("paired", root), tmp_path / "c", orphan, "images without a label")


def test_bad_dataset_json(tmp_path):
    root = write_three(tmp_path)
    path = os.path.join(root, "dataset.json")
    with open(path) as f:
        meta = json.load(f)
    meta["training"][1] = {"image": "./imagesTr/case_001.nii.gz"}
    with open(path, "w") as f:
        json.dump(meta, f)
    expect_error(msd(root), tmp_path, path, "training[1]")


def test_config_errors_name_the_field(tmp_path):
    root = write_three(tmp_path)
    with pytest.raises(ValueError, match="config field data.size"):
        load(data_config("msd", root, size=(16,)), tmp_path)
    with pytest.raises(ValueError, match="config field data.modality"):
        load(data_config("msd", root, modality="T1w"), tmp_path)
    with pytest.raises(ValueError, match="config field data.brats.grades"):
        load(data_config("brats", root, brats__grades="LGG,XYZ"), tmp_path)


# ----------------------------------------------------------------------------- configs


def test_a_config_pointed_at_a_user_folder_loads_it(tmp_path):
    """The one-command path: a paper config, :cpu, --config.data.root/layout/size overrides."""
    root = str(tmp_path / "p")
    helpers.write_paired(root, volumes(6))
    config = config_from_flags(
        [
            f"--config={os.path.join(REPO, 'configs', 'brats_lgg_flair.py')}:cpu",
            f"--config.data.root={root}",
            "--config.data.layout=paired",
            "--config.data.size=8,8",
        ]
    )
    splits = loading.load_dataset(config.data, str(tmp_path / "work"))
    assert splits.train.shape == (8, 8) and len(splits.test) == 6


def test_normalise_by_hand_and_in_place_option():
    image = np.array([[0.0, 2.0], [4.0, 0.0]], np.float32)  # foreground 2, 4: mean 3, std 1
    np.testing.assert_allclose(preprocess.normalise(image, "zscore"), [[0, -1], [1, 0]])
    np.testing.assert_array_equal(image, [[0, 2], [4, 0]])  # untouched without in_place
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0], np.float32)
    out = preprocess.normalise(hu, "ct_window", (-160.0, 240.0), in_place=True)
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1])
    assert out is hu


def test_layout_helpers():
    assert layouts.strip_nifti("a.b.nii.gz") == "a.b" and layouts.strip_nifti("x.nii") == "x"
    assert not layouts.is_nifti("._x.nii.gz") and layouts.is_nifti("x.nii")
