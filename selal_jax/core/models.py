"""The U-Net of the published code, in Flax Linen, with dropout for Monte-Carlo passes.

Architecture (base width 32, depth 4): encoder levels of width 32, 64, 128, 256 and a 512
bottleneck; each block is two 3x3 convolutions without bias, each followed by BatchNorm and ReLU;
2x2 max-pooling down; 2x2 stride-2 transposed convolutions up; skip concatenation; a 1x1 head to
one logit (binary, sigmoid) or to C + 1 logits (C >= 2 foreground classes, softmax, logit 0 =
background). With one input channel and one logit it has exactly 7,762,465 parameters (BatchNorm
running statistics are not parameters, as in PyTorch); each further input channel adds 288
(the first 3x3 convolution: 9 x 32) and each further logit 33 (the 1x1 head: 32 + 1 bias).

Dropout sits only after the bottleneck block and after each decoder block. The encoder is
therefore deterministic, which lets Monte-Carlo scoring compute it once per batch and repeat only
the decoder (see `UNet.encode` / `UNet.decode`).

The CPU path (`UNet.conv_impl` "custom"; "auto", the default, picks it on the CPU backend and
plain Flax/XLA everywhere else). Measured on two cores, published U-Net, batch 16 at 64x64:
- the 2x2 stride-2 transposed convolutions are matmuls over the 2x2 output blocks, forward
  (`_upconv_matmul`: 15 vs 30 ms for the four) and backward (`upconv_2x2`: forward + backward
  105 vs 1,053 ms as XLA derives them); the 2x2 max-poolings keep XLA's forward and get an
  element-wise backward pass (`max_pool_2x2`, 24 vs 80 ms);
- BatchNorm's training statistics have a hand-written backward pass (`selal_jax.batch_norm`;
  train step 0.93 -> 0.85 s);
- dropout draws Flax's masks bit for bit from an unrolled threefry that XLA fuses
  (`selal_jax.dropout`; JAX's CPU lowering of the hash is a rolled loop);
- Monte-Carlo passes convolve each decoder block's skip apart from the upsampled input
  (`Conv3x3`), so the skip's half of the block's first convolution, the same in every pass,
  runs once per slice.
BALD with 10 passes over 16 slices went from 2.48 s to 1.41 s (compile 9.9 -> 7.8 s) in one
process. Parameters (names, shapes, initial values) and dropout masks are the same either way;
outputs, gradients and MC logits equal to float32 rounding (inference logits of the published
U-Net within 5e-7).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from selal_jax.base.errors import ConfigError
from selal_jax.core import batch_norm
from selal_jax.core.dropout import Dropout

Array = jax.Array
# Computation dtypes by config name (model.dtype); parameters always stay float32.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONV_IMPLS = ("auto", "xla", "custom")
_NHWC = ("NHWC", "HWIO", "NHWC")


def resolve_conv_impl(conv_impl: str) -> str:
    """'xla' or 'custom' for a `UNet.conv_impl`: 'auto' is 'custom' on the CPU backend only."""
    if conv_impl not in CONV_IMPLS:
        raise ConfigError(
            f"config field model.conv_impl: expected one of {CONV_IMPLS}, got {conv_impl!r}"
        )
    if conv_impl == "auto":
        return "custom" if jax.default_backend() == "cpu" else "xla"
    return conv_impl


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


def _max_pool_2x2(x: Array) -> Array:
    return nn.max_pool(x, (2, 2), strides=(2, 2))


@jax.custom_vjp
def max_pool_2x2(x: Array) -> Array:
    """2x2 stride-2 max-pooling, x [n, h, w, c] -> [n, h/2, w/2, c] (XLA's reduce_window).

    Backward: the gradient goes to the first maximum of each window in row-major order, as
    XLA's select-and-scatter gives it, but as element-wise operations on the 2x2 blocks
    (select-and-scatter is slow on XLA:CPU).
    """
    return _max_pool_2x2(x)


def _max_pool_fwd(x):
    y = _max_pool_2x2(x)
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
    once per slice instead of once per pass (`UNet.decode`)."""

    @nn.compact
    def __call__(self, inputs) -> Array:
        if not isinstance(inputs, tuple):
            return super().__call__(inputs)
        if self.use_bias or self.strides not in (1, (1, 1)) or self.padding != "SAME":
            raise ValueError("Conv3x3: parts are only taken without bias, stride 1, 'SAME'")
        channels = [part.shape[-1] for part in inputs]
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (*self.kernel_size, sum(channels), self.features),
            self.param_dtype,
        )
        *parts, kernel = nn.dtypes.promote_dtype(*inputs, kernel, dtype=self.dtype)
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


