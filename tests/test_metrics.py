"""selal_jax.core.metrics against hand-worked cases and a brute-force reference (no distance transform)."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from selal_jax.core import metrics
from tests.helpers import REPO

# ---- brute-force reference, written independently of selal_jax.core.metrics ----


def brute_boundary(mask):
    """Foreground voxels with a face neighbour (+-1 along one axis) that is background or outside."""
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, 1, constant_values=False)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    boundary = np.zeros_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            neighbour = np.roll(padded, step, axis=axis)[inner]
            boundary |= mask & ~neighbour
    return boundary


def brute_distances(from_mask, to_mask, spacing):
    """For each boundary voxel of from_mask, the min over all pairs of boundary voxels of to_mask."""
    a = np.argwhere(brute_boundary(from_mask)) * np.asarray(spacing, float)
    b = np.argwhere(brute_boundary(to_mask)) * np.asarray(spacing, float)
    pairwise = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return pairwise.min(axis=1)


def brute_metrics(pred, ref, spacing, tolerance_mm=1.0):
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    d_pr = brute_distances(pred, ref, spacing)
    d_rp = brute_distances(ref, pred, spacing)
    return {
        "dice": 2 * int((pred & ref).sum()) / (int(pred.sum()) + int(ref.sum())),
        "hd95": max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)),
        "nsd": ((d_pr <= tolerance_mm).sum() + (d_rp <= tolerance_mm).sum())
        / (d_pr.size + d_rp.size),
        "volume_pred": pred.sum() * np.prod(spacing),
        "volume_ref": ref.sum() * np.prod(spacing),
    }


def assert_matches_brute(got, pred, ref, spacing, tolerance_mm=1.0):
    want = brute_metrics(pred, ref, spacing, tolerance_mm)
    assert got["dice"] == want["dice"]
    np.testing.assert_allclose(got["hd95"], want["hd95"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["nsd"], want["nsd"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(got["volume_pred"], want["volume_pred"], rtol=1e-12)
    np.testing.assert_allclose(got["volume_ref"], want["volume_ref"], rtol=1e-12)


def random_mask(rng, shape, smooth):
    """A blobby random mask: smoothed noise thresholded at a random level."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), smooth)
    return noise > rng.uniform(-0.5, 0.5) * noise.std()


# ---- the reference's boundary is SciPy's erosion boundary ----


@pytest.mark.parametrize("ndim", [2, 3])
def test_default_structure_is_face_cross_and_boundaries_agree(ndim):
    cross = ndimage.generate_binary_structure(ndim, 1)
    assert cross.sum() == 2 * ndim + 1  # centre plus the face neighbours
    rng = np.random.default_rng(ndim)
    for _ in range(5):
        mask = rng.random((7,) * ndim) < 0.6
        np.testing.assert_array_equal(
            ndimage.binary_erosion(mask), ndimage.binary_erosion(mask, structure=cross)
        )
        np.testing.assert_array_equal(metrics._boundary(mask), brute_boundary(mask))


def test_boundary_includes_array_edge():
    # A full 3x3 mask: erosion with border_value 0 keeps only the centre, so 8 boundary pixels.
    full = np.ones((3, 3), bool)
    assert metrics._boundary(full).sum() == 8
    got = metrics.case_metrics(full, full, (1.0, 1.0))
    assert got == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0, "volume_pred": 9.0, "volume_ref": 9.0}


# ---- hand-worked cases ----


def two_squares():
    # P = rows 1-3, cols 1-3; R = rows 1-3, cols 2-4 of a 6x6 grid (one pixel apart along cols).
    pred = np.zeros((6, 6), bool)
    ref = np.zeros((6, 6), bool)
    pred[1:4, 1:4] = True
    ref[1:4, 2:5] = True
    return pred, ref


