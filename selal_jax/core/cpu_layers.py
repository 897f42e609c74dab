"""The CPU path's layers (`UNet.conv_impl` "custom"): the same parameters and outputs as Flax's
layers to float32 rounding, computed in forms that XLA:CPU runs faster.

Measured on two cores, published U-Net, batch 16 at 64x64 (one process, alternated):
- the 2x2 stride-2 transposed convolutions are matmuls over the 2x2 output blocks, forward
  (`_upconv_matmul`: 15 vs 30 ms for the four) and backward (`upconv_2x2`: forward + backward
  105 vs 1,053 ms as XLA derives them);
- the 2x2 max-poolings keep XLA's forward and get an element-wise backward pass
  (`max_pool_2x2`, 24 vs 80 ms);
- `Conv3x3` takes its input in parts (the decoder's skip apart from the upsampled input: run
  once per slice in Monte-Carlo passes; no concatenation in the scoring program) or, for a
  few-channel image, as nine shifted products (`conv3x3_taps`, the scoring program's first
  layer).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv_transpose_2x2(x: Array, kernel: Array) -> Array:
    """What Flax's nn.ConvTranspose(kernel (2, 2), strides (2, 2), padding 'SAME') computes."""
    return jax.lax.conv_transpose(x, kernel, (2, 2), "SAME", dimension_numbers=_NHWC)


def _upconv_matmul(x: Array, kernel: Array) -> Array:
    """`_conv_transpose_2x2` as one matmul to each input pixel's four output pixels and an
    interleave. XLA:CPU runs the transposed convolution as an input-dilated convolution, twice
    as slow (the four of the U-Net, batch 16: 30 vs 15 ms; batch 160, the Monte-Carlo passes':
    413 vs 226 ms). Equal to float32 rounding: bit-identical on those benchmarks' random inputs,
    within 5e-7 in the published U-Net's inference logits."""
    n, h, w, ci = x.shape
    co = kernel.shape[-1]
    flipped = kernel[::-1, ::-1]  # flipped[a, b] multiplies x[i, j] into y[2i + a, 2j + b]
    blocks = x.reshape(-1, ci) @ jnp.transpose(flipped, (2, 0, 1, 3)).reshape(ci, 4 * co)
    blocks = blocks.reshape(n, h, w, 2, 2, co)
    return jnp.transpose(blocks, (0, 1, 3, 2, 4, 5)).reshape(n, 2 * h, 2 * w, co)


@jax.custom_vjp
def upconv_2x2(x: Array, kernel: Array) -> Array:
    """2x2 stride-2 transposed convolution without bias: x [n, h, w, ci], kernel [2, 2, ci, co]
    -> [n, 2h, 2w, co], with y[2i + a, 2j + b] = x[i, j] @ kernel[1 - a, 1 - b].

    Forward and backward passes are matmuls over the 2x2 output blocks (`_upconv_matmul`),
    which XLA:CPU runs 2x (forward) and about ten times (backward) faster than the
    convolutions it derives from nn.ConvTranspose.
    """
    return _upconv_matmul(x, kernel)


def _upconv_fwd(x, kernel):
    return _upconv_matmul(x, kernel), (x, kernel)


def _upconv_bwd(residuals, g):
    x, kernel = residuals
    n, h, w, _ = x.shape
    blocks = g.reshape(n, h, 2, w, 2, g.shape[-1])  # [n, i, a, j, b, co]
    flipped = kernel[::-1, ::-1]  # flipped[a, b] multiplies x[i, j] into y[2i + a, 2j + b]
    dx = jnp.einsum("niajbo,abco->nijc", blocks, flipped)
    dkernel = jnp.einsum("nijc,niajbo->abco", x, blocks)[::-1, ::-1]
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


upconv_2x2.defvjp(_upconv_fwd, _upconv_bwd)


def xla_max_pool_2x2(x: Array) -> Array:
    """2x2 stride-2 max-pooling as Flax computes it (XLA's reduce_window and its gradient)."""
    return nn.max_pool(x, (2, 2), strides=(2, 2))


@jax.custom_vjp
def max_pool_2x2(x: Array) -> Array:
    """2x2 stride-2 max-pooling, x [n, h, w, c] -> [n, h/2, w/2, c] (XLA's reduce_window).

    Backward: the gradient goes to the first maximum of each window in row-major order, as
    XLA's select-and-scatter gives it, but as element-wise operations on the 2x2 blocks
    (select-and-scatter is slow on XLA:CPU).
    """
    return xla_max_pool_2x2(x)


