"""On-device augmentation of training batches, applied identically to image and mask.

Per slice, each with probability 0.5 and its own key: Gaussian blur (5x5 kernel, sigma drawn in
[0.1, 2.0], image only), horizontal flip, vertical flip, rotation by an angle drawn uniformly in
[-90, 90] degrees (bilinear for images, nearest for masks, reflect padding). Used only in training.
Images of K >= 2 channels ([B, H, W, K]) get one draw per slice, applied to every channel and to
the mask; masks hold class indices, which the nearest-neighbour rotation keeps.
"""

from __future__ import annotations

from typing import NamedTuple

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
    """Rotates [H, W] about its centre; order 1 = bilinear, 0 = nearest; reflect padding.

    Reflect is SciPy's half-sample symmetric mode (d c b a | a b c d); a positive angle equals
    `scipy.ndimage.rotate(image, -degrees, reshape=False, mode="reflect")`.
    """
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


class AugmentParams(NamedTuple):
    """The random choices of one slice's augmentation (scalars, traced under jit/vmap)."""

    blur: Array  # bool: apply the Gaussian blur
    sigma: Array  # float32: blur sigma, pixels
    flip_h: Array  # bool: reverse the width axis
    flip_v: Array  # bool: reverse the height axis
    angle: Array  # float32: rotation angle, radians (0 when the rotation coin says no)


def draw_params(key: Array) -> AugmentParams:
    """Draws one slice's augmentation, each part with probability 0.5 and its own key."""
    keys = jax.random.split(key, 6)
    coin = lambda k: jax.random.bernoulli(k, 0.5)  # noqa: E731
    sigma = jax.random.uniform(keys[5], (), minval=SIGMA_RANGE[0], maxval=SIGMA_RANGE[1])
    angle = jnp.deg2rad(
        jax.random.uniform(keys[4], (), minval=-MAX_ANGLE_DEG, maxval=MAX_ANGLE_DEG)
    )
    return AugmentParams(
        blur=coin(keys[0]),
        sigma=sigma,
        flip_h=coin(keys[1]),
        flip_v=coin(keys[2]),
        angle=jnp.where(coin(keys[3]), angle, 0.0),
    )


def apply_params(params: AugmentParams, image: Array, mask: Array) -> tuple[Array, Array]:
    """Applies one draw to (image [H, W], mask [H, W]); the geometry is the same for both.

    The blur changes the image only; the rotation is bilinear for the image and nearest for
    the mask, so the mask stays binary.
    """
    image = jnp.where(params.blur, gaussian_blur(image, params.sigma), image)
    image = jnp.where(params.flip_h, image[:, ::-1], image)
    mask = jnp.where(params.flip_h, mask[:, ::-1], mask)
    image = jnp.where(params.flip_v, image[::-1, :], image)
    mask = jnp.where(params.flip_v, mask[::-1, :], mask)
    image = rotate(image.astype(jnp.float32), params.angle, order=1)
    mask = rotate(mask.astype(jnp.float32), params.angle, order=0).astype(mask.dtype)
    return image, mask


def augment_pair(key: Array, image: Array, mask: Array) -> tuple[Array, Array]:
    """Random augmentation of one (image [H, W], mask [H, W]) pair."""
    return apply_params(draw_params(key), image, mask)


def augment_channels(key: Array, image: Array, mask: Array) -> tuple[Array, Array]:
    """Random augmentation of one (image [H, W, K], mask [H, W]) pair: one draw for all.

    Each channel goes through `apply_params` as a one-channel image would (vmapped over the
    channel axis), so channel k of the result is the [H, W] augmentation of channel k.
    """
    params = draw_params(key)
    images = jax.vmap(lambda channel: apply_params(params, channel, mask)[0], in_axes=-1)(image)
    _, mask = apply_params(params, image[..., 0], mask)
    return jnp.moveaxis(images, 0, -1), mask


def augment_batch(key: Array, images: Array, masks: Array) -> tuple[Array, Array]:
    """Augments [batch, H, W] (or [batch, H, W, K]) images and [batch, H, W] masks.

    One key per slice; with K channels the slice's draw is applied to each channel.
    """
    keys = jax.random.split(key, images.shape[0])
    if images.ndim == 4:
        return jax.vmap(augment_channels)(keys, images, masks)
    return jax.vmap(augment_pair)(keys, images, masks)