def test_two_squares_offset_by_one_pixel():
    # |P| = |R| = 9, |P & R| = 3 x 2 = 6, so dice = 12 / 18 = 2/3.
    # Each boundary = the 8 non-centre pixels. P -> R: (1,2), (1,3), (3,2), (3,3) lie on R's
    # boundary (0); (1,1), (2,1), (3,1) are 1 from R's left column; (2,3) is R's centre, 1 from
    # (1,3). So P -> R = [0,0,0,0,1,1,1,1], and R -> P is the mirror image.
    # 95th percentile: position 0.95 * 7 = 6.65 between sorted[6] = 1 and sorted[7] = 1 -> 1.
    # NSD at 1 mm: all 16 within -> 1; at 0.5 mm: the 8 zeros -> 0.5.
    pred, ref = two_squares()
    got = metrics.case_metrics(pred, ref, (1.0, 1.0))
    assert got["dice"] == 2 / 3
    assert got["hd95"] == 1.0
    assert got["nsd"] == 1.0
    assert got["volume_pred"] == got["volume_ref"] == 9.0
    assert metrics.case_metrics(pred, ref, (1, 1), tolerance_mm=0.5)["nsd"] == 0.5
    assert_matches_brute(got, pred, ref, (1.0, 1.0))


def test_two_squares_anisotropic_2d():
    # Spacing (1, 2): rows 1 mm apart, columns 2 mm. P -> R: the three col-1 pixels are 2 mm from
    # R's left column; (2,3) is 1 mm from (1,3) (rows) but 2 mm from (2,2), (2,4): 1 mm.
    # So P -> R = [0,0,0,0,1,2,2,2]; 95th: between sorted[6] = 2 and sorted[7] = 2 -> 2 mm.
    # R -> P mirrors it. NSD at 1 mm: 5 + 5 of 16 = 0.625. Volumes 9 x 2 = 18 mm^2.
    pred, ref = two_squares()
    got = metrics.case_metrics(pred, ref, (1.0, 2.0))
    assert got["dice"] == 2 / 3
    np.testing.assert_allclose(got["hd95"], 2.0, rtol=0, atol=1e-12)
    assert got["nsd"] == 0.625
    assert got["volume_pred"] == got["volume_ref"] == 18.0
    assert_matches_brute(got, pred, ref, (1.0, 2.0))


def test_single_voxel_vs_cube_anisotropic_3d():
    # P = the centre voxel (2,2,2) of a 5^3 grid, R = the 3^3 cube around it; spacing (1, 1, 3).
    # dice = 2 * 1 / (1 + 27) = 1/14. P's boundary is its one voxel; R's is the 26 non-centre.
    # P -> R: nearest face neighbour along axis 0 or 1: 1 mm -> [1].
    # R -> P: offset (d0, d1, d2) in {-1,0,1}^3 \ 0 is sqrt(d0^2 + d1^2 + 9 d2^2) mm away:
    #   d2 = 0: 4 at 1, 4 at sqrt 2; d2 = +-1: 2 at 3, 8 at sqrt 10, 8 at sqrt 11.
    # Sorted 26 values; 95th: position 0.95 * 25 = 23.75, sorted[23] = sorted[24] = sqrt 11.
    # hd95 = max(1, sqrt 11) = sqrt 11. NSD at 1 mm: (1 + 4) / 27; at 1.5 mm: (1 + 8) / 27.
    pred = np.zeros((5, 5, 5), bool)
    ref = np.zeros((5, 5, 5), bool)
    pred[2, 2, 2] = True
    ref[1:4, 1:4, 1:4] = True
    spacing = (1.0, 1.0, 3.0)
    got = metrics.case_metrics(pred, ref, spacing)
    assert got["dice"] == 2 / 28
    np.testing.assert_allclose(got["hd95"], math.sqrt(11), rtol=0, atol=1e-12)
    assert got["nsd"] == 5 / 27
    assert got["volume_pred"] == 3.0
    assert got["volume_ref"] == 81.0
    assert metrics.case_metrics(pred, ref, spacing, tolerance_mm=1.5)["nsd"] == 9 / 27
    assert_matches_brute(got, pred, ref, spacing)


def test_percentile_interpolates_linearly():
    # A 1x5 strip R and its first pixel P: every pixel of a one-row array is on the array edge,
    # so all 5 are boundary. R -> P = [0,1,2,3,4]; 95th at position 0.95 * 4 = 3.8 -> 3.8.
    # P -> R = [0]. dice = 2 / 6. NSD at 1 mm: (1 + 2) / 6 = 0.5.
    ref = np.ones((1, 5), bool)
    pred = np.zeros((1, 5), bool)
    pred[0, 0] = True
    got = metrics.case_metrics(pred, ref, (1.0, 1.0))
    assert got["dice"] == 2 / 6
    np.testing.assert_allclose(got["hd95"], 3.8, rtol=0, atol=1e-12)
    assert got["nsd"] == 0.5
    assert_matches_brute(got, pred, ref, (1.0, 1.0))