def _max_pool_fwd(x):
    y = xla_max_pool_2x2(x)
    return y, (x, y)


def _max_pool_bwd(residuals, g):
    x, y = residuals
    n, h, w, c = x.shape
    blocks = x.reshape(n, h // 2, 2, w // 2, 2, c)
    taken = jnp.zeros(y.shape, bool)
    rows = []
    for a in range(2):
        row = []
        for b in range(2):
            first = (blocks[:, :, a, :, b, :] == y) & ~taken
            taken = taken | first
            row.append(jnp.where(first, g, jnp.zeros_like(g)))
        rows.append(jnp.stack(row, axis=3))  # [n, i, j, b, c]
    dx = jnp.stack(rows, axis=2)  # [n, i, a, j, b, c]
    return (dx.reshape(x.shape),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


class UpConv(nn.ConvTranspose):
    """nn.ConvTranspose (2x2, stride 2, with bias; its parameters and initialisers) whose
    'custom' implementation differentiates through `upconv_2x2`."""

    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        if self.conv_impl == "xla":
            return super().__call__(inputs)
        if tuple(self.kernel_size) != (2, 2) or tuple(self.strides) != (2, 2):
            raise ValueError(f"UpConv: the custom path is 2x2 stride 2, got {self.kernel_size}")
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (2, 2, inputs.shape[-1], self.features),
            self.param_dtype,
        )
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        return upconv_2x2(inputs, kernel) + bias


class Conv3x3(nn.Conv):
    """nn.Conv (its parameters and initialiser) that also takes its input in parts: a tuple of
    arrays whose channels, concatenated in order, are the input. Each part is then convolved
    with its slice of the kernel and the results summed, which equals the convolution of the
    concatenation to float32 rounding. Under vmap a part that is not batched stays unbatched, so
    in Monte-Carlo passes the decoder's skip connection (the same in every pass) is convolved
    once per slice instead of once per pass (`UNet.decode`).

    `taps=True` computes the convolution of an input of at most `MAX_TAPS_CHANNELS` channels as
    `conv3x3_taps` (equal to float32 rounding; the scoring program's first layer)."""

    @nn.compact
    def __call__(self, inputs, taps: bool = False) -> Array:
        if not (isinstance(inputs, tuple) or taps):
            return super().__call__(inputs)
        if self.use_bias or self.strides not in (1, (1, 1)) or self.padding != "SAME":
            raise ValueError("Conv3x3: parts or taps only without bias, stride 1, 'SAME'")
        parts = inputs if isinstance(inputs, tuple) else (inputs,)
        channels = [part.shape[-1] for part in parts]
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (*self.kernel_size, sum(channels), self.features),
            self.param_dtype,
        )
        *parts, kernel = nn.dtypes.promote_dtype(*parts, kernel, dtype=self.dtype)
        if taps:
            if len(parts) != 1 or channels[0] > MAX_TAPS_CHANNELS:
                raise ValueError(
                    f"Conv3x3: taps take one input of at most {MAX_TAPS_CHANNELS} channels, "
                    f"got {channels}"
                )
            return conv3x3_taps(parts[0], kernel)
        starts = [sum(channels[:i]) for i in range(len(channels))]
        convolved = [
            jax.lax.conv_general_dilated(
                part,
                kernel[:, :, start : start + c],
                (1, 1),
                "SAME",
                dimension_numbers=_NHWC,
                precision=self.precision,
            )
            for part, start, c in zip(parts, starts, channels, strict=True)
        ]
        return functools.reduce(jnp.add, convolved)


# Input channels up to which the scoring program's first convolution runs as `conv3x3_taps`.
MAX_TAPS_CHANNELS = 4


def conv3x3_taps(x: Array, kernel: Array) -> Array:
    """3x3 'SAME' convolution, stride 1, as the sum of 9 x C shifted copies of the input times a
    kernel row: x [n, h, w, C], kernel [3, 3, C, co] -> [n, h, w, co]. For a few input channels
    XLA:CPU fuses it into one element-wise loop, where its convolution packs a 9 x C patch matrix
    (published U-Net's first layer, 1 -> 32 channels at 64x64, batch 16: 1.5 -> 0.35 ms)."""
    n, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    terms = [
        padded[:, dy : dy + h, dx : dx + w, ci : ci + 1] * kernel[dy, dx, ci]
        for dy in range(3)
        for dx in range(3)
        for ci in range(c)
    ]
    return functools.reduce(jnp.add, terms)
