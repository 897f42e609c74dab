"""NRRD volumes read like their NIfTI twins; Slicer segmentations placed on the image grid."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from selal_jax.base.errors import DataError
from selal_jax.data import cases, layouts, loading, preprocess, reading, volumes
from tests import helpers
from tests.test_data import case_slices, data_config

SHAPE = (10, 8, 5)


def oblique_affine() -> np.ndarray:
    """Anisotropic spacing (0.7, 1.3, 2.5 mm), axes permuted and flipped, an offset origin."""
    ras = helpers.affine_for((0.7, 1.3, 2.5))
    ras[:3, 3] = (-12.5, 30.0, 7.25)
    permute_flip = np.array([[0, -1, 0, 7], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    return ras @ permute_flip


AFFINES = {"diagonal": helpers.affine_for((0.5, 0.9, 3.0)), "oblique": oblique_affine()}


@pytest.mark.parametrize("space", ["LPS", "RAS", "left-posterior-superior"])
@pytest.mark.parametrize("affine_name", sorted(AFFINES))
@pytest.mark.parametrize("detached", [False, True])
def test_nrrd_loads_like_its_nifti_twin(tmp_path, space, affine_name, detached):
    affine = AFFINES[affine_name]
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    label = (image > 0.5).astype(np.uint8)
    nifti = helpers.write_nifti(str(tmp_path / "a.nii.gz"), image, affine)
    suffix = ".nhdr" if detached else ".nrrd"
    path = helpers.write_nrrd(str(tmp_path / f"a{suffix}"), image, affine, space, detached=detached)
    lab_path = helpers.write_nrrd(str(tmp_path / "l.nrrd"), label, affine, space)
    twin, got = nib.load(nifti), reading.load_nifti(path)
    np.testing.assert_allclose(got.affine, twin.affine, atol=1e-6)
    assert got.shape == twin.shape and got.get_data_dtype() == twin.get_data_dtype()
    assert got.dataobj._data is None  # the header alone: no voxels read yet
    data, img = reading.read_canonical(path, "image", None, as_float=True)
    twin_data, twin_img = reading.read_canonical(nifti, "image", None, as_float=True)
    np.testing.assert_array_equal(data, twin_data)
    np.testing.assert_allclose(img.affine, twin_img.affine, atol=1e-6)
    lab, _ = reading.read_canonical(lab_path, "label", None, as_float=False)
    np.testing.assert_array_equal(lab, nib.as_closest_canonical(nib.load(nifti)).get_fdata() > 0.5)
    assert lab.dtype == np.uint8
    case = cases.CaseFiles("a", path, lab_path)
    assert preprocess.check_header(case) == SHAPE


def test_nrrd_4d_channels_load_like_a_4d_nifti(tmp_path):
    affine = AFFINES["oblique"]
    image = np.random.default_rng(1).normal(size=(*SHAPE, 3)).astype(np.float32)
    nifti = helpers.write_nifti(str(tmp_path / "a.nii.gz"), image, affine)
    path = helpers.write_nrrd(str(tmp_path / "a.nrrd"), image, affine, channel_axis=0)
    got = reading.load_nifti(path)
    assert got.shape == (*SHAPE, 3)
    sources = ((path, 2), (path, 0))
    twins = ((nifti, 2), (nifti, 0))
    data, img = reading.read_canonical_channels(sources)
    twin, twin_img = reading.read_canonical_channels(twins)
    np.testing.assert_array_equal(data, twin)
    np.testing.assert_allclose(img.affine, twin_img.affine, atol=1e-6)
    one, _ = reading.read_canonical(path, "image", 1, as_float=True)
    np.testing.assert_array_equal(one, reading.read_canonical(nifti, "image", 1, True)[0])


@pytest.mark.parametrize("layout", ["msd", "paired", "brats"])
def test_layouts_read_nrrd_cases_as_their_nifti_twins(tmp_path, layout):
    vols = [helpers.make_volume(np.random.default_rng([5, i]), SHAPE) for i in range(6)]
    affine = AFFINES["oblique"]

    def write(root: str, ext: str) -> str:
        for i, (image, label) in enumerate(vols):
            for what, array in (("image", image), ("label", label)):
                if layout == "msd":
                    path = os.path.join(root, f"{what}sTr", f"case_{i}{ext}")
                elif layout == "paired":
                    path = os.path.join(root, f"{what}s", f"case_{i}{ext}")
                else:
                    kind = "flair" if what == "image" else "seg"
                    path = os.path.join(root, "LGG", f"c{i}", f"c{i}_{kind}{ext}")
                if ext == ".nrrd":
                    helpers.write_nrrd(path, array, affine)
                else:
                    helpers.write_nifti(path, array, affine)
        if layout == "msd":
            training = [
                {"image": f"imagesTr/case_{i}{ext}", "label": f"labelsTr/case_{i}{ext}"}
                for i in range(len(vols))
            ]
            with open(os.path.join(root, "dataset.json"), "w") as f:
                import json

                json.dump(
                    {
                        "modality": {"0": "MRI"},
                        "labels": {"0": "bg", "1": "x"},
                        "training": training,
                    },
                    f,
                )
        return root

    fields = {"brats__grades": "LGG"} if layout == "brats" else {}
    loaded = {}
    for ext in (".nii.gz", ".nrrd"):
        root = write(str(tmp_path / ext.strip(".")), ext)
        config = data_config(layout, root, size=(8, 10), split=(0.5, 0.25, 0.25), **fields)
        loaded[ext] = loading.load_dataset(config, str(tmp_path / f"work{ext}"))
    a, b = loaded[".nii.gz"], loaded[".nrrd"]
    assert a.train.cases == b.train.cases
    for case in a.train.cases:
        x, y = case_slices(a, case), case_slices(b, case)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_strip_extension_and_layout_helpers():
    assert volumes.strip_extension("c.seg.nrrd") == "c" and volumes.strip_extension("c.nhdr") == "c"
    assert layouts.strip_nifti("a.b.nii.gz") == "a.b" and layouts.is_nifti("x.nrrd")
    assert not layouts.is_nifti("._x.nrrd") and not layouts.is_nifti("x.raw.gz")


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"space": "scanner-xyz"}, "field 'space' is 'scanner-xyz'"),
        ({"space": None}, "field 'space' missing"),
        ({"space directions": None}, "field 'space directions' missing"),
        ({"type": "block"}, "field 'type'"),
    ],
)
def test_nrrd_without_anatomical_geometry_is_refused(tmp_path, fields, match):
    path = str(tmp_path / "bad.nrrd")
    helpers.write_nrrd(path, np.zeros(SHAPE, np.float32), np.eye(4))
    text = open(path, "rb").read()
    head, sep, body = text.partition(b"\n\n")
    lines = head.decode().split("\n")
    for key, value in fields.items():
        lines = [ln for ln in lines if not ln.startswith(f"{key}:")]
        if value is not None:
            lines.append(f"{key}: {value}")
    with open(path, "wb") as f:
        f.write("\n".join(lines).encode() + sep + body)
    with pytest.raises(DataError, match=match) as e:
        preprocess.check_header(cases.CaseFiles("bad", path, None))
    assert path in str(e.value)


def test_missing_and_corrupt_nrrd_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        reading.load_nifti(str(tmp_path / "none.nrrd"))
    path = str(tmp_path / "short.nrrd")
    helpers.write_nrrd(path, np.ones(SHAPE, np.float32), np.eye(4))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 20)
    with pytest.raises(DataError, match="short.nrrd: cannot read NRRD image voxels"):
        reading.read_canonical(path, "image", None, as_float=True)


# ------------------------------------------------------------------ Slicer segmentations


@pytest.mark.parametrize("layers", [None, {1: 0, 2: 1}])
def test_seg_nrrd_with_a_cropped_extent_is_its_nifti_label_map(tmp_path, layers):
    affine = AFFINES["oblique"]
    label = np.zeros(SHAPE, np.uint8)
    label[2:5, 3:6, 1:3] = 1
    label[6:8, 1:3, 3] = 2
    path = helpers.write_seg_nrrd(str(tmp_path / "c.seg.nrrd"), label, affine, layers)
    assert nib.load(helpers.write_nifti(str(tmp_path / "c.nii.gz"), label, affine)).shape == SHAPE
    assert reading.load_nifti(path).shape[:3] != SHAPE  # cropped
    image = volumes.load_segmentation(path, SHAPE, affine)
    np.testing.assert_array_equal(np.asarray(image.dataobj), label)
    np.testing.assert_allclose(image.affine, affine)


def test_seg_nrrd_refusals(tmp_path):
    affine = AFFINES["diagonal"]
    label = np.zeros(SHAPE, np.uint8)
    label[2:5, 3:6, 1:3] = 1
    path = helpers.write_seg_nrrd(str(tmp_path / "c.seg.nrrd"), label, affine)
    with pytest.raises(DataError, match="axes or spacing differ"):
        volumes.load_segmentation(path, SHAPE, helpers.affine_for((1, 1, 1)))
    shifted = affine.copy()
    shifted[:3, 3] += (0.2, 0, 0)
    with pytest.raises(DataError, match="'space origin' does not fall on a voxel"):
        volumes.load_segmentation(path, SHAPE, shifted)
    with pytest.raises(DataError, match="outside the source image's grid"):
        volumes.load_segmentation(path, (3, 8, 5), affine)
    # Two layers whose segments overlap with different values cannot be one label map.
    data = np.zeros((*SHAPE, 2), np.uint8)
    data[2:5, 3:6, 1:3, 0] = 1
    data[4:6, 3:6, 1:3, 1] = 2
    extra = {
        "Segment0_LabelValue": "1",
        "Segment0_Layer": "0",
        "Segment1_LabelValue": "2",
        "Segment1_Layer": "1",
    }
    path = helpers.write_nrrd(
        str(tmp_path / "o.seg.nrrd"), data, affine, channel_axis=0, extra=extra
    )
    with pytest.raises(DataError, match=r"o.seg.nrrd: segment 1 \(label value 2\) overlaps"):
        volumes.load_segmentation(path, SHAPE, affine)
