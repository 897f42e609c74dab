"""Fit-until-plateau and the evaluation passes over a split: the training loop of a round,
which reads host batches of a SliceSet (`core.train` holds the jitted steps it calls).

Keys: `fit` takes the round's `rng.fit_key`; epoch e's order is drawn from rng.epoch_key(key, e)
and its step s from rng.step_key(that key, s), so a resumed run draws the same numbers.
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np
import optax
from absl import logging

from selal_jax.base import faults
from selal_jax.base.errors import UserError
from selal_jax.base.progress import Progress
from selal_jax.core import parallel, rng
from selal_jax.core.models import UNet
from selal_jax.core.train import TrainState, eval_batch, mean_loss, train_step
from selal_jax.data.slices import SliceSet

Array = jax.Array


def evaluate(
    model: UNet, variables, data: SliceSet, batches: parallel.Batcher, ids=None
) -> dict[str, np.ndarray]:
    """Per-slice evaluation terms (`core.train.eval_batch`) over `ids` (default: every slice) of
    `data`, in the batcher's fixed-shape batches over its mesh; results fetched every `parallel.FETCH_BATCHES` batches."""
    ids = np.arange(len(data)) if ids is None else np.asarray(ids)
    variables = batches.replicate(variables)

    def terms(_, images, labels):
        return eval_batch(variables, images, labels, model=model)

    return batches.map(terms, ids, data.images, data.labels)


def validation_loss(model: UNet, variables, data: SliceSet, batches: parallel.Batcher) -> float:
    """`mean_loss` of `variables` over every slice of `data` (the early-stopping criterion)."""
    return mean_loss(evaluate(model, variables, data, batches))


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
    val_batches = parallel.Batcher(int(train_config.eval_batch_size), mesh)
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
        val_loss = validation_loss(model, state.variables, val_data, val_batches)
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
