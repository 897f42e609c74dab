"""The jitted train, eval and predict steps, their losses, the optimizer and the train state, and
the Dice of evaluation terms (`run.fit` holds the fit-until-plateau loop that calls them)."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from selal_jax.base.errors import ConfigError
from selal_jax.core import augment as augment_lib
from selal_jax.core.models import UNet
from selal_jax.core.xla_options import backend_jit

Array = jax.Array


@flax.struct.dataclass
class TrainState:
    """Everything a train step updates. A pytree: checkpointed and donated as a whole."""

    step: Array
    params: Any
    batch_stats: Any
    opt_state: Any

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


@functools.cache
def make_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """Adam. Cached: the jitted steps take the optimizer as a static argument, so the same
    learning rate must give the same (hashable) object, or every run would recompile them."""
    return optax.adam(learning_rate)


def create_train_state(variables: dict, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
    )


LOSSES = ("ce", "ce_dice")
DICE_SMOOTH = 1e-5  # nnU-Net's soft Dice smoothing


def bce_loss(logits: Array, labels: Array) -> Array:
    """Mean binary cross-entropy on logits (float32)."""
    return jnp.mean(
        optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.float32))
    )


def softmax_ce_loss(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy; logits [batch, H, W, L], labels [batch, H, W] class indices."""
    return jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), labels.astype(jnp.int32)
        )
    )


def soft_dice_loss(logits: Array, labels: Array) -> Array:
    """1 - soft Dice, batch-wise and averaged over the foreground classes (nnU-Net's
    `MemoryEfficientSoftDiceLoss` with batch_dice=True, do_bg=False, smooth 1e-5).

    Per class c: (2 sum p_c g_c + s) / (sum p_c + sum g_c + s), sums over the batch and pixels;
    p_c = sigmoid(z) for the binary head [batch, H, W], softmax for [batch, H, W, L].
    """
    logits = logits.astype(jnp.float32)
    if logits.ndim == 3:  # binary head: one foreground class
        probs = jax.nn.sigmoid(logits)[..., None]
        onehot = labels.astype(jnp.float32)[..., None]
    else:
        probs = jax.nn.softmax(logits, axis=-1)[..., 1:]
        onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)[..., 1:]
    axes = (0, 1, 2)
    intersection = jnp.sum(probs * onehot, axis=axes)
    dice = (2 * intersection + DICE_SMOOTH) / (
        jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes) + DICE_SMOOTH
    )
    return 1.0 - jnp.mean(dice)


def segmentation_loss(logits: Array, labels: Array, loss: str = "ce") -> Array:
    """The training loss: 'ce' (BCE for the binary head, the paper's; softmax CE otherwise) or
    'ce_dice' (that plus `soft_dice_loss`, as nnU-Net trains)."""
    ce = bce_loss(logits, labels) if logits.ndim == 3 else softmax_ce_loss(logits, labels)
    if loss == "ce":
        return ce
    if loss == "ce_dice":
        return ce + soft_dice_loss(logits, labels)
    raise ConfigError(f"config field train.loss: expected one of {LOSSES}, got {loss!r}")


@functools.partial(
    backend_jit, static_argnames=("model", "tx", "augment", "loss"), donate_argnames=("state",)
)
def train_step(
    state: TrainState,
    images: Array,
    labels: Array,
    key: Array,
    *,
    model: UNet,
    tx: optax.GradientTransformation,
    augment: bool = False,
    loss: str = "ce",
) -> tuple[TrainState, Array]:
    """One Adam step on `segmentation_loss` (default: BCE for the binary head).

    Args:
      state: donated; do not use it after the call.
      images: [batch, height, width] or [batch, height, width, channels] float32.
      labels: [batch, height, width] class indices ({0, 1} for the binary head).
      key: this step's key (dropout and augmentation).

    Returns:
      (new state, mean loss of the batch).
    """
    dropout_key, augment_key = jax.random.split(key)
    if augment:
        images, labels = augment_lib.augment_batch(augment_key, images, labels)

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            rngs={"dropout": dropout_key},
            mutable=["batch_stats"],
        )
        return segmentation_loss(logits, labels, loss), updates["batch_stats"]

    (value, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, batch_stats, opt_state), value


