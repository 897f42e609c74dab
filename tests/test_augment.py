"""On-device augmentation: image and mask stay aligned; flips and rotations match NumPy/SciPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from selal_jax.core import augment
from tests.helpers import REPO

# Jitted once per shape: op-by-op dispatch of the eager functions is slow on CPU.
apply_params = jax.jit(augment.apply_params)
augment_batch = jax.jit(augment.augment_batch)
H, W, N = 32, 40, 64  # test slice shape, batch size


def l_shape(h: int = H, w: int = W) -> np.ndarray:
    """An off-centre L: no flip or rotation of it equals itself."""
    mask = np.zeros((h, w), np.uint8)
    mask[6:24, 8:14] = 1
    mask[18:24, 8:30] = 1
    return mask


def params(blur=False, sigma=1.0, flip_h=False, flip_v=False, degrees=0.0):
    return augment.AugmentParams(
        jnp.asarray(blur),
        jnp.asarray(sigma, jnp.float32),
        jnp.asarray(flip_h),
        jnp.asarray(flip_v),
        jnp.deg2rad(jnp.asarray(degrees, jnp.float32)),
    )


@pytest.mark.parametrize("flip_h, flip_v", [(True, False), (False, True), (True, True)])
def test_flips_are_exact_and_shared(flip_h, flip_v):
    image = np.random.default_rng(0).random((32, 40)).astype(np.float32)
    mask = l_shape()
    out_image, out_mask = apply_params(
        params(flip_h=flip_h, flip_v=flip_v), jnp.asarray(image), jnp.asarray(mask)
    )
    axes = tuple(a for a, f in ((0, flip_v), (1, flip_h)) if f)
    np.testing.assert_array_equal(np.asarray(out_image), np.flip(image, axes))
    np.testing.assert_array_equal(np.asarray(out_mask), np.flip(mask, axes))
    assert out_mask.dtype == jnp.uint8


def test_identity_draw_changes_nothing():
    image = np.random.default_rng(1).random((32, 40)).astype(np.float32)
    out_image, out_mask = apply_params(params(), jnp.asarray(image), jnp.asarray(l_shape()))
    np.testing.assert_array_equal(np.asarray(out_image), image)
    np.testing.assert_array_equal(np.asarray(out_mask), l_shape())


@pytest.mark.parametrize("degrees, k", [(90.0, -1), (-90.0, 1)])
def test_quarter_turns_match_rot90(degrees, k):
    image = np.random.default_rng(2).random((H, H)).astype(np.float32)
    mask = l_shape(H, H)
    out_image, out_mask = apply_params(
        params(degrees=degrees), jnp.asarray(image), jnp.asarray(mask)
    )
    np.testing.assert_allclose(np.asarray(out_image), np.rot90(image, k), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out_mask), np.rot90(mask, k))


def test_rotation_matches_scipy_bilinear_reflect():
    image = np.random.default_rng(3).random((20, 26)).astype(np.float32)
    out = augment.rotate(jnp.asarray(image), jnp.deg2rad(37.0), order=1)
    expected = ndimage.rotate(image, -37.0, reshape=False, order=1, mode="reflect")
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
    # Reflect padding: the corners, which come from outside the image, are not zero.
    assert np.all(np.asarray(out)[[0, 0, -1, -1], [0, -1, 0, -1]] > 0)


def test_blur_is_a_normalised_gaussian_on_the_image_only():
    image = np.zeros((H, W), np.float32)
    image[10, 20] = 1.0
    mask = (image > 0).astype(np.uint8)
    out_image, out_mask = apply_params(
        params(blur=True, sigma=1.0), jnp.asarray(image), jnp.asarray(mask)
    )
    g = np.exp(-(np.arange(-2, 3) ** 2) / 2.0)
    g /= g.sum()
    expected = np.zeros_like(image)
    expected[8:13, 18:23] = np.outer(g, g)
    np.testing.assert_allclose(np.asarray(out_image), expected, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out_mask), mask)


def test_random_augmentations_keep_image_and_mask_aligned():
    """Augment a mask-shaped image with its mask: they agree except at interpolation edges."""
    mask = l_shape()
    image = mask.astype(np.float32)
    images = jnp.broadcast_to(image, (N, *image.shape))
    masks = jnp.broadcast_to(mask, (N, *mask.shape))

    @jax.jit
    def augment_and_draws(key, images, masks):
        draws = jax.vmap(augment.draw_params)(jax.random.split(key, N))
        return augment.augment_batch(key, images, masks), draws

    (out_images, out_masks), drawn = augment_and_draws(jax.random.key(0), images, masks)
    out_images, out_masks = np.asarray(out_images), np.asarray(out_masks)
    assert out_masks.dtype == np.uint8 and set(np.unique(out_masks)) <= {0, 1}
    assert len({a.tobytes() for a in out_masks}) > 16  # the draws really differ
    flip_h, flip_v, angle = (np.asarray(a) for a in (drawn.flip_h, drawn.flip_v, drawn.angle))
    moved = 0
    for i in range(N):
        thresholded = out_images[i] > 0.5
        # Edges: within 2 pixels of the mask's boundary (bilinear vs nearest, blur of a corner).
        edge = ndimage.binary_dilation(out_masks[i], iterations=2) & ~ndimage.binary_erosion(
            out_masks[i], iterations=2
        )
        mismatch = thresholded != out_masks[i].astype(bool)
        assert not np.any(mismatch & ~edge), f"slice {i}: misaligned away from the edges"
        assert mismatch.sum() <= 0.25 * edge.sum()
        if flip_h[i] or flip_v[i] or abs(angle[i]) > np.deg2rad(20):
            # Control: the untransformed mask disagrees with the image away from the edges,
            # so a mask left behind by the geometry would fail the check above.
            moved += 1
            assert np.any((thresholded != mask.astype(bool)) & ~edge)
    assert moved > 40


def test_same_key_same_augmentation_and_keys_per_slice():
    image = np.random.default_rng(4).random((H, W)).astype(np.float32)
    images = jnp.broadcast_to(image, (N, H, W))
    masks = jnp.broadcast_to(l_shape(), (N, H, W))
    a = augment_batch(jax.random.key(7), images, masks)
    b = augment_batch(jax.random.key(7), images, masks)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
    assert not np.array_equal(np.asarray(a[0][0]), np.asarray(a[0][1]))  # one key per slice


def test_channels_share_the_draw_and_one_channel_is_unchanged():
    """[B, H, W, K] images: each channel gets exactly the [B, H, W] augmentation of it, with the
    same mask; [B, H, W] results equal those of the code before channels (git history)."""
    import subprocess
    import types

    rng = np.random.default_rng(5)
    x = rng.random((N, H, W)).astype(np.float32)
    y = rng.random((N, H, W)).astype(np.float32)
    masks = jnp.asarray(np.broadcast_to(l_shape(), (N, H, W)) * np.uint8(3))  # class index 3
    key = jax.random.key(11)
    one_x = augment_batch(key, jnp.asarray(x), masks)
    one_y = augment_batch(key, jnp.asarray(y), masks)
    both = augment_batch(key, jnp.stack([jnp.asarray(x), jnp.asarray(x)], -1), masks)
    mixed = augment_batch(key, jnp.stack([jnp.asarray(x), jnp.asarray(y)], -1), masks)
    assert both[0].shape == (N, H, W, 2) and both[1].shape == (N, H, W)
    for k in range(2):
        np.testing.assert_array_equal(np.asarray(both[0][..., k]), np.asarray(one_x[0]))
    np.testing.assert_array_equal(np.asarray(mixed[0][..., 1]), np.asarray(one_y[0]))
    np.testing.assert_array_equal(np.asarray(both[1]), np.asarray(one_x[1]))
    assert set(np.unique(np.asarray(both[1])).tolist()) == {0, 3}  # nearest keeps the index

    base = "11706038e9027739bf47ebf4c33f709625249bc5"  # before channels
    try:
        text = subprocess.run(
            ["git", "-C", REPO, "show", f"{base}:selal_jax/augment.py"],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git history not available")
    old = types.ModuleType("old_augment")
    exec(compile(text, "old_augment.py", "exec"), old.__dict__)
    before = jax.jit(old.augment_batch)(key, jnp.asarray(x), masks)
    np.testing.assert_array_equal(np.asarray(one_x[0]), np.asarray(before[0]))
    np.testing.assert_array_equal(np.asarray(one_x[1]), np.asarray(before[1]))
