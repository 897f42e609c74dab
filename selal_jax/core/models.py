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
  and backward, and the 2x2 max-poolings get an element-wise backward pass
  (`selal_jax.cpu_layers`, which holds the CPU path's layers and their measurements);
- BatchNorm's training statistics have a hand-written backward pass (`selal_jax.batch_norm`;
  train step 0.93 -> 0.85 s);
- dropout draws Flax's masks bit for bit from an unrolled threefry that XLA fuses
  (`selal_jax.dropout`; JAX's CPU lowering of the hash is a rolled loop);
- Monte-Carlo passes convolve each decoder block's skip apart from the upsampled input
  (`cpu_layers.Conv3x3`), so the skip's half of the block's first convolution, the same in
  every pass, runs once per slice;
- the single-pass scoring program (`UNet.__call__(..., scoring=True)`) convolves the skips
  apart too (no concatenation) and computes the first convolution as nine shifted products
  (`cpu_layers.conv3x3_taps`).
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
from selal_jax.core.cpu_layers import (
    MAX_TAPS_CHANNELS,
    Conv3x3,
    UpConv,
    max_pool_2x2,
    xla_max_pool_2x2,
)
from selal_jax.core.dropout import Dropout

Array = jax.Array
# Computation dtypes by config name (model.dtype); parameters always stay float32.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONV_IMPLS = ("auto", "xla", "custom")


def resolve_conv_impl(conv_impl: str) -> str:
    """'xla' or 'custom' for a `UNet.conv_impl`: 'auto' is 'custom' on the CPU backend only."""
    if conv_impl not in CONV_IMPLS:
        raise ConfigError(
            f"config field model.conv_impl: expected one of {CONV_IMPLS}, got {conv_impl!r}"
        )
    if conv_impl == "auto":
        return "custom" if jax.default_backend() == "cpu" else "xla"
    return conv_impl


class ConvBlock(nn.Module):
    """Two (3x3 conv without bias -> BatchNorm -> ReLU) layers. The input is an array, or a
    tuple of arrays to be read as their channel concatenation (see Conv3x3). The custom
    implementation's BatchNorm is `selal_jax.batch_norm.BatchNorm`."""

    features: int
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x, train: bool, taps: bool = False) -> Array:
        """`taps`: the first convolution as `conv3x3_taps` (see Conv3x3)."""
        for i in range(2):
            x = Conv3x3(
                self.features,
                (3, 3),
                padding="SAME",
                use_bias=False,
                dtype=self.dtype,
                name=f"Conv_{i}",  # nn.Conv's automatic names: checkpoints keep their paths
            )(x, taps=taps and i == 0)
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
        self._pool = xla_max_pool_2x2 if impl == "xla" else max_pool_2x2
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

    def encode(
        self, images: Array, train: bool = False, *, scoring: bool = False
    ) -> tuple[Array, tuple[Array, ...]]:
        """Deterministic encoder.

        Args:
          images: [batch, height, width] (one channel) or [batch, height, width, channels];
            height and width must be divisible by 2**depth.
          train: BatchNorm uses batch statistics (and updates running ones) when True.
          scoring: the single-pass scoring program's layers (see `__call__`).

        Returns:
          (bottleneck features [batch, h/2**depth, w/2**depth, C], skips from fine to coarse).
        """
        x = images[..., None] if images.ndim == 3 else images
        x = x.astype(self.dtype)
        # Scoring on the custom path: the first convolution of a few-channel image as taps.
        taps = self._fast_inference(scoring, train) and x.shape[-1] <= MAX_TAPS_CHANNELS
        skips = []
        for i, block in enumerate(self.down):
            x = block(x, train, taps=taps and i == 0)
            skips.append(x)
            x = self._pool(x)
        return self.bottleneck(x, train), tuple(skips)

    def decode(
        self,
        bottleneck: Array,
        skips: tuple[Array, ...],
        train: bool = False,
        mc: bool = False,
        *,
        scoring: bool = False,
    ) -> Array:
        """Decoder with dropout; returns float32 logits [batch, height, width] (binary) or
        [batch, height, width, num_logits].

        Dropout is active when `train` or `mc` is True (it then needs a 'dropout' rng); BatchNorm
        uses batch statistics only when `train` is True, so Monte-Carlo passes (`mc=True`) keep
        running statistics. `scoring`: the single-pass scoring program's layers (`__call__`).
        """
        deterministic = not (train or mc)
        # The custom path convolves each block's skip apart from the upsampled input (Conv3x3)
        # in Monte-Carlo passes (vmapped over the passes, the skip's half of the convolution then
        # runs once per slice) and in the scoring program (no concatenation).
        split = self._fast_inference(mc or scoring, train)
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

    def __call__(
        self, images: Array, train: bool = False, mc: bool = False, *, scoring: bool = False
    ) -> Array:
        """Logits of `images` (see `encode` and `decode`).

        `scoring=True` (the single-pass scoring program, `scoring.score_batch`) runs, on the
        custom path and outside training, two layers measured faster there, with logits equal
        to float32 rounding: each decoder block's skip convolved apart from the upsampled input
        (no concatenation), and the first convolution of an image of at most
        `MAX_TAPS_CHANNELS` channels as `conv3x3_taps`. Training and evaluation keep the
        concatenation and XLA's convolution, so their numbers do not move.
        """
        bottleneck, skips = self.encode(images, train, scoring=scoring)
        return self.decode(bottleneck, skips, train=train, mc=mc, scoring=scoring)

    def _fast_inference(self, inference_flag: bool, train: bool) -> bool:
        return inference_flag and not train and self._impl == "custom"

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
