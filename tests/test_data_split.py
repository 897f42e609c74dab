"""Splits the user controls (data.split_file, data.group_regex) and data.reorient = 'none'."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import types

import nibabel as nib
import numpy as np
import pytest

from selal_jax.base.errors import DataError
from selal_jax.data import cache, config_fields, fitting, label_maps, splitting
from tests import helpers
from tests.test_data import case_slices, data_config, load, volumes, zscore

SHAPE = (8, 8, 3)
# Three patients with two or three scans each, and two single-scan patients.
NAMES = [
    "sub-01_ses-1",
    "sub-01_ses-2",
    "sub-02_ses-1",
    "sub-02_ses-2",
    "sub-02_ses-3",
    "sub-03_ses-1",
    "sub-03_ses-2",
    "sub-04_ses-1",
    "sub-05_ses-1",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("split")
    return helpers.write_msd(str(base / "msd"), volumes(len(NAMES), SHAPE), names=NAMES)


def cases_of(splits) -> dict[str, list[str]]:
    """The case names of each split, from the slices themselves."""
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    return {
        name: sorted({part.cases[s] for s in np.unique(part.subject)})
        for name, part in parts.items()
    }


def write_split(path, train, val, test) -> str:
    with open(path, "w") as f:
        json.dump({"train": train, "val": val, "test": test}, f)
    return str(path)


def test_without_split_fields_the_split_is_the_seeded_one(root, tmp_path):
    config = data_config("msd", root, size=SHAPE[:2], split_seed=3)
    splits = load(config, tmp_path)
    parts = splitting.split_subjects(len(NAMES), tuple(config.split), 3)
    expected = {
        name: sorted(NAMES[i] for i in part)
        for name, part in zip(splitting.SPLIT_NAMES, parts, strict=True)
    }
    assert cases_of(splits) == expected == splits.split_cases


def test_split_file_gives_exactly_its_cases_and_warns_once_of_the_rest(root, tmp_path, caplog):
    train, val, test = NAMES[2:7], [NAMES[0]], [NAMES[7]]
    path = write_split(tmp_path / "split.json", train, val, test)
    config = data_config("msd", root, size=SHAPE[:2], split_file=path)
    with caplog.at_level(logging.WARNING):
        splits = load(config, tmp_path)
    assert cases_of(splits) == {"train": sorted(train), "val": val, "test": test}
    assert splits.split_cases == cases_of(splits)
    warnings = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(warnings) == 1 and "2 cases" in warnings[0]
    assert NAMES[1] in warnings[0] and NAMES[8] in warnings[0]
    # The slices are the cases' own, the left-out cases' nowhere.
    vols = volumes(len(NAMES), SHAPE)
    part = splits.val
    np.testing.assert_allclose(
        part.images, np.moveaxis(zscore(vols[0][0]), 2, 0), rtol=1e-5, atol=1e-5
    )
    all_cases = {p.cases[s] for p in (splits.train, splits.val, splits.test) for s in p.subject}
    assert NAMES[1] not in all_cases and NAMES[8] not in all_cases


def test_a_left_out_broken_case_is_not_read(root, tmp_path):
    broken = str(tmp_path / "msd")
    shutil.copytree(root, broken)
    with open(os.path.join(broken, "labelsTr", f"{NAMES[8]}.nii.gz"), "wb") as f:
        f.write(b"not a nifti")
    path = write_split(tmp_path / "split.json", NAMES[:6], [NAMES[6]], [NAMES[7]])
    splits = load(data_config("msd", broken, size=SHAPE[:2], split_file=path), tmp_path)
    assert len(splits.test) == SHAPE[2]


@pytest.mark.parametrize(
    "content, match",
    [
        (
            {"train": NAMES[:5], "val": ["sub-09_ses-1"], "test": NAMES[5:6]},
            r"unknown case 'sub-09",
        ),
        (
            {"train": NAMES[:5], "val": NAMES[4:6], "test": NAMES[6:7]},
            r"case 'sub-02_ses-3' is in both 'train' and 'val'",
        ),
        ({"train": NAMES[:5], "val": [], "test": NAMES[6:7]}, r"field 'val' lists no case"),
        ({"train": NAMES[:5], "validation": NAMES[5:6], "test": NAMES[6:7]}, "exactly the keys"),
        ({"train": NAMES[:5], "val": "sub-03_ses-1", "test": NAMES[6:7]}, "list of case names"),
        ([NAMES], "exactly the keys"),
    ],
)
def test_bad_split_files_name_the_file_and_the_case(root, tmp_path, content, match):
    path = tmp_path / "split.json"
    path.write_text(json.dumps(content))
    config = data_config("msd", root, size=SHAPE[:2], split_file=str(path))
    with pytest.raises(DataError, match=match) as e:
        load(config, tmp_path)
    assert str(path) in str(e.value) and "data.split_file" in str(e.value)


def test_split_file_unreadable_or_missing(root, tmp_path):
    path = tmp_path / "split.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"split.json \(config field data.split_file\)"):
        load(data_config("msd", root, size=SHAPE[:2], split_file=str(path)), tmp_path)
    missing = str(tmp_path / "nope.json")
    with pytest.raises(DataError, match=r"nope.json.*data.split_file"):
        load(data_config("msd", root, size=SHAPE[:2], split_file=missing), tmp_path)


def test_split_file_refuses_unlabelled_cases_in_val_and_a_patient_split_in_two(root, tmp_path):
    unlabelled = str(tmp_path / "msd")
    shutil.copytree(root, unlabelled)
    meta_path = os.path.join(unlabelled, "dataset.json")
    with open(meta_path) as f:
        meta = json.load(f)
    del meta["training"][5]["label"]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    path = write_split(tmp_path / "a.json", NAMES[:5], [NAMES[5]], [NAMES[7]])
    config = data_config("msd", unlabelled, size=SHAPE[:2], split_file=path, allow_unlabelled=True)
    with pytest.raises(DataError, match=r"case 'sub-03_ses-1' in 'val' has no label"):
        load(config, tmp_path / "a")
    # With data.group_regex, the file must keep each patient in one part.
    path = write_split(tmp_path / "b.json", NAMES[:6], [NAMES[6]], [NAMES[7]])
    config = data_config("msd", root, size=SHAPE[:2], split_file=path, group_regex=r"^(sub-\d+)_")
    with pytest.raises(DataError, match=r"b.json.*patient 'sub-03' .* \['train', 'val'\]"):
        load(config, tmp_path / "b")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_group_regex_keeps_each_patient_in_one_part(root, tmp_path, seed):
    config = data_config(
        "msd",
        root,
        size=SHAPE[:2],
        split_seed=seed,
        split=(0.6, 0.2, 0.2),
        group_regex=r"^(sub-\d+)_",
    )
    got = cases_of(load(config, tmp_path))
    patient = {name: name.split("_")[0] for name in NAMES}
    parts_of = {}
    for part, names in got.items():
        for name in names:
            parts_of.setdefault(patient[name], set()).add(part)
    assert all(len(p) == 1 for p in parts_of.values()) and len(parts_of) == 5
    assert sorted(n for names in got.values() for n in names) == sorted(NAMES)
    # The seeded split of the five patients (sorted by name), expanded to their cases.
    patients = sorted(set(patient.values()))
    parts = splitting.split_subjects(5, (0.6, 0.2, 0.2), seed)
    for name, part in zip(splitting.SPLIT_NAMES, parts, strict=True):
        chosen = {patients[i] for i in part}
        assert got[name] == sorted(n for n in NAMES if patient[n] in chosen)


def test_group_regex_holds_out_only_fully_labelled_patients():
    case_ids = NAMES
    labelled = np.ones(len(NAMES), bool)
    labelled[[0, 5]] = False  # one scan of sub-01 and one of sub-03
    pattern = re.compile(r"^(sub-\d+)_")
    for seed in range(6):
        train, val, test = splitting.split_groups(
            case_ids, (1 / 3, 1 / 3, 1 / 3), seed, labelled, pattern
        )
        assert {0, 1, 5, 6} <= set(train.tolist())  # the patients with an unlabelled scan
        assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(NAMES)))


def test_group_regex_errors(root, tmp_path):
    config = data_config("msd", root, size=SHAPE[:2], group_regex=r"^(sub-0[1-4])_")
    with pytest.raises(DataError, match=r"group_regex '\^\(sub-0\[1-4\]\)_' does not match.*"):
        load(config, tmp_path)
    with pytest.raises(DataError, match="sub-05_ses-1"):
        load(config, tmp_path)
    for regex, match in ((r"^sub-\d+_", "needs a group"), ("(sub", "not a regular expression")):
        config = data_config("msd", root, size=SHAPE[:2], group_regex=regex)
        with pytest.raises(ValueError, match=f"config field data.group_regex: {match}"):
            load(config, tmp_path)
    config = data_config("msd", root, size=SHAPE[:2], reorient="RAS")
    with pytest.raises(ValueError, match="config field data.reorient: expected one of"):
        load(config, tmp_path)


def test_fingerprint_hashes_the_split_files_content_not_its_path(root, tmp_path):
    files = [os.path.join(root, "dataset.json")]
    default = cache.fingerprint(files, root, data_config("msd", root))
    a = write_split(tmp_path / "a.json", NAMES[:6], [NAMES[6]], [NAMES[7]])
    b = str(tmp_path / "moved" / "b.json")
    os.makedirs(os.path.dirname(b))
    shutil.copy(a, b)
    key_a = cache.fingerprint(files, root, data_config("msd", root, split_file=a))
    key_b = cache.fingerprint(files, root, data_config("msd", root, split_file=b))
    assert key_a == key_b != default
    write_split(b, NAMES[:6], [NAMES[7]], [NAMES[6]])
    assert cache.fingerprint(files, root, data_config("msd", root, split_file=b)) != key_a
    keys = {
        cache.fingerprint(files, root, data_config("msd", root, **{field: value}))
        for field, value in (("group_regex", r"^(sub-\d+)_"), ("reorient", "none"))
    }
    assert len(keys | {default, key_a}) == 4
    # At their defaults the new fields are not hashed: the key of a config without them.
    config = data_config("msd", root)
    for field in ("split_file", "group_regex", "reorient"):
        del config[field]
    assert cache.fingerprint(files, root, config) == default


def test_editing_the_split_file_rebuilds_the_cache(root, tmp_path):
    path = write_split(tmp_path / "split.json", NAMES[:6], [NAMES[6]], [NAMES[7]])
    config = data_config("msd", root, size=SHAPE[:2], split_file=path)
    first = load(config, tmp_path)
    write_split(path, NAMES[:6], [NAMES[7]], [NAMES[6]])
    second = load(config, tmp_path)
    assert first.fingerprint != second.fingerprint
    assert cases_of(second)["val"] == [NAMES[7]]


# ------------------------------------------------------------------ data.reorient = 'none'


def _stored_cases(shape=(16, 12, 6), channels: int = 0):
    """A volume stored three ways (RAS, x and z reversed, x and y swapped) with affines that keep
    its world coordinates: (stored volumes, affines). channels > 0: [X, Y, Z, K] images."""
    rng = np.random.default_rng(3)
    if channels:
        image, label = helpers.make_classes_volume(rng, shape, channels)
        label = (label > 0).astype(np.uint8)
    else:
        image, label = helpers.make_volume(rng, shape)
    label[2:5, 3:4, 1] = 1  # something asymmetric in every direction
    ras = helpers.affine_for((1.0, 2.0, 3.0))
    vols = [(image, label)]
    # Each copy scaled by 2**k: another scan for the duplicate check, the same one bit for bit
    # after z-scoring (a power of two scales the mean and deviation exactly).
    vols += [
        (helpers.stored_as(image, h) * 2.0**k, helpers.stored_as(label, h))
        for k, h in ((1, "flip_xz"), (2, "swap_xy"))
    ]
    return vols, [ras, ras @ helpers.flip_xz(shape), ras @ helpers.swap_xy()]


@pytest.mark.parametrize("axis", [0, 2])
def test_reorient_none_slices_each_files_stored_array(tmp_path, axis):
    vols, affines = _stored_cases()
    root = helpers.write_msd(str(tmp_path / "msd"), vols, affines=affines)
    config = data_config(
        "msd",
        root,
        size=(16, 16),
        split=(1 / 3, 1 / 3, 1 / 3),
        reorient="none",
        axis=axis,
        resample="crop",
    )
    splits = load(config, tmp_path)
    canonical = load(
        data_config(
            "msd", root, size=(16, 16), split=(1 / 3, 1 / 3, 1 / 3), axis=axis, resample="crop"
        ),
        tmp_path / "canonical",
    )
    for i, ((image, label), affine) in enumerate(zip(vols, affines, strict=True)):
        got = case_slices(splits, f"case_{i:03d}")
        images = np.moveaxis(zscore(image), axis, 0)
        labels = np.moveaxis(label, axis, 0)
        np.testing.assert_array_equal(got["slice_index"], np.arange(image.shape[axis]))
        np.testing.assert_allclose(
            got["images"], fitting.fit_slices(images, (16, 16), "crop", False), atol=1e-5
        )
        np.testing.assert_array_equal(
            got["labels"], fitting.fit_slices(labels, (16, 16), "crop", True)
        )
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))  # per stored axis
        np.testing.assert_allclose(got["spacing"], np.tile(spacing, (len(images), 1)))
    # Not vacuous: the stored orders differ, so canonical slicing gives other slices.
    for case in ("case_001", "case_002"):
        assert not np.array_equal(
            case_slices(splits, case)["labels"], case_slices(canonical, case)["labels"]
        )


def test_reorient_none_reads_every_channel_the_same_way(tmp_path):
    vols, affines = _stored_cases(channels=2)
    modality = {"0": "MRI_A", "1": "MRI_B"}
    root = helpers.write_msd(str(tmp_path / "msd"), vols, affines=affines, modality=modality)
    config = data_config(
        "msd",
        root,
        size=(16, 16),
        split=(1 / 3, 1 / 3, 1 / 3),
        reorient="none",
        axis=1,
        resample="crop",
        modality="all",
    )
    splits = load(config, tmp_path)
    assert splits.train.channel_names == ("MRI_A", "MRI_B")
    for i, (image, label) in enumerate(vols):
        got = case_slices(splits, f"case_{i:03d}")
        for k in range(2):
            expected = np.moveaxis(zscore(image[..., k]), 1, 0)
            np.testing.assert_allclose(
                got["images"][..., k],
                fitting.fit_slices(expected, (16, 16), "crop", False),
                atol=1e-5,
            )
        np.testing.assert_array_equal(
            got["labels"], fitting.fit_slices(np.moveaxis(label, 1, 0), (16, 16), "crop", True)
        )


@pytest.mark.parametrize("axis, size, resample", [(0, (32, 32), "crop"), (2, (24, 24), "resize")])
def test_reorient_none_round_trips_through_the_annotation_export(tmp_path, axis, size, resample):
    """The export's geometry with reorient=none: the prefill lands on the stored slice the loader
    cut, and the true masks written there import as the loader's slices."""
    from selal_jax.data import label_volumes
    from selal_jax.verbs import annotate
    from tests.test_annotate import SHAPE as ANNOTATE_SHAPE
    from tests.test_annotate import _affines

    affines = _affines()  # RAS, flipped and permuted files: none of it may matter
    vols = [helpers.make_volume(np.random.default_rng([5, i]), ANNOTATE_SHAPE) for i in range(8)]
    root = helpers.write_msd(str(tmp_path / "msd"), vols, affines=affines)
    config = data_config(
        "msd",
        root,
        size=size,
        split=(0.75, 0.125, 0.125),
        reorient="none",
        axis=axis,
        resample=resample,
    )
    splits = load(config, tmp_path)
    train, settings = splits.train, config_fields.make_settings(config, splits.source)
    # Per training case: two slices with target and one without.
    ids = []
    for s in np.unique(train.subject):
        rows = np.flatnonzero(train.subject == s)
        has = np.asarray(train.labels[rows]).reshape(len(rows), -1).any(1)
        ids += [*rows[has][:2], *rows[~has][:1]]
    ids = np.asarray(ids)
    experiment = types.SimpleNamespace(
        pool=train, config=types.SimpleNamespace(data=config), splits=splits
    )
    cases = annotate.queried_cases(experiment, ids, settings)
    assert len(cases) == 6
    values = label_maps.label_value_table(settings)
    for case_id, qc in cases.items():
        i = int(case_id.split("_")[1])
        true = vols[i][1]
        assert qc.file_axis == axis
        np.testing.assert_array_equal(qc.file_index, train.slice_index[ids[qc.positions]])
        expected_plane = label_volumes.PLANES[int(nib.io_orientation(affines[i])[axis, 0])]
        assert qc.geometry.plane(axis) == expected_plane
        masks = np.asarray(train.labels[ids[qc.positions]])
        prefill = label_volumes.prefill_volume(qc.geometry, qc.canonical_index, masks, values)
        assert prefill.shape == ANNOTATE_SHAPE
        stack = np.moveaxis(prefill, axis, 0)
        inplane = stack.shape[1:]
        np.testing.assert_array_equal(
            stack[qc.file_index], fitting.unfit_slices(masks, inplane, resample)
        )
        assert not np.delete(stack, qc.file_index, axis=0).any()
        if resample == "crop":  # fitting lost nothing: the prefill is the truth on those slices
            np.testing.assert_array_equal(
                stack[qc.file_index], np.moveaxis(true, axis, 0)[qc.file_index]
            )
        # The clinician writes the true masks on the queried slices: the loader's slices back.
        corrected = np.zeros_like(true)
        np.moveaxis(corrected, axis, 0)[qc.file_index] = np.moveaxis(true, axis, 0)[qc.file_index]
        path = str(tmp_path / f"{case_id}.nii.gz")
        label_volumes.write_label_volume(path, corrected, qc.case)
        (back, native), reasons = annotate.read_correction(path, qc)
        assert reasons == []
        np.testing.assert_array_equal(back, masks)
        # At the source resolution: the corrected file's own voxels on those slices.
        np.testing.assert_array_equal(native, np.moveaxis(corrected, axis, 0)[qc.file_index])
        assert masks.any()  # not vacuous
