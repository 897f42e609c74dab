"""Jitted train/eval steps and the fit-until-plateau routine."""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from selal_jax.base import faults
from selal_jax.base.errors import ConfigError, UserError
from selal_jax.base.progress import Progress
from selal_jax.core import augment as augment_lib
from selal_jax.core import parallel, rng
from selal_jax.core.models import UNet
from selal_jax.core.xla_options import backend_jit
from selal_jax.data.slices import SliceSet

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


def evaluate(
    model: UNet,
    variables,
    data: SliceSet,
    *,
    batch_size: int,
    ids: np.ndarray | None = None,
    mesh=None,
) -> dict[str, np.ndarray]:
    """Per-slice evaluation terms over `ids` (default: every slice), fixed-shape batches.

    With a `mesh` (see selal_jax.core.parallel), `batch_size` is global and each batch is split over
    its devices; `None` is the single-device path.
    """
    ids = np.arange(len(data)) if ids is None else np.asarray(ids)
    if mesh is not None:
        variables = parallel.put_replicated(mesh, variables)

    def terms(_, images, labels):
        return eval_batch(variables, images, labels, model=model)

    # One transfer for the whole split.
    return parallel.map_batches(
        terms, ids, data.images, data.labels, batch_size=batch_size, mesh=mesh
    )


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


def validation_loss(model: UNet, variables, data: SliceSet, *, batch_size: int, mesh=None) -> float:
    """`mean_loss` of `variables` over every slice of `data` (the early-stopping criterion)."""
    return mean_loss(evaluate(model, variables, data, batch_size=batch_size, mesh=mesh))


class TrainingDivergedError(UserError, FloatingPointError):
    """A round's best validation loss is far above the untrained model's (see
    `check_divergence`), or a training loss is not finite; the message names the round."""


DIVERGENCE_FACTOR = 10.0  # best val loss above this many times the untrained model's: diverged


def check_divergence(round_index: int, best_val_loss: float, untrained_val_loss: float) -> None:
    """Raises TrainingDivergedError if the round's best validation loss exceeds
    DIVERGENCE_FACTOR x the untrained model's validation loss (or is not finite): a learning
    rate far too large ends in a finite but useless model otherwise."""
    limit = DIVERGENCE_FACTOR * untrained_val_loss
    if not best_val_loss <= limit:  # also NaN
        raise TrainingDivergedError(
            f"round {round_index}: training diverged: best validation loss {best_val_loss:.6g} "
            f"exceeds {DIVERGENCE_FACTOR:g} x the untrained model's validation loss "
            f"{untrained_val_loss:.6g}; lower train.learning_rate"
        )


def epoch_order(
    key: Array, labelled_ids: np.ndarray, batch_size: int, min_steps: int
) -> np.ndarray:
    """[steps, batch_size] pool ids of one epoch: a permutation, wrapped to fill whole batches.

    Full batches only (BatchNorm statistics are never computed over padding); a labelled set
    smaller than `min_steps * batch_size` repeats slices so that an epoch has `min_steps` steps.
    """
    n = len(labelled_ids)
    steps = max(math.ceil(n / batch_size), min_steps)
    perm = np.asarray(jax.random.permutation(key, n))
    reps = math.ceil(steps * batch_size / n)
    order = np.concatenate([perm] * reps)[: steps * batch_size]
    return labelled_ids[order].reshape(steps, batch_size)


def fit(
    model: UNet,
    state: TrainState,
    tx: optax.GradientTransformation,
    train_data: SliceSet,
    labelled_ids: np.ndarray,
    val_data: SliceSet,
    key: Array,
    train_config,
    *,
    round_index: int = 0,
    mesh=None,
) -> tuple[TrainState, dict]:
    """Trains until the validation loss has not improved for `patience` epochs.

    Keys: `key` is the round's `rng.fit_key`; epoch e's order is drawn from rng.epoch_key(key, e)
    and its step s from rng.step_key(that key, s), so a resumed run draws the same numbers.

    With a `mesh` (see selal_jax.core.parallel), the state is replicated over its devices and each
    (global) batch split along the batch axis; every process computes the same epoch order and
    reads only its rows of each batch. `None` is the single-device path.

    Returns:
      (the state of the best epoch, summary dict: epochs, best_epoch, best_val_loss, losses).
    """
    batch_size = int(train_config.batch_size)
    patience, max_epochs = int(train_config.patience), int(train_config.max_epochs)
    labelled_ids = np.asarray(labelled_ids)
    if mesh is not None:
        parallel.check_batch_size("train.batch_size", batch_size, mesh.size)
        state = parallel.put_replicated(mesh, state)
    best_state, best_loss, best_epoch = jax.device_get(state), math.inf, -1
    history = []
    progress = Progress(f"round {round_index} training", total=max_epochs, unit="epoch")
    start = time.time()
    for epoch in range(max_epochs):
        epoch_key = rng.epoch_key(key, epoch)
        order = epoch_order(
            epoch_key, labelled_ids, batch_size, int(train_config.min_steps_per_epoch)
        )
        losses = []
        for step, batch_ids in enumerate(order):
            state, loss = train_step(
                state,
                *parallel.host_batch(mesh, batch_ids, train_data.images, train_data.labels),
                rng.step_key(epoch_key, step),
                model=model,
                tx=tx,
                augment=bool(train_config.augment),
                loss=str(train_config.get("loss", "ce")),
            )
            losses.append(loss)
        train_loss = float(np.mean(jax.device_get(losses)))
        if not math.isfinite(train_loss):
            bad = int(np.argmax(~np.isfinite(jax.device_get(losses))))
            raise TrainingDivergedError(
                f"non-finite training loss in round {round_index}, epoch {epoch}, step {bad}; "
                "lower train.learning_rate or check the data"
            )
        val_loss = validation_loss(
            model,
            state.variables,
            val_data,
            batch_size=int(train_config.eval_batch_size),
            mesh=mesh,
        )
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        if val_loss < best_loss:
            best_state, best_loss, best_epoch = jax.device_get(state), val_loss, epoch
        progress.update(
            epoch + 1, f"loss {train_loss:.4f} val {val_loss:.4f} best {best_loss:.4f}@{best_epoch}"
        )
        faults.maybe_kill("train", round_index)
        if epoch - best_epoch >= patience:
            break
    progress.close()
    summary = {
        "epochs": len(history),
        "best_epoch": best_epoch,
        "best_val_loss": best_loss,
        "train_loss": history[-1]["train_loss"],
        "seconds": time.time() - start,
        "history": history,  # per epoch: epoch, train_loss, val_loss
    }
    logging.info(
        "round %d: trained %d epochs, best val loss %.5f at epoch %d",
        round_index,
        len(history),
        best_loss,
        best_epoch,
    )
    return parallel.put_replicated(mesh, best_state), summary