# ---- empty masks (BraTS convention) ----


@pytest.mark.parametrize(
    "shape, spacing",
    [((4, 5, 6), (1.0, 2.0, 3.0)), ((240, 240, 155), (1.0, 1.0, 1.0)), ((7, 9), (0.5, 2.0))],
)
def test_empty_masks(shape, spacing):
    empty = np.zeros(shape, bool)
    blob = np.zeros(shape, bool)
    blob[(slice(1, 3),) * len(shape)] = True
    voxel = float(np.prod(spacing))
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True)))

    both = metrics.case_metrics(empty, empty, spacing)
    assert both == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0, "volume_pred": 0.0, "volume_ref": 0.0}

    missed = metrics.case_metrics(empty, blob, spacing)
    spurious = metrics.case_metrics(blob, empty, spacing)
    for got in (missed, spurious):
        assert got["dice"] == 0.0
        assert got["nsd"] == 0.0
        np.testing.assert_allclose(got["hd95"], diagonal, rtol=1e-12)
    n_blob = 2 ** len(shape)
    assert missed["volume_pred"] == 0.0 and missed["volume_ref"] == n_blob * voxel
    assert spurious["volume_pred"] == n_blob * voxel and spurious["volume_ref"] == 0.0


def test_brats_diagonal():
    # BraTS's 373.13 mm: the diagonal of its 240 x 240 x 155 grid at 1 mm.
    blob = np.zeros((240, 240, 155), bool)
    blob[0, 0, 0] = True
    got = metrics.case_metrics(blob, np.zeros_like(blob), (1, 1, 1))
    assert round(got["hd95"], 2) == 373.13


# ---- random masks against the brute force ----


@pytest.mark.parametrize("seed", range(6))
def test_random_2d_vs_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    shape = (int(rng.integers(10, 24)), int(rng.integers(10, 24)))
    pred = random_mask(rng, shape, smooth=float(rng.uniform(0.7, 2.0)))
    ref = random_mask(rng, shape, smooth=float(rng.uniform(0.7, 2.0)))
    spacing = tuple(float(s) for s in rng.uniform(0.3, 3.0, size=2))
    tolerance = float(rng.uniform(0.0, 3.0))
    got = metrics.case_metrics(pred, ref, spacing, tolerance_mm=tolerance)
    assert_matches_brute(got, pred, ref, spacing, tolerance)


@pytest.mark.parametrize("seed", range(6))
def test_random_3d_vs_brute_force(seed):
    rng = np.random.default_rng(200 + seed)
    shape = tuple(int(n) for n in rng.integers(6, 13, size=3))
    pred = random_mask(rng, shape, smooth=float(rng.uniform(0.7, 1.5)))
    ref = random_mask(rng, shape, smooth=float(rng.uniform(0.7, 1.5)))
    spacing = (
        float(rng.uniform(0.5, 1.5)),
        float(rng.uniform(0.5, 1.5)),
        float(rng.uniform(1.5, 5.0)),
    )
    tolerance = float(rng.uniform(0.0, 4.0))
    got = metrics.case_metrics(pred, ref, spacing, tolerance_mm=tolerance)
    assert_matches_brute(got, pred, ref, spacing, tolerance)


def test_tolerance_is_inclusive():
    # NSD counts distances <= tolerance: at exactly the hand-worked 2 mm all of 16 count.
    pred, ref = two_squares()
    assert metrics.case_metrics(pred, ref, (1.0, 2.0), tolerance_mm=2.0)["nsd"] == 1.0
    assert metrics.case_metrics(pred, ref, (1.0, 2.0), tolerance_mm=0.0)["nsd"] == 8 / 16


# ---- input handling ----


