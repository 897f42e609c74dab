"""`launch.py inspect`: the data dry run, checked against the volumes the test writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import default
from selal_jax.base.errors import DataError
from selal_jax.data import loading
from selal_jax.verbs import inspect_data
from tests import helpers
from tests.helpers import REPO

SHAPE = (16, 8, 6)  # canonical X, Y, Z of every case
SPACING = (1.0, 1.5, 3.0)
LABELS = {"0": "background", "1": "necrosis", "2": "edema", "4": "enhancing"}
MODALITY = {"0": "FLAIR", "1": "T1w"}
NAMES = [f"pat{i}" for i in range(7)]
HOWS = [None, "flip_xz", "swap_xy"]  # how case i is stored: HOWS[i % 3]
CODES = {None: "RAS", "flip_xz": "LAI", "swap_xy": "ARS"}
SPLIT = {"train": ["pat0", "pat1", "pat2", "pat4"], "val": ["pat5"], "test": ["pat3"]}  # pat6 out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 2-channel MSD folder of three classes, cases stored RAS, flipped and permuted, and a
    split file leaving pat6 out; returns (root, split file, canonical volumes)."""
    base = tmp_path_factory.mktemp("inspect")
    ras = helpers.affine_for(SPACING)
    vols, stored, affines = [], [], []
    for i in range(len(NAMES)):
        image, label = helpers.make_classes_volume(np.random.default_rng([7, i]), SHAPE, 2)
        vols.append((image, label))
        how = HOWS[i % 3]
        if how is None:
            stored.append((image, label))
            affines.append(ras)
        else:
            stored.append((helpers.stored_as(image, how), helpers.stored_as(label, how)))
            voxel_map = helpers.flip_xz(SHAPE) if how == "flip_xz" else helpers.swap_xy()
            affines.append(ras @ voxel_map)
    root = helpers.write_msd(
        str(base / "msd"), stored, affines, modality=MODALITY, labels=LABELS, names=NAMES
    )
    split_file = str(base / "split.json")
    with open(split_file, "w") as f:
        json.dump(SPLIT, f)
    return root, split_file, vols


OVERRIDES = {"layout": "msd", "size": (16, 8), "modality": "all", "classes": "all"}


def config_for(root, split_file):
    config = default.get_config()
    for key, value in {**OVERRIDES, "root": root, "split_file": split_file}.items():
        config.data[key] = value
    return config


def expected_summary(vols) -> dict:
    """What inspect must say, computed from the canonical volumes by NumPy alone (data.size is
    the in-plane size, so the loaded slices are the volumes' own axial slices)."""
    index = {name: i for i, name in enumerate(NAMES)}
    voxels = {name: {} for name in ("necrosis", "edema", "enhancing", "background")}
    fraction = {}
    for part, cases in SPLIT.items():
        labels = np.stack([vols[index[c]][1] for c in cases])
        for name, value in (("background", 0), ("necrosis", 1), ("edema", 2), ("enhancing", 4)):
            voxels[name][part] = int((labels == value).sum())
        fraction[part] = float((labels > 0).any(axis=(1, 2)).mean())  # per case and z
    for counts in voxels.values():
        counts["total"] = sum(counts.values())
    return {
        "splits": SPLIT,
        "left_out": ["pat6"],
        "n_slices": {part: SHAPE[2] * len(cases) for part, cases in SPLIT.items()},
        "channels": ["FLAIR", "T1w"],
        "classes": [
            {"index": k, "name": name, "label_values": [value], "voxels": voxels[name]}
            for k, (name, value) in enumerate((("necrosis", 1), ("edema", 2), ("enhancing", 4)), 1)
        ],
        "background_voxels": voxels["background"],
        "target_slice_fraction": fraction,
    }


