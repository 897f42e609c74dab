"""In-plane resampling: anti-aliased images, per-class labels, data.spacing, and their inverse."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from selal_jax.base import schema
from selal_jax.data import cases, config_fields, fitting, label_volumes, loading
from tests import helpers
from tests.test_data import axial, case_slices, data_config, zscore


def bilinear(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """NumPy reference of order-1 resampling with pixel areas aligned (grid_mode) and edge
    values beyond the border: output pixel i samples input position (i + 0.5) * h / H - 0.5."""
    out = np.asarray(plane, np.float64)
    for axis, (n_in, n_out) in enumerate(zip(plane.shape, size, strict=True)):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        t = (pos - lo).reshape([-1 if a == axis else 1 for a in range(2)])
        out = np.take(out, lo, axis=axis) * (1 - t) + np.take(out, hi, axis=axis) * t
    return out


@pytest.mark.parametrize("size", [(16, 12), (16, 40), (37, 29)])
def test_anti_aliased_resize_is_skimage_resize(size):
    skimage_transform = pytest.importorskip("skimage.transform")
    slices = np.random.default_rng(0).normal(size=(3, 37, 29)).astype(np.float32)
    got = fitting.resize_anti_aliased(slices, size)
    assert got.shape == (3, *size) and got.dtype == np.float32
    for plane, out in zip(slices, got, strict=True):
        expected = skimage_transform.resize(
            plane, size, order=1, mode="edge", anti_aliasing=True, preserve_range=True
        )
        np.testing.assert_allclose(out, expected, atol=1e-5)
    # The same as a Gaussian prefilter of sigma (factor - 1) / 2, then the NumPy bilinear.
    sigma = [max(0.0, (a / b - 1) / 2) for a, b in zip((37, 29), size, strict=True)]
    smooth = ndimage.gaussian_filter(slices[0].astype(np.float64), sigma, mode="nearest")
    np.testing.assert_allclose(got[0], bilinear(smooth, size), atol=1e-4)


def test_per_class_label_resampling_is_the_argmax_of_bilinear_one_hot_masks():
    rng = np.random.default_rng(1)
    labels = ndimage.zoom(rng.integers(0, 4, (2, 7, 6)), (1, 5, 5), order=0)  # blobs of 0..3
    for size in ((13, 11), (50, 47)):
        got = fitting.resize_per_class(labels, size)
        for plane, out in zip(labels, got, strict=True):
            weights = np.stack([bilinear(plane == c, size) for c in range(4)])
            expected = np.argmax(weights + 1e-9 * np.arange(4)[::-1, None, None], axis=0)
            np.testing.assert_array_equal(out, expected)
    # Through fit_slices (data.resample=resize_aa) and its inverse.
    fitted = fitting.fit_slices(labels, (13, 11), "resize_aa", is_label=True)
    np.testing.assert_array_equal(fitted, fitting.resize_per_class(labels, (13, 11)))
    back = fitting.unfit_slices(fitted, labels.shape[1:], "resize_aa")
    np.testing.assert_array_equal(back, fitting.resize_per_class(fitted, labels.shape[1:]))


def test_default_resize_is_unchanged():
    """data.resample=resize keeps plain bilinear images and nearest labels (today's slices)."""
    slices = np.random.default_rng(2).normal(size=(2, 20, 30)).astype(np.float32)
    got = fitting.fit_slices(slices, (16, 16), "resize", is_label=False)
    ref = ndimage.zoom(slices, (1, 16 / 20, 16 / 30), order=1, mode="nearest", grid_mode=True)
    np.testing.assert_array_equal(got, ref[:, :16, :16])


def settings(**fields) -> cases.Settings:
    base = {
        "axis": 2,
        "size": (16, 24),
        "resample": "resize",
        "normalisation": "zscore",
        "ct_window": (0.0, 1.0),
        "keep_empty_slices": True,
        "target_values": None,
        "allowed_labels": None,
        "reorient": "canonical",
    }
    return cases.Settings(**{**base, **fields})


def test_spacing_resamples_to_mm_then_crops_or_pads(tmp_path):
    """0.5 mm pixels resampled to 1 mm: half the pixels (40 x 36 -> 20 x 18), then the 20 rows
    cropped to 16 and the 18 columns padded to 24."""
    assert fitting.spacing_shape((40, 36), np.array([0.5, 0.5]), (1.0, 1.0)) == (20, 18)
    vols = [helpers.make_volume(np.random.default_rng([3, i]), (40, 36, 4)) for i in range(3)]
    root = helpers.write_msd(
        str(tmp_path / "msd"), vols, affines=[helpers.affine_for((0.5, 0.5, 2.0))] * 3
    )
    config = data_config(
        "msd", root, size=(16, 24), split=(1 / 3, 1 / 3, 1 / 3), spacing=(1.0, 1.0)
    )
    splits = loading.load_dataset(config, str(tmp_path / "w"))
    image, label = vols[0]
    got = case_slices(splits, "case_000")
    half_image = fitting.resize_anti_aliased(axial(zscore(image)).astype(np.float32), (20, 18))
    half_label = fitting.resize_per_class(axial(label), (20, 18))
    expected_image = np.zeros((4, 16, 24), np.float32)
    expected_image[:, :, 3:21] = half_image[:, 2:18]
    expected_label = np.zeros((4, 16, 24), np.uint8)
    expected_label[:, :, 3:21] = half_label[:, 2:18]
    np.testing.assert_allclose(got["images"], expected_image, atol=1e-5)
    np.testing.assert_array_equal(got["labels"], expected_label)
    assert got["labels"].any()
    # The spacing is part of the cache key; () is not (the key of configs without it).
    assert (
        splits.fingerprint
        != loading.load_dataset(
            data_config("msd", root, size=(16, 24), split=(1 / 3, 1 / 3, 1 / 3)),
            str(tmp_path / "w"),
        ).fingerprint
    )
    with pytest.raises(ValueError, match="config field data.spacing"):
        config_fields.validate_data_config(data_config("msd", root, spacing=(1.0, 0.0)))


@pytest.mark.parametrize("fields", [{"spacing": (1.0, 1.0)}, {"resample": "resize_aa"}])
def test_prefill_inverts_the_fit_and_import_gets_the_masks_back(tmp_path, fields):
    """Export writes masks through unfit_case_slices, import reads them back with the loader's
    fit_case_slices: masks made at the file's resolution come back where the fit is lossless
    (spacing 0.5 mm -> 1 mm is exact for 2x2 blocks), on the canonical slices of every file."""
    s = settings(**fields)
    affine = helpers.affine_for((0.5, 0.5, 2.0))
    shape = (32, 48, 4)
    rng = np.random.default_rng(4)
    path = str(tmp_path / "c.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), affine), path)
    geometry = label_volumes.Geometry.of(cases.CaseFiles("c", path, None), s)
    np.testing.assert_allclose(geometry.canonical_spacing(), [0.5, 0.5, 2.0])
    blocks = ndimage.zoom(rng.integers(0, 3, (2, 16, 24)), (1, 2, 2), order=0).astype(np.uint8)
    spacing = geometry.canonical_spacing()
    masks = fitting.fit_case_slices(blocks, s, spacing, is_label=True)
    volume = label_volumes.prefill_volume(geometry, np.array([0, 3]), masks, np.array([0, 5, 7]))
    planes = np.moveaxis(volume, 2, 0)[[0, 3]]
    back = fitting.fit_case_slices(np.searchsorted([0, 5, 7], planes), s, spacing, True)
    np.testing.assert_array_equal(back, masks)
    if "spacing" in fields:  # 2x2 blocks at 0.5 mm are 1 mm pixels: the round trip is exact
        back = fitting.unfit_case_slices(masks, blocks.shape[1:], s, spacing)
        np.testing.assert_array_equal(back, blocks)
        np.testing.assert_array_equal(planes, np.asarray([0, 5, 7])[blocks])


def test_spacing_off_keeps_the_cache_key_and_the_stored_config_resumes(tmp_path):
    from configs import default
    from selal_jax.data import cache

    config = default.get_config("smoke")
    key = cache.fingerprint([], str(tmp_path), config.data)
    del config.data["spacing"]  # a config from before data.spacing
    assert cache.fingerprint([], str(tmp_path), config.data) == key
    config.data.spacing = []  # as a config read back from a run's JSON holds it
    assert cache.fingerprint([], str(tmp_path), config.data) == key
    stored = schema.flatten(config)
    del stored["data.spacing"]
    assert schema.differences(stored, schema.flatten(default.get_config("smoke"))) == []
