"""C foreground classes and K input channels from the data: layouts, class mapping, cache key.

Volumes are written to tmp dirs with real-world quirks (flipped and permuted affines, anisotropic
spacing, mixed in-plane sizes, 4D images) and compared with NumPy references: the canonical
arrays by hand, per-channel z-scores, class indices by np.isin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import types

import nibabel as nib
import numpy as np
import pytest

from configs import default
from selal_jax.base import schema
from selal_jax.base.errors import DataError
from selal_jax.data import cache, config_fields, layouts, synthetic
from tests import helpers
from tests.helpers import REPO
from tests.test_data import axial, case_slices, data_config, load, zscore

SHAPE = (16, 16, 6)
# The commit before classes and channels existed: its code gives the cache keys to keep.
BASE_COMMIT = "11706038e9027739bf47ebf4c33f709625249bc5"
MSD_LABELS = {"0": "background", "1": "necrosis", "2": "edema", "4": "enhancing"}


def classes_volumes(n: int, shape=SHAPE, channels: int = 3, seed: int = 0):
    rngs = (np.random.default_rng([seed, i]) for i in range(n))
    return [helpers.make_classes_volume(r, shape, channels) for r in rngs]


def class_index(label: np.ndarray, groups) -> np.ndarray:
    """Class indices by np.isin: class k (1-based) where the label is one of groups[k - 1]."""
    out = np.zeros(label.shape, np.uint8)
    for k, group in enumerate(groups, start=1):
        out[np.isin(label, group)] = k
    return out


def channels_zscored(image: np.ndarray, channels) -> np.ndarray:
    """[X, Y, Z, K] -> [Z, X, Y, len(channels)] axial slices, each channel z-scored on its own."""
    return np.stack([axial(zscore(image[..., c])) for c in channels], axis=-1)


def write_quirky_msd(root: str, vols, **kwargs) -> str:
    """Case 0 as RAS with anisotropic spacing, case 1 stored flipped (LAI), case 2 permuted."""
    ras = helpers.affine_for((1.0, 1.5, 3.0))
    hows = [None, "flip_xz", "swap_xy"]
    stored, affines = [], []
    for i, (image, label) in enumerate(vols):
        how = hows[i % 3]
        if how is None:
            stored.append((image, label))
            affines.append(ras)
        else:
            stored.append((helpers.stored_as(image, how), helpers.stored_as(label, how)))
            voxel_map = helpers.flip_xz(image.shape) if how == "flip_xz" else helpers.swap_xy()
            affines.append(ras @ voxel_map)
    return helpers.write_msd(root, stored, affines=affines, **kwargs)


# ----------------------------------------------------------------------------- channels


@pytest.mark.parametrize(
    "modality, channels",
    [("t2w,flair", (2, 0)), ("2,0", (2, 0)), ("all", (0, 1, 2)), ("T1w", (1,))],
)
def test_msd_4d_channels_by_names_indices_and_all(tmp_path, modality, channels):
    vols = classes_volumes(3)
    modalities = {"0": "FLAIR", "1": "T1w", "2": "T2w"}
    root = write_quirky_msd(str(tmp_path / "msd"), vols, modality=modalities, labels=MSD_LABELS)
    nib_file = nib.load(os.path.join(root, "imagesTr", "case_001.nii.gz"))
    assert nib.aff2axcodes(nib_file.affine) == ("L", "A", "I") and nib_file.shape[3] == 3
    splits = load(
        data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3), modality=modality), tmp_path
    )
    names = tuple(modalities[str(c)] for c in channels)
    for part in (splits.train, splits.val, splits.test):
        assert part.channel_names == names and part.channels == len(channels)
        assert part.shape == SHAPE[:2] and part.class_names == ("target",)
    for i, (image, label) in enumerate(vols):
        got = case_slices(splits, f"case_{i:03d}")
        expected = channels_zscored(image, channels)
        if len(channels) == 1:
            expected = expected[..., 0]  # one channel: [N, H, W] as always
        np.testing.assert_allclose(got["images"], expected, atol=1e-5)
        np.testing.assert_array_equal(got["labels"], axial(label > 0))
        np.testing.assert_allclose(got["spacing"][0], [1.0, 1.5, 3.0])


def test_channels_equal_the_single_channel_loads_and_resize_per_channel(tmp_path):
    """Each channel of a K-channel load is exactly the one-channel load of that channel, also
    when cases of different in-plane sizes are resized (bilinear) or cropped."""
    small = classes_volumes(2)
    big = classes_volumes(1, shape=(24, 20, 6), seed=5)
    vols = [small[0], big[0], small[1]]
    affines = [helpers.affine_for((1, 1, 2)), helpers.affine_for((0.6, 0.8, 2)), np.eye(4)]
    modalities = {"0": "FLAIR", "1": "T1w", "2": "T2w"}
    root = helpers.write_msd(
        str(tmp_path / "msd"), vols, affines=affines, modality=modalities, labels=MSD_LABELS
    )
    for resample in ("resize", "crop"):
        config = data_config(
            "msd", root, split=(1 / 3, 1 / 3, 1 / 3), resample=resample, modality="2,1"
        )
        multi = load(config, tmp_path / resample)
        for k, channel in enumerate(("2", "1")):
            config.modality = channel
            single = load(config, tmp_path / f"{resample}{channel}")
            for case in ("case_000", "case_001", "case_002"):
                want = case_slices(single, case)
                got = case_slices(multi, case)
                np.testing.assert_array_equal(got["images"][..., k], want["images"])
                np.testing.assert_array_equal(got["labels"], want["labels"])
    got = case_slices(multi, "case_001")["images"]  # crop of 24x20 to 16x16: by hand
    np.testing.assert_allclose(got, channels_zscored(big[0][0], (2, 1))[:, 4:20, 2:18], atol=1e-5)


def test_ct_channel_gets_the_window_and_mri_channel_the_zscore(tmp_path):
    vols = []
    for i in range(3):  # channel 0 in HU (-1000 outside the body), channel 1 an MRI
        ct, lesion = helpers.make_volume(np.random.default_rng(i), SHAPE, "ct")
        mri, _ = helpers.make_volume(np.random.default_rng(10 + i), SHAPE)
        vols.append((np.stack([ct.astype(np.float32), mri], -1), lesion))
    root = helpers.write_msd(str(tmp_path / "msd"), vols, modality={"0": "CT", "1": "MRI"})
    splits = load(
        data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3), modality="all"), tmp_path / "auto"
    )
    image = vols[0][0].astype(np.float64)
    got = case_slices(splits, "case_000")["images"]
    np.testing.assert_allclose(got[..., 0], axial((np.clip(image[..., 0], -160, 240) + 160) / 400))
    np.testing.assert_allclose(got[..., 1], axial(zscore(image[..., 1])), atol=1e-5)
    config = data_config(
        "msd", root, split=(1 / 3, 1 / 3, 1 / 3), modality="all", normalisation="zscore"
    )
    got = case_slices(load(config, tmp_path / "z"), "case_000")["images"]
    np.testing.assert_allclose(got[..., 0], axial(zscore(image[..., 0])), atol=1e-5)


def test_empty_slices_are_those_empty_in_every_channel(tmp_path):
    vols = classes_volumes(3, channels=2)
    for image, _ in vols:
        image[:, :, 0] = 0  # empty in both channels: dropped
        image[:, :, 4, 0] = 0  # empty in channel 0 only: kept
    root = helpers.write_msd(
        str(tmp_path / "msd"), vols, modality={"0": "A", "1": "B"}, labels=MSD_LABELS
    )
    config = data_config(
        "msd", root, split=(1 / 3, 1 / 3, 1 / 3), modality="all", keep_empty_slices=False
    )
    got = case_slices(load(config, tmp_path), "case_002")
    np.testing.assert_array_equal(got["slice_index"], [1, 2, 3, 4, 5])
    np.testing.assert_allclose(got["images"], channels_zscored(vols[2][0], (0, 1))[1:], atol=1e-5)


def test_channel_errors(tmp_path):
    vols = classes_volumes(3, channels=2)
    root = helpers.write_msd(
        str(tmp_path / "msd"), vols, modality={"0": "A", "1": "B", "2": "C"}, labels=MSD_LABELS
    )
    with pytest.raises(DataError, match=r"case_00\d.nii.gz: 4D image with 2 channels"):
        load(data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3)), tmp_path / "a")
    with pytest.raises(DataError, match=r"modality channel 2 out of range for a 4D image"):
        load(data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3), modality="a,c"), tmp_path / "b")
    for bad, match in (("a,a", "listed twice"), ("a,,b", "separated by commas"), ("a,x", "'x'")):
        with pytest.raises(ValueError, match=f"config field data.modality: .*{match}"):
            load(
                data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3), modality=bad), tmp_path / "c"
            )


# ----------------------------------------------------------------------------- classes


@pytest.mark.parametrize(
    "classes, groups, names",
    [
        ("1,2,4", ((1,), (2,), (4,)), ("necrosis", "edema", "enhancing")),
        ("1+4,2", ((1, 4), (2,)), ("necrosis+enhancing", "edema")),
        ("all", ((1,), (2,), (4,)), ("necrosis", "edema", "enhancing")),
        ("4 + 1", ((4, 1),), ("enhancing+necrosis",)),  # one class: the binary target
    ],
)
def test_msd_classes_from_the_label_map(tmp_path, classes, groups, names):
    vols = classes_volumes(3, channels=1)
    vols = [(image[..., 0], label) for image, label in vols]
    root = write_quirky_msd(str(tmp_path / "msd"), vols, labels=MSD_LABELS)
    background = "2" if len(groups) == 1 else ""  # the value no class takes
    config = data_config(
        "msd", root, split=(1 / 3, 1 / 3, 1 / 3), classes=classes, background_values=background
    )
    splits = load(config, tmp_path)
    assert splits.train.class_names == names and splits.train.num_classes == len(groups)
    assert splits.source.class_label_values() == groups
    for i, (image, label) in enumerate(vols):
        got = case_slices(splits, f"case_{i:03d}")
        np.testing.assert_array_equal(got["labels"], axial(class_index(label, groups)))
        np.testing.assert_allclose(got["images"], axial(zscore(image)), atol=1e-5)
    labels = np.concatenate([np.asarray(p.labels) for p in (splits.train, splits.val, splits.test)])
    assert set(np.unique(labels).tolist()) == set(range(len(groups) + 1))  # every class present


def test_value_outside_the_classes_is_an_error_unless_background(tmp_path):
    vols = [(image[..., 0], label) for image, label in classes_volumes(3, channels=1)]
    root = helpers.write_msd(str(tmp_path / "msd"), vols, labels=MSD_LABELS)
    with pytest.raises(DataError) as info:
        load(data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3), classes="1,2"), tmp_path / "a")
    message = str(info.value)
    assert os.path.join(root, "labelsTr", "case_00") in message, message
    assert "unexpected label values [4]" in message and "background_values" in message, message
    config = data_config(
        "msd", root, split=(1 / 3, 1 / 3, 1 / 3), classes="1,2", background_values="4"
    )
    splits = load(config, tmp_path / "b")
    assert splits.train.class_names == ("necrosis", "edema")
    for i, (_, label) in enumerate(vols):
        got = case_slices(splits, f"case_{i:03d}")["labels"]
        np.testing.assert_array_equal(got, axial(class_index(label, ((1,), (2,)))))
    # The label map is checked too: a value outside it stays an error with classes.
    label = vols[0][1].copy()
    label[0, 0, 0] = 7
    nib.save(
        nib.Nifti1Image(label, helpers.affine_for()), os.path.join(root, "labelsTr", "x.nii.gz")
    )
    shutil.copy(
        os.path.join(root, "labelsTr", "x.nii.gz"),
        os.path.join(root, "labelsTr", "case_000.nii.gz"),
    )
    with pytest.raises(DataError, match=r"case_000.nii.gz: unexpected label values \[7\]"):
        load(config, tmp_path / "c")


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"classes": "1,x"}, "config field data.classes: expected comma-separated classes"),
        ({"classes": "1,,2"}, "config field data.classes: expected comma-separated classes"),
        ({"classes": "1.5"}, "config field data.classes: expected comma-separated classes"),
        ({"classes": "0,1"}, "config field data.classes: 0 is the background"),
        ({"classes": "1+2,2"}, "config field data.classes: label value 2 is in two classes"),
        ({"classes": "1,3"}, "config field data.classes: label value 3 is not among the labels"),
        ({"classes": "1,2", "background_values": "2"}, "config field data.background_values"),
        ({"classes": "1", "background_values": "x"}, "config field data.background_values"),
        ({"background_values": "4"}, "config field data.background_values: only used with"),
        ({"classes": "1,2", "label_values": (1,)}, "config field data.label_values"),
        ({"synthetic__kind": "ternary"}, "config field data.synthetic.kind"),
    ],
)
def test_bad_class_fields_name_the_field(tmp_path, fields, match):
    vols = [(image[..., 0], label) for image, label in classes_volumes(3, channels=1)]
    root = helpers.write_msd(str(tmp_path / "msd"), vols, labels=MSD_LABELS)
    with pytest.raises(ValueError, match=match):
        load(data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3), **fields), tmp_path)


def test_all_classes_need_a_label_map(tmp_path):
    vols = [(image[..., 0], label) for image, label in classes_volumes(3, channels=1)]
    helpers.write_paired(str(tmp_path / "p"), vols)
    config = data_config("paired", tmp_path / "p", split=(1 / 3, 1 / 3, 1 / 3), classes="all")
    with pytest.raises(ValueError, match="config field data.classes: 'all' needs the dataset's"):
        load(config, tmp_path)


# ----------------------------------------------------------------------------- BraTS, paired


def test_brats_modality_list_and_target_classes(tmp_path):
    vols = [(image[..., 0], label) for image, label in classes_volumes(3, channels=1)]
    # Stored flipped with anisotropic spacing: every file of a case shares the affine.
    affine = helpers.affine_for((1.0, 1.0, 2.5)) @ helpers.flip_xz(SHAPE)
    flipped = [(helpers.stored_as(i, "flip_xz"), helpers.stored_as(s, "flip_xz")) for i, s in vols]
    ids = helpers.write_brats(str(tmp_path / "brats"), {"LGG": flipped}, affine=affine)
    fields = {"split": (1 / 3, 1 / 3, 1 / 3), "brats__grades": "LGG", "brats__target": "classes"}
    for modality, order in (
        ("flair,t1,t1ce,t2", (0, 1, 2, 3)),
        ("all", (0, 1, 2, 3)),
        ("t2,flair", (3, 0)),
    ):
        config = data_config("brats", tmp_path / "brats", brats__modality=modality, **fields)
        splits = load(config, tmp_path / modality.replace(",", "_"))
        assert splits.train.class_names == ("necrotic_core", "edema", "enhancing")
        assert splits.train.channel_names == tuple(helpers.BRATS_MODALITIES[k] for k in order)
        for i, case in enumerate(ids["LGG"]):
            image, seg = vols[i]
            got = case_slices(splits, case)
            expected = np.stack(
                [axial(zscore(helpers.brats_modality(image, k))) for k in order], axis=-1
            )
            np.testing.assert_allclose(got["images"], expected, atol=1e-4)
            np.testing.assert_array_equal(
                got["labels"], axial(class_index(seg, ((1,), (2,), (4,))))
            )
            assert set(np.unique(got["labels"]).tolist()) == {0, 1, 2, 3}
    # Regrouped classes, and the single-modality binary path as before.
    config = data_config("brats", tmp_path / "brats", classes="1+4,2", **fields)
    splits = load(config, tmp_path / "regrouped")
    assert splits.train.class_names == ("necrotic_core+enhancing", "edema")
    assert splits.train.channels == 1 and splits.train.channel_names == ("flair",)
    with pytest.raises(ValueError, match="config field data.classes: BraTS classes need"):
        load(data_config("brats", tmp_path / "brats", classes="1", brats__grades="LGG"), tmp_path)
    with pytest.raises(ValueError, match="config field data.brats.modality"):
        load(data_config("brats", tmp_path / "brats", brats__modality="flair,dwi"), tmp_path)


def test_brats_every_channel_file_is_checked(tmp_path):
    vols = [(i[..., 0], s) for i, s in classes_volumes(3, channels=1)]
    ids = helpers.write_brats(str(tmp_path / "brats"), {"LGG": vols})
    case = ids["LGG"][1]
    t1ce = os.path.join(tmp_path / "brats", "LGG", case, f"{case}_t1ce.nii.gz")
    nib.save(nib.Nifti1Image(vols[1][0], helpers.affine_for((1.0, 1.0, 3.0))), t1ce)
    config = data_config(
        "brats",
        tmp_path / "brats",
        split=(1 / 3, 1 / 3, 1 / 3),
        brats__grades="LGG",
        brats__modality="all",
    )
    with pytest.raises(DataError, match="t1ce.nii.gz: image affine differs from the first"):
        load(config, tmp_path / "a")
    nib.save(nib.Nifti1Image(vols[1][0][:, :, :5], helpers.affine_for((1.0, 1.0, 1.0))), t1ce)
    with pytest.raises(DataError, match=r"t1ce.nii.gz: image shape \(16, 16, 5\) differs"):
        load(config, tmp_path / "b")
    # The single-modality path never opens the other files.
    config.brats.modality = "flair"
    assert load(config, tmp_path / "c").train.channels == 1


def test_paired_4d_images_with_classes(tmp_path):
    vols = classes_volumes(3, channels=3)
    vols = [(image, np.where(label == 4, 3, label).astype(np.uint8)) for image, label in vols]
    affines = [helpers.affine_for((0.8, 0.8, 2.0)) @ helpers.swap_xy()] * 3
    stored = [(helpers.stored_as(i, "swap_xy"), helpers.stored_as(s, "swap_xy")) for i, s in vols]
    names = helpers.write_paired(str(tmp_path / "p"), stored, affines=affines)
    config = data_config(
        "paired", tmp_path / "p", split=(1 / 3, 1 / 3, 1 / 3), modality="2,0", classes="2,1+3"
    )
    splits = load(config, tmp_path / "a")
    assert splits.train.channel_names == ("channel_2", "channel_0")
    assert splits.train.class_names == ("label_2", "label_1+label_3")
    for name, (image, label) in zip(names, vols, strict=True):
        got = case_slices(splits, name)
        np.testing.assert_allclose(got["images"], channels_zscored(image, (2, 0)), atol=1e-4)
        np.testing.assert_array_equal(got["labels"], axial(class_index(label, ((2,), (1, 3)))))
    config.modality = "all"
    assert load(config, tmp_path / "b").train.channel_names == (
        "channel_0",
        "channel_1",
        "channel_2",
    )


# ----------------------------------------------------------------------------- cache, synthetic


def test_cache_stores_names_and_reads_back_k_channels(tmp_path, monkeypatch):
    vols = classes_volumes(3, channels=2)
    root = helpers.write_msd(
        str(tmp_path / "msd"), vols, modality={"0": "A", "1": "B"}, labels=MSD_LABELS
    )
    config = data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3), modality="B,A", classes="2,1+4")
    first = load(config, tmp_path)
    with open(tmp_path / "work" / "cache" / first.fingerprint / "meta.json") as f:
        meta = json.load(f)
    assert meta["class_names"] == ["edema", "necrosis+enhancing"]
    assert meta["channel_names"] == ["B", "A"]
    monkeypatch.setattr(nib, "load", lambda *a, **k: pytest.fail("NIfTI read on a warm cache"))
    second = load(config, tmp_path)
    assert isinstance(second.train.images, np.memmap) and second.train.images.shape[1:] == (
        16,
        16,
        2,
    )
    for part in (second.train, second.val, second.test):
        assert part.class_names == ("edema", "necrosis+enhancing") and part.channels == 2
    np.testing.assert_array_equal(second.train.images, first.train.images)
    np.testing.assert_array_equal(second.test.labels, first.test.labels)


def _at_base_commit(path: str) -> types.ModuleType:
    try:
        text = subprocess.run(
            ["git", "-C", REPO, "show", f"{BASE_COMMIT}:{path}"],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"git history with {BASE_COMMIT[:7]} not available")
    module = types.ModuleType(f"base_{path.replace('/', '_')}")
    exec(compile(text, path, "exec"), module.__dict__)
    return module


def old_fingerprint(source_files, root, data_config) -> str:
    """cache.fingerprint as it was before classes and channels (version 1), reimplemented."""
    import hashlib

    h = hashlib.sha256(b"selal-jax slice cache v1;")
    for path in source_files:
        st = os.stat(path)
        h.update(f"{os.path.relpath(path, root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    settings = {
        k: v
        for k, v in data_config.to_dict().items()
        if k not in ("root", "cache_dir", "allow_unlabelled")
    }
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("arg", [None, "smoke", "sweep"])
def test_binary_configs_keep_their_cache_key(tmp_path, arg):
    """The default-valued new fields leave the key as the code before them computed it (on the
    fields the layout reads: issue 12 took the others out of the key)."""
    root = helpers.write_msd(
        str(tmp_path / "msd"), [(i[..., 0], s) for i, s in classes_volumes(2, channels=1)]
    )
    files = sorted(
        os.path.join(root, sub, name)
        for sub in ("imagesTr", "labelsTr")
        for name in os.listdir(os.path.join(root, sub))
    )
    base_cache = _at_base_commit("selal_jax/data/cache.py")
    base_default = _at_base_commit("configs/default.py")
    overrides = [
        {},
        {"layout": "msd", "modality": "1", "label_values": (1, 2)},
        {"layout": "brats", "brats.target": "core", "brats.modality": "t2"},
    ]
    for fields in overrides:
        new, old = default.get_config(arg).data, base_default.get_config(arg).data
        for config in (new, old):
            for key, value in fields.items():
                node, *leaf = key.split(".")
                if leaf:
                    config[node][leaf[0]] = value
                else:
                    config[node] = value
        # The key covers what the layout reads: the old formula with the fields only other
        # layouts read at their defaults (smoke's synthetic sizes on an MSD run are not read).
        for name, (value, readers) in schema.LAYOUT_FIELDS.items():
            node, *leaf = name.split(".")
            if old.layout not in readers and leaf and leaf[0] in old[node]:
                old[node][leaf[0]] = value
            elif old.layout not in readers and not leaf:
                old[node] = value
        expected = base_cache.fingerprint(files, root, old)
        # The key of sizes and mtimes, under which such caches and runs are still found (the
        # key itself hashes the files' contents since issue 24).
        assert cache.legacy_fingerprint(files, root, new) == expected
        assert old_fingerprint(files, root, old) == expected  # the formula, reimplemented
    # A new field away from its default is part of the key.
    config = default.get_config(arg).data
    keys = {cache.fingerprint(files, root, config)}
    for field, value in (
        ("classes", "1"),
        ("background_values", "3"),
        ("synthetic.kind", "multiclass"),
    ):
        changed = default.get_config(arg).data
        node, *leaf = field.split(".")
        if leaf:
            changed[node][leaf[0]] = value
        else:
            changed[node] = value
        keys.add(cache.fingerprint(files, root, changed))
    assert len(keys) == 4


def test_binary_synthetic_cohort_is_the_same_files(tmp_path):
    base = _at_base_commit("selal_jax/data/synthetic.py")
    a = base.write_cohort(str(tmp_path / "old"), 3, (20, 18, 6), 4, (1.0, 1.0, 2.0))
    b = synthetic.write_cohort(str(tmp_path / "new"), 3, (20, 18, 6), 4, (1.0, 1.0, 2.0))
    with open(os.path.join(a, "dataset.json")) as f, open(os.path.join(b, "dataset.json")) as g:
        assert f.read() == g.read()
    for sub in ("imagesTr", "labelsTr"):
        names = sorted(os.listdir(os.path.join(a, sub)))
        assert names == sorted(os.listdir(os.path.join(b, sub)))
        for name in names:
            old, new = nib.load(os.path.join(a, sub, name)), nib.load(os.path.join(b, sub, name))
            np.testing.assert_array_equal(np.asarray(old.dataobj), np.asarray(new.dataobj))
            assert old.header.binaryblock == new.header.binaryblock


def test_multiclass_synthetic_cohort(tmp_path):
    config = data_config("synthetic", tmp_path / "cohort", size=(64, 64), split=(0.5, 0.25, 0.25))
    config.synthetic.kind = "multiclass"
    config.synthetic.n_subjects = 4
    config.synthetic.shape = (64, 64, 16)
    splits = load(config, tmp_path)
    for part in (splits.train, splits.val, splits.test):
        assert part.channels == 2 and part.num_classes == 2
        assert part.class_names == ("halo", "core") and part.channel_names == ("MRI_A", "MRI_B")
    with open(tmp_path / "cohort" / "dataset.json") as f:
        meta = json.load(f)
    assert meta["labels"] == {"0": "background", "1": "halo", "2": "core"}
    assert meta["modality"] == {"0": "MRI_A", "1": "MRI_B"}
    images = np.concatenate([np.asarray(p.images) for p in (splits.train, splits.val, splits.test)])
    labels = np.concatenate([np.asarray(p.labels) for p in (splits.train, splits.val, splits.test)])
    halo, core = labels == 1, labels == 2
    assert halo.any() and core.any()
    # Lesion sizes: per positive slice, a halo of several pixels around a core of a few.
    per_slice = [(h.sum(), c.sum()) for h, c in zip(halo, core, strict=True) if c.any()]
    assert 4 <= np.median([c for _, c in per_slice]) <= 60
    assert 20 <= np.median([h for h, _ in per_slice]) <= 250
    # Contrast: the core stands out in channel 0, the halo in channel 1 (z-scored units).
    tissue = (labels == 0) & (images[..., 0] != 0)
    ch0, ch1 = images[..., 0], images[..., 1]
    assert ch0[core].mean() - ch0[halo].mean() > 1.0  # core: bright in channel 0
    assert ch1[halo].mean() - ch0[halo].mean() > 1.0  # halo: brighter in channel 1
    assert ch1[halo].mean() - ch1[tissue].mean() > 2.0 and ch1[core].mean() < ch1[halo].mean()
    # Deterministic from the seed; the binary cohort's folder and files are untouched by it.
    again = synthetic.write_cohort(str(tmp_path / "again"), 4, (64, 64, 16), 0, kind="multiclass")
    for name in ("halo_000.nii.gz", "halo_003.nii.gz"):
        for sub in ("imagesTr", "labelsTr"):
            x = np.asarray(nib.load(os.path.join(again, sub, name)).dataobj)
            y = np.asarray(nib.load(os.path.join(tmp_path / "cohort", sub, name)).dataobj)
            np.testing.assert_array_equal(x, y)
    assert nib.load(os.path.join(again, "imagesTr", "halo_000.nii.gz")).shape == (64, 64, 16, 2)
    # The multiclass data can be read as one class too: the core alone, binary (halo ignored).
    config.classes, config.background_values = "2", "1"
    binary = load(config, tmp_path / "core")
    assert binary.train.class_names == ("core",) and set(np.unique(binary.train.labels)) <= {0, 1}
    with pytest.raises(DataError, match="holds another synthetic cohort"):
        synthetic.write_cohort(str(tmp_path / "cohort"), 4, (64, 64, 16), 0, kind="binary")


def test_source_maps_classes_back_to_label_values(tmp_path):
    vols = [(i[..., 0], s) for i, s in classes_volumes(3, channels=1)]
    root = helpers.write_msd(str(tmp_path / "msd"), vols, labels=MSD_LABELS)
    source = layouts.find_cases(data_config("msd", root, classes="1+4,2"), root)
    assert source.class_values == ((1, 4), (2,)) and source.class_label_values() == ((1, 4), (2,))
    assert source.allowed_labels == (0, 1, 2, 4) and source.num_classes == 2
    source = layouts.find_cases(data_config("msd", root, label_values=(2,)), root)
    assert source.class_values is None and source.class_label_values() == ((2,),)
    assert source.class_names == ("target",) and source.channels == 1
    settings = config_fields.make_settings(
        data_config("msd", root), layouts.find_cases(data_config("msd", root), root)
    )
    assert settings.class_values is None and settings.channel_normalisation is None


def test_label_classes_by_hand_also_for_sparse_values():
    from selal_jax.data import label_maps

    label = np.array([[0, 1, 2], [4, 70000, 1]], np.int64)
    groups = ((1, 70000), (4,))
    allowed = (0, 1, 2, 4, 70000)  # 2 is a background value
    got = label_maps.label_classes(label, "x.nii.gz", groups, allowed)
    np.testing.assert_array_equal(got, [[0, 1, 0], [2, 1, 1]])
    got = label_maps.label_classes(label.astype(np.float64), "x.nii.gz", groups, None)
    np.testing.assert_array_equal(got, [[0, 1, 0], [2, 1, 1]])
    small = np.array([[0, 1, 2], [4, 3, 1]], np.uint8)
    np.testing.assert_array_equal(
        label_maps.label_classes(small, "x.nii.gz", ((1,), (4, 3)), (0, 1, 2, 3, 4)),
        [[0, 1, 0], [2, 2, 1]],
    )
    for bad in (label, small):
        with pytest.raises(DataError, match=r"y.nii.gz: unexpected label values \[2\]"):
            label_maps.label_classes(bad, "y.nii.gz", ((1, 70000, 3), (4,)), (0, 1, 3, 4, 70000))