def check(info: dict, vols, root) -> None:
    """Every value of the summary against the written volumes."""
    expected = expected_summary(vols)
    for key, value in expected.items():
        if key == "target_slice_fraction":
            assert info[key].keys() == value.keys()
            for part in value:
                assert info[key][part] == pytest.approx(value[part], abs=1e-12)
        else:
            assert info[key] == value, key
    assert 0 < expected["target_slice_fraction"]["train"] < 1  # not vacuous
    split_of = {c: part for part, cases in SPLIT.items() for c in cases}
    assert [c["case"] for c in info["cases"]] == [n for n in NAMES if n in split_of]
    for case in info["cases"]:
        i = NAMES.index(case["case"])
        how = HOWS[i % 3]
        stored_shape = (SHAPE[1], SHAPE[0], SHAPE[2]) if how == "swap_xy" else SHAPE
        stored_spacing = (SPACING[1], SPACING[0], SPACING[2]) if how == "swap_xy" else SPACING
        assert case["split"] == split_of[case["case"]] and case["labelled"]
        assert case["orientation"] == CODES[how]
        assert case["shape"] == list(stored_shape)
        assert case["spacing"] == pytest.approx(list(stored_spacing))
        assert case["in_plane_size"] == list(SHAPE[:2])  # canonical: the same for every case
        assert case["in_plane_spacing"] == pytest.approx(list(SPACING[:2]))
        assert case["slices_along_axis"] == case["slices"] == SHAPE[2]
        assert case["image"] == os.path.join(root, "imagesTr", f"{case['case']}.nii.gz")
        assert case["label"] == os.path.join(root, "labelsTr", f"{case['case']}.nii.gz")
    d = info["dataset"]
    assert (d["layout"], d["root"], d["reorient"], d["axis"]) == ("msd", root, "canonical", 2)
    assert os.path.isdir(d["cache"]) and d["cache"].endswith(d["fingerprint"])


def test_cli_inspect_json_key_by_key(dataset, tmp_path):
    root, split_file, vols = dataset
    workdir = str(tmp_path / "work")
    flags = [
        f"--config.data.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
        for k, v in OVERRIDES.items()
    ]
    cmd = [
        sys.executable,
        "launch.py",
        "inspect",
        "--config=configs/default.py",
        f"--config.data.root={root}",
        f"--config.data.split_file={split_file}",
        *flags,
        f"--workdir={workdir}",
        "--json",
    ]
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout)  # stdout is the JSON object alone
    check(info, vols, root)
    assert info["dataset"]["workdir"] == workdir
    assert os.path.isdir(os.path.join(workdir, "cache", info["dataset"]["fingerprint"]))
    # The library function gives the same, reading the cache the CLI built.
    config = config_for(root, split_file)
    assert inspect_data.describe(config, workdir) == info
    # Bad data fails with the error a run gives, and nothing goes to stdout.
    bad = str(tmp_path / "bad.json")
    with open(bad, "w") as f:
        json.dump({**SPLIT, "val": ["pat9"]}, f)
    cmd[5] = f"--config.data.split_file={bad}"
    done = subprocess.run(cmd[:-1], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "unknown case 'pat9'" in done.stderr and not done.stdout


def test_describe_and_text(dataset, tmp_path, caplog):
    root, split_file, vols = dataset
    info = inspect_data.describe(config_for(root, split_file), str(tmp_path / "w"))
    check(info, vols, root)
    text = inspect_data.format_text(info)
    assert "channels (2): FLAIR, T1w" in text and "left out by the split file: pat6" in text
    assert "2 edema (label values [2])" in text and "pat2  train  ARS" in text
    # The test split is one case (pat3) with few lesion slices: said at load and in the summary.
    test_label = vols[NAMES.index("pat3")][1]
    with_target = int((test_label > 0).any(axis=(0, 1)).sum())  # axial slices with any class
    assert 0 < with_target < 10
    assert len(info["warnings"]) == 2
    assert info["warnings"][0].startswith("the test metrics rest on one case (pat3)")
    assert info["warnings"][1].startswith(f"the test split has {with_target} slices with target")
    for note in info["warnings"]:
        assert f"warning: {note}" in text and note in caplog.text
    # Same errors as a run: the config check first, then the data checks.
    config = config_for(root, split_file)
    config.train.max_epochs = 0
    with pytest.raises(ValueError, match="config field train.max_epochs"):
        inspect_data.describe(config, str(tmp_path / "w"))
    config = config_for(root, None)
    config.data.split = (1.0, 0.0, 0.0)
    with pytest.raises(DataError, match="leaves val empty"):
        inspect_data.describe(config, str(tmp_path / "w"))


def test_describe_with_reorient_none_reports_the_stored_axes(dataset, tmp_path):
    root, split_file, _ = dataset
    config = config_for(root, split_file)
    config.data.reorient, config.data.size, config.data.resample = "none", (16, 16), "crop"
    info = inspect_data.describe(config, str(tmp_path / "w"))
    for case in info["cases"]:
        assert case["in_plane_size"] == case["shape"][:2]
        assert case["in_plane_spacing"] == pytest.approx(case["spacing"][:2])
    assert {tuple(c["in_plane_size"]) for c in info["cases"]} == {(16, 8), (8, 16)}
    splits = loading.load_dataset(config.data, str(tmp_path / "w"))
    assert info["n_slices"] == {"train": len(splits.train), "val": 6, "test": 6}