def test_integer_masks_nonzero_is_foreground():
    pred, ref = two_squares()
    want = metrics.case_metrics(pred, ref, (1.0, 2.0))
    assert metrics.case_metrics(pred.astype(np.uint8), ref.astype(np.int64), (1, 2)) == want
    assert metrics.case_metrics(pred * np.int16(255), ref * np.int32(-3), [1, 2]) == want


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(prediction=np.zeros((4, 4), bool), reference=np.zeros((4, 5), bool)),
            "prediction, reference: expected the same shape",
        ),
        (
            dict(prediction=np.zeros((4,), bool), reference=np.zeros((4,), bool), spacing=(1,)),
            "prediction: expected a 2D or 3D",
        ),
        (
            dict(
                prediction=np.zeros((2, 2, 2, 2), bool),
                reference=np.zeros((2, 2, 2, 2), bool),
                spacing=(1,) * 4,
            ),
            "prediction: expected a 2D or 3D",
        ),
        (
            dict(prediction=np.zeros((4, 4), np.float32)),
            "prediction: expected a bool or integer mask",
        ),
        (
            dict(reference=np.zeros((4, 4), np.float64)),
            "reference: expected a bool or integer mask",
        ),
        (dict(spacing=(1.0, 1.0, 1.0)), "spacing: expected one value per axis"),
        (dict(spacing=(1.0,)), "spacing: expected one value per axis"),
        (dict(spacing=(1.0, 0.0)), "spacing: expected positive finite"),
        (dict(spacing=(1.0, -2.0)), "spacing: expected positive finite"),
        (dict(spacing=(1.0, float("nan"))), "spacing: expected positive finite"),
        (dict(spacing=(1.0, float("inf"))), "spacing: expected positive finite"),
        (dict(spacing=("a", "b")), "spacing: expected 2 numbers"),
        (dict(tolerance_mm=-0.1), "tolerance_mm: expected a value >= 0"),
        (dict(tolerance_mm=float("nan")), "tolerance_mm: expected a value >= 0"),
    ],
)
def test_invalid_inputs(kwargs, match):
    args = dict(
        prediction=np.zeros((4, 4), bool), reference=np.zeros((4, 4), bool), spacing=(1.0, 1.0)
    )
    args.update(kwargs)
    tolerance = args.pop("tolerance_mm", 1.0)
    with pytest.raises(ValueError, match=match):
        metrics.case_metrics(**args, tolerance_mm=tolerance)


# ---- multi-class ----


def test_multiclass_matches_per_class_case_metrics():
    rng = np.random.default_rng(7)
    shape = (6, 9, 8)
    pred = rng.integers(0, 3, size=shape).astype(np.uint8)
    ref = rng.integers(0, 3, size=shape).astype(np.int16)
    spacing = (1.0, 0.8, 2.5)
    got = metrics.multiclass_case_metrics(pred, ref, spacing, (2, 1, 5), tolerance_mm=1.5)
    assert list(got) == [2, 1, 5]
    for c in (1, 2):
        assert got[c] == metrics.case_metrics(pred == c, ref == c, spacing, tolerance_mm=1.5)
        assert_matches_brute(got[c], pred == c, ref == c, spacing, 1.5)
    # Class 5 is in neither map: the both-empty convention.
    assert got[5] == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0, "volume_pred": 0.0, "volume_ref": 0.0}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(prediction=np.zeros((4, 4), np.float32)),
            "prediction: expected an integer label map",
        ),
        (dict(class_ids=(1, 1)), "class_ids: expected distinct"),
        (dict(class_ids=(1, 2.0)), "class_ids: expected integers"),
        (dict(reference=np.zeros((5, 4), np.int32)), "expected the same shape"),
        (dict(spacing=(1.0, 1.0, 1.0)), "spacing: expected one value per axis"),
    ],
)
def test_multiclass_invalid_inputs(kwargs, match):
    args = dict(
        prediction=np.zeros((4, 4), np.int32),
        reference=np.zeros((4, 4), np.int32),
        spacing=(1.0, 1.0),
        class_ids=(1, 2),
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        metrics.multiclass_case_metrics(**args)


# ---- no JAX ----


def _python(code):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )


def test_import_does_not_import_jax():
    result = _python(
        "import sys, selal_jax.core.metrics; assert 'jax' not in sys.modules, 'jax imported'"
    )
    assert result.returncode == 0, result.stderr


def test_package_attribute_stays_available_lazily():
    # selal_jax/__init__.py resolves select_from_probs on first use (it needs JAX).
    result = _python(
        "import sys, selal_jax; assert 'jax' not in sys.modules; "
        "from selal_jax import select_from_probs; from selal_jax.core.selection import select_from_probs as f; "
        "assert select_from_probs is f; assert 'jax' in sys.modules"
    )
    assert result.returncode == 0, result.stderr
