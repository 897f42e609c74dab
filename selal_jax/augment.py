"""On-device augmentation of training batches, applied identically to image and mask.

Per slice, each with probability 0.5 and its own key: Gaussian blur (5x5 kernel, sigma drawn in
[0.1, 2.0], image only), horizontal flip, vertical flip, rotation by an angle drawn uniformly in
[-90, 90] degrees (bilinear for images, nearest for masks, reflect padding). Used only in training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

BLUR_SIZE = 5
SIGMA_RANGE = (0.1, 2.0)
MAX_ANGLE_DEG = 90.0


def gaussian_blur(image: Array, sigma: Array) -> Array:
    """[H, W] image blurred with a normalised 5x5 Gaussian (reflect padding)."""
    r = BLUR_SIZE // 2
    x = jnp.arange(-r, r + 1, dtype=jnp.float32)
    k1 = jnp.exp(-(x**2) / (2 * sigma**2))
    k1 = k1 / k1.sum()
    padded = jnp.pad(image, r, mode="reflect")
    out = jax.scipy.signal.convolve2d(padded, jnp.outer(k1, k1), mode="valid")
    return out.astype(image.dtype)


def rotate(image: Array, angle_rad: Array, order: int) -> Array:
    """Rotates [H, W] about its centre; order 1 = bilinear, 0 = nearest; reflect padding."""
    h, w = image.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    cos, sin = jnp.cos(angle_rad), jnp.sin(angle_rad)
    # Inverse mapping: output pixel -> source coordinate.
    src_y = cos * (yy - cy) - sin * (xx - cx) + cy
    src_x = sin * (yy - cy) + cos * (xx - cx) + cx
    return jax.scipy.ndimage.map_coordinates(image, [src_y, src_x], order=order, mode="reflect")


def augment_pair(key: Array, image: Array, mask: Array) -> tuple[Array, Array]:
    """Random augmentation of one (image [H, W], mask [H, W]) pair."""
    keys = jax.random.split(key, 6)
    coin = lambda k: jax.random.bernoulli(k, 0.5)  # noqa: E731
    sigma = jax.random.uniform(keys[5], (), minval=SIGMA_RANGE[0], maxval=SIGMA_RANGE[1])
    image = jnp.where(coin(keys[0]), gaussian_blur(image, sigma), image)
    flip_h, flip_v = coin(keys[1]), coin(keys[2])
    image = jnp.where(flip_h, image[:, ::-1], image)
    mask = jnp.where(flip_h, mask[:, ::-1], mask)
    image = jnp.where(flip_v, image[::-1, :], image)
    mask = jnp.where(flip_v, mask[::-1, :], mask)
    angle = jnp.deg2rad(
        jax.random.uniform(keys[4], (), minval=-MAX_ANGLE_DEG, maxval=MAX_ANGLE_DEG)
    )
    angle = jnp.where(coin(keys[3]), angle, 0.0)
    image = rotate(image.astype(jnp.float32), angle, order=1)
    mask = rotate(mask.astype(jnp.float32), angle, order=0).astype(mask.dtype)
    return image, mask


def augment_batch(key: Array, images: Array, masks: Array) -> tuple[Array, Array]:
    """Augments [batch, H, W] images and masks, one key per slice."""
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(augment_pair)(keys, images, masks)