class ConvBlock(nn.Module):
    """Two (3x3 conv without bias -> BatchNorm -> ReLU) layers. The input is an array, or a
    tuple of arrays to be read as their channel concatenation (see Conv3x3). The custom
    implementation's BatchNorm is `selal_jax.batch_norm.BatchNorm`."""

    features: int
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool) -> Array:
        for i in range(2):
            x = Conv3x3(
                self.features,
                (3, 3),
                padding="SAME",
                use_bias=False,
                dtype=self.dtype,
                name=f"Conv_{i}",  # nn.Conv's automatic names: checkpoints keep their paths
            )(x)
            # PyTorch's BatchNorm2d defaults: momentum 0.1 (= Flax 0.9), eps 1e-5.
            norm = nn.BatchNorm if self.conv_impl == "xla" else batch_norm.BatchNorm
            x = norm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)(x)
            x = nn.relu(x)
        return x


class UNet(nn.Module):
    """U-Net producing one foreground logit per pixel, or `num_logits` class logits.

    Attributes:
      base_width: channels of the first encoder level; level i has base_width * 2**i.
      depth: number of encoder levels (pooling steps); the bottleneck has base_width * 2**depth.
      dropout_rate: rate of the dropout after the bottleneck and each decoder block.
      dtype: computation dtype (parameters stay float32; logits are returned as float32).
      head_bias_prior: foreground probability the untrained network predicts: the head bias
        starts at log(prior / (1 - prior)) (RetinaNet's prior init). With a few percent of target
        pixels, a zero bias (prior 0.5) spends hundreds of Adam steps just learning the class
        balance. With several classes every foreground class starts at this probability and
        the background at the rest. It changes no parameter count.
      conv_impl: 'auto' (default: 'custom' on the CPU backend, 'xla' elsewhere), 'xla' (Flax's
        layers as they are) or 'custom' (the CPU path of the module docstring: the same
        parameters and dropout masks, outputs and gradients equal to float32 rounding).
      num_logits: 1 for the binary sigmoid head (logits [..., H, W]); C + 1 >= 3 for C >= 2
        foreground classes (logits [..., H, W, C + 1], class 0 = background). Input channels are
        those of the images (Flax infers them).
    """

    base_width: int = 32
    depth: int = 4
    dropout_rate: float = 0.2
    dtype: Any = jnp.float32
    head_bias_prior: float = 0.5
    num_logits: int = 1
    conv_impl: str = "auto"

    def setup(self):
        impl = resolve_conv_impl(self.conv_impl)
        self._impl = impl
        self._pool = _max_pool_2x2 if impl == "xla" else max_pool_2x2
        widths = [self.base_width * 2**i for i in range(self.depth)]
        self.down = [ConvBlock(w, self.dtype, impl, name=f"down_{i}") for i, w in enumerate(widths)]
        self.bottleneck = ConvBlock(
            self.base_width * 2**self.depth, self.dtype, impl, name="bottleneck"
        )
        self.up_convs = [
            UpConv(w, (2, 2), strides=(2, 2), dtype=self.dtype, conv_impl=impl, name=f"upconv_{i}")
            for i, w in reversed(list(enumerate(widths)))
        ]
        self.up = [
            ConvBlock(w, self.dtype, impl, name=f"up_{i}")
            for i, w in reversed(list(enumerate(widths)))
        ]
        self.head = nn.Conv(
            self.num_logits,
            (1, 1),
            dtype=self.dtype,
            bias_init=head_bias_init(float(self.head_bias_prior), int(self.num_logits)),
            name="head",
        )
        self.dropout = (nn.Dropout if impl == "xla" else Dropout)(self.dropout_rate)

    def encode(self, images: Array, train: bool = False) -> tuple[Array, tuple[Array, ...]]:
        """Deterministic encoder.

        Args:
          images: [batch, height, width] (one channel) or [batch, height, width, channels];
            height and width must be divisible by 2**depth.
          train: BatchNorm uses batch statistics (and updates running ones) when True.

        Returns:
          (bottleneck features [batch, h/2**depth, w/2**depth, C], skips from fine to coarse).
        """
        x = images[..., None] if images.ndim == 3 else images
        x = x.astype(self.dtype)
        skips = []
        for block in self.down:
            x = block(x, train)
            skips.append(x)
            x = self._pool(x)
        return self.bottleneck(x, train), tuple(skips)

    def decode(
        self, bottleneck: Array, skips: tuple[Array, ...], train: bool = False, mc: bool = False
    ) -> Array:
        """Decoder with dropout; returns float32 logits [batch, height, width] (binary) or
        [batch, height, width, num_logits].

        Dropout is active when `train` or `mc` is True (it then needs a 'dropout' rng); BatchNorm
        uses batch statistics only when `train` is True, so Monte-Carlo passes (`mc=True`) keep
        running statistics.
        """
        deterministic = not (train or mc)
        # Monte-Carlo passes on the custom path convolve the skip apart (Conv3x3): vmapped over
        # the passes, its half of each block's first convolution then runs once per slice.
        split = mc and not train and self._impl == "custom"
        x = self.dropout(bottleneck, deterministic=deterministic)
        for upconv, block, skip in zip(self.up_convs, self.up, reversed(skips), strict=True):
            x = upconv(x)
            skip = skip.astype(x.dtype)
            x = block((skip, x) if split else jnp.concatenate([skip, x], axis=-1), train)
            x = self.dropout(x, deterministic=deterministic)
        logits = self.head(x)
        if self.num_logits == 1:
            logits = logits[..., 0]
        return logits.astype(jnp.float32)

    def __call__(self, images: Array, train: bool = False, mc: bool = False) -> Array:
        bottleneck, skips = self.encode(images, train)
        return self.decode(bottleneck, skips, train=train, mc=mc)

    def features(self, images: Array) -> Array:
        """Globally average-pooled bottleneck features [batch, C] (for embeddings/t-SNE)."""
        bottleneck, _ = self.encode(images, False)
        return jnp.mean(bottleneck.astype(jnp.float32), axis=(1, 2))