@functools.partial(backend_jit, static_argnames=("model",))
def eval_batch(variables, images: Array, labels: Array, *, model: UNet) -> dict[str, Array]:
    """Per-slice loss sum and Dice terms (deterministic model).

    Binary head: BCE and the prediction at threshold 0.5. Several classes: softmax CE and the
    argmax prediction, Dice terms per foreground class.

    Returns:
      dict of float32: `bce_sum` (binary) or `ce_sum` (classes) [batch], `pixels` [batch], and
      `intersection`, `pred_sum`, `label_sum`: [batch] (binary) or [batch, C] (class c + 1 in
      column c).
    """
    logits = model.apply(variables, images, False)
    pixels = jnp.full(labels.shape[:1], labels.shape[1] * labels.shape[2], jnp.float32)
    if logits.ndim == 4:
        n_logits = logits.shape[-1]
        pred = jax.nn.one_hot(jnp.argmax(logits, axis=-1), n_logits, dtype=jnp.float32)[..., 1:]
        truth = jax.nn.one_hot(labels, n_logits, dtype=jnp.float32)[..., 1:]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))
        return {
            "ce_sum": jnp.sum(ce, axis=(1, 2)),
            "pixels": pixels,
            "intersection": jnp.sum(pred * truth, axis=(1, 2)),
            "pred_sum": jnp.sum(pred, axis=(1, 2)),
            "label_sum": jnp.sum(truth, axis=(1, 2)),
        }
    labels = labels.astype(jnp.float32)
    pred = (logits > 0).astype(jnp.float32)  # sigmoid(z) > 0.5  <=>  z > 0
    return {
        "bce_sum": jnp.sum(optax.sigmoid_binary_cross_entropy(logits, labels), axis=(1, 2)),
        "pixels": jnp.full(labels.shape[:1], labels.shape[1] * labels.shape[2], jnp.float32),
        "intersection": jnp.sum(pred * labels, axis=(1, 2)),
        "pred_sum": jnp.sum(pred, axis=(1, 2)),
        "label_sum": jnp.sum(labels, axis=(1, 2)),
    }


@functools.partial(jax.jit, static_argnames=("model",))
def predict_batch(variables, images: jax.Array, *, model) -> jax.Array:
    """Images [batch, H, W(, K)] -> [batch, H, W] uint8 class indices of the deterministic
    model: P > 0.5 for the binary head, the argmax class for several classes."""
    logits = model.apply(variables, images, False)
    if logits.ndim == 4:
        return jnp.argmax(logits, axis=-1).astype(jnp.uint8)
    return (logits > 0).astype(jnp.uint8)


def dice_scores(terms: dict[str, np.ndarray], smooth: float = 1e-5) -> tuple[float, float]:
    """(mean per-slice Dice with smoothing, as the published code reports it; global Dice).

    Per slice: (2 |P & G| + s) / (|P| + |G| + s); an empty prediction on an empty slice scores 1.
    Global: 2 sum |P & G| / (sum |P| + sum |G|) over all pixels (1 if both are empty).
    With per-class terms ([N, C]), both are the mean over the C foreground classes of the
    per-class values (`class_dice_scores`).
    """
    if np.ndim(terms["intersection"]) == 2:
        per_slice, per_global = class_dice_scores(terms, smooth)
        return float(np.mean(per_slice)), float(np.mean(per_global))
    inter, p, g = terms["intersection"], terms["pred_sum"], terms["label_sum"]
    per_slice = (2 * inter + smooth) / (p + g + smooth)
    denom = p.sum() + g.sum()
    dice_global = 1.0 if denom == 0 else float(2 * inter.sum() / denom)
    return float(per_slice.mean()), dice_global


def class_dice_scores(
    terms: dict[str, np.ndarray], smooth: float = 1e-5
) -> tuple[np.ndarray, np.ndarray]:
    """Per foreground class: (mean per-slice Dice [C], global Dice [C]), each as `dice_scores`
    defines it for one class. Binary terms ([N]) are one class."""
    inter, p, g = (
        np.asarray(terms[k], np.float64).reshape(len(terms["pixels"]), -1)
        for k in ("intersection", "pred_sum", "label_sum")
    )
    per_slice = ((2 * inter + smooth) / (p + g + smooth)).mean(axis=0)
    denom = p.sum(axis=0) + g.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_global = np.where(denom == 0, 1.0, 2 * inter.sum(axis=0) / np.where(denom, denom, 1))
    return per_slice, per_global


def mean_loss(terms: dict[str, np.ndarray]) -> float:
    """Mean per-pixel validation loss: BCE (binary head) or softmax CE (classes)."""
    loss_sum = terms["bce_sum"] if "bce_sum" in terms else terms["ce_sum"]
    return float(loss_sum.sum() / terms["pixels"].sum())