def head_bias_init(prior: float, num_logits: int):
    """Initial head bias: the log-odds of `prior` (one logit), or log-probabilities
    [log(1 - C prior), log(prior) x C] (C = num_logits - 1 foreground classes)."""
    if not 0 < prior < 1:
        raise ConfigError(f"config field model.head_bias_prior: must be in (0, 1), got {prior}")
    if num_logits == 1:
        return nn.initializers.constant(math.log(prior / (1 - prior)))
    n_fg = num_logits - 1
    if not n_fg * prior < 1:
        raise ConfigError(
            f"config field model.head_bias_prior: {prior} x {n_fg} foreground classes must be "
            "below 1"
        )
    bias = [math.log(1 - n_fg * prior)] + [math.log(prior)] * n_fg

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.asarray(bias, dtype).reshape(shape)

    return init


def num_logits_for(num_classes: int) -> int:
    """Head width for C foreground classes: 1 (sigmoid) for C = 1, else C + 1 (softmax)."""
    if int(num_classes) < 1:
        raise ValueError(f"expected at least one foreground class, got {num_classes}")
    return 1 if int(num_classes) == 1 else int(num_classes) + 1


def build_model(model_config, num_classes: int = 1) -> UNet:
    """Builds the U-Net from the `model` section of a config, for C = `num_classes` foreground
    classes (the data's)."""
    dtype = DTYPES.get(model_config.dtype)
    if dtype is None:
        raise ConfigError(
            f"config field model.dtype: expected 'float32' or 'bfloat16', got {model_config.dtype!r}"
        )
    return UNet(
        base_width=int(model_config.base_width),
        depth=int(model_config.depth),
        dropout_rate=float(model_config.dropout_rate),
        dtype=dtype,
        head_bias_prior=float(model_config.get("head_bias_prior", 0.5)),
        num_logits=num_logits_for(num_classes),
        conv_impl=str(model_config.get("conv_impl", "auto")),
    )


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4))
def _init(model: UNet, key: Array, height: int, width: int, channels: int) -> dict:
    shape = (1, height, width) if channels == 1 else (1, height, width, channels)
    return model.init(key, jnp.zeros(shape, jnp.float32), train=False)


def init_variables(model: UNet, key: Array, height: int, width: int, channels: int = 1) -> dict:
    """Initialises {'params', 'batch_stats'} for inputs of the given in-plane size and channels.

    Jitted (eagerly, every initializer would compile on its own: tens of seconds on CPU) and
    cached per (model, size, channels).
    """
    return dict(_init(model, key, int(height), int(width), int(channels)))


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
