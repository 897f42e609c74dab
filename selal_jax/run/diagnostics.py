"""Per-query diagnostics and pool embeddings (the paper's redundancy and empty-slice claims).

Embeddings are the U-Net bottleneck features, globally average-pooled, of the deterministic
model. Predicted target / boundary pixel counts use the same model's probabilities P with the
run's T and B (P > T, |P - 0.5| < B; with several classes 1 - p_0 > T and p_(1) - p_(2) < 2B),
whatever the strategy (for MC strategies the ranking used
the MC mean; the diagnostic uses the deterministic pass so that all strategies are measured alike).
The `random_predicted` strategy draws among slices with predicted target (`predicted_target_mask`)
and a round's annotation cost counts its training set's foreground (`labelled_target_pixels`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from selal_jax.core import parallel
from selal_jax.core.models import UNet
from selal_jax.data.slices import SliceSet


@functools.partial(jax.jit, static_argnames=("model",))
def _embed_batch(variables, images, target_threshold, boundary_width, *, model: UNet):
    bottleneck, skips = model.apply(variables, images, False, method=UNet.encode)
    logits = model.apply(variables, bottleneck, skips, method=UNet.decode)
    if logits.ndim == 4:  # classes: foreground mass 1 - p_0 > T, top-two gap p_(1) - p_(2) < 2B
        p = jax.nn.softmax(logits, axis=-1)
        top2 = jax.lax.top_k(p, 2)[0]
        target = jnp.sum(p[..., 1:], axis=-1) > target_threshold
        boundary = top2[..., 0] - top2[..., 1] < 2 * boundary_width
    else:
        p = jax.nn.sigmoid(logits)
        target, boundary = p > target_threshold, jnp.abs(p - 0.5) < boundary_width
    return (
        jnp.mean(bottleneck.astype(jnp.float32), axis=(1, 2)),
        jnp.sum(target, axis=(1, 2)),
        jnp.sum(boundary, axis=(1, 2)),
    )


def embed(
    model: UNet,
    variables,
    images,
    ids,
    batches: parallel.Batcher,
    target_threshold=0.1,
    boundary_width=0.1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features [n, C] float32, predicted target pixels [n], boundary pixels [n]) of `ids`, in
    the batcher's batches over its mesh."""
    t_arr, b_arr = np.float32(target_threshold), np.float32(boundary_width)
    variables = batches.replicate(variables)

    def embed_batch(_, images):
        return _embed_batch(variables, images, t_arr, b_arr, model=model)

    return batches.map(embed_batch, ids, images)


def predicted_target_mask(logits, target_threshold):
    """Pixels where the model predicts target, the definition of `random_predicted`.

    Args:
      logits: [batch, height, width] (binary head) or [batch, height, width, L] (multi-class).
      target_threshold: T.

    Returns:
      [batch, height, width] bool: P > T for the binary head (the target mask of selective
      sampling); argmax != 0 (a foreground class is the most likely) for the multi-class head.
      The multi-class mask is the predicted segmentation, not the scoring module's 1 - p_0 > T,
      so that a slice counts only if some pixel would be drawn as foreground.
    """
    if logits.ndim == 4:
        return jnp.argmax(logits, axis=-1) != 0
    return jax.nn.sigmoid(logits.astype(jnp.float32)) > target_threshold


@functools.partial(jax.jit, static_argnames=("model",))
def _predicted_target_batch(variables, images, target_threshold, *, model: UNet):
    logits = model.apply(variables, images, False)
    return jnp.sum(predicted_target_mask(logits, target_threshold), axis=(1, 2), dtype=jnp.int32)


def predicted_target_counts(
    model: UNet, variables, images, ids, batches: parallel.Batcher, target_threshold: float
) -> np.ndarray:
    """Per-slice predicted target pixels [n] int64 of `ids` (see `predicted_target_mask`).

    One jitted program per fixed-shape batch of the batcher (the last padded, split over its
    mesh), the deterministic model; only the counts leave the device (`parallel.map_batches`).
    """
    threshold = np.float32(target_threshold)
    variables = batches.replicate(variables)

    def count(_, images):
        return _predicted_target_batch(variables, images, threshold, model=model)

    ids = np.asarray(ids, np.int64)
    return batches.map(count, ids, images).astype(np.int64)


LABEL_CHUNK = 256  # slices of labels read at a time (a pool can be 50k slices of 240 x 240)


def target_pixel_counts(labels, ids, chunk: int = LABEL_CHUNK) -> np.ndarray:
    """Foreground pixels (label > 0) [n] int64 of each of `ids`, in the order given, read from
    `labels` ([N, H, W], e.g. a memmap or `label_store.OverlaidLabels`) `chunk` slices at a time
    in ascending id order, so that no mask of more than `chunk` slices is ever built."""
    ids = np.asarray(ids, np.int64)
    order = np.argsort(ids, kind="stable")
    counts = np.zeros(len(ids), np.int64)
    for start in range(0, len(ids), chunk):
        part = order[start : start + chunk]
        counts[part] = (np.asarray(labels[ids[part]]) > 0).reshape(len(part), -1).sum(axis=1)
    return counts


def labelled_target_pixels(labels, ids, chunk: int = LABEL_CHUNK) -> dict:
    """Annotation cost of a labelled set: its foreground pixels (label > 0) and the slices that
    have any, read from `labels` (the training labels: the dataset's, with a human annotator's
    imported masks in place), `chunk` slices at a time."""
    counts = target_pixel_counts(labels, ids, chunk)
    return {
        "labelled_target_pixels": int(counts.sum()),
        "labelled_slices_with_target": int((counts > 0).sum()),
    }


def redundancy(features: np.ndarray) -> float | None:
    """Mean pairwise cosine similarity (off-diagonal) of the rows; None for fewer than 2."""
    n = len(features)
    if n < 2:
        return None
    f = np.asarray(features, np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sim = f @ f.T
    return float((sim.sum() - np.trace(sim)) / (n * (n - 1)))


def label_diagnostics(train: SliceSet, ids) -> dict:
    """How many queried slices contain target (ground truth), and their mean target pixels."""
    ids = np.asarray(ids, np.int64)
    if len(ids) == 0:
        return {"queried_with_target": 0, "queried_mean_target_pixels": 0.0}
    counts = target_pixel_counts(train.labels, ids)
    return {
        "queried_with_target": int((counts > 0).sum()),
        "queried_mean_target_pixels": float(counts.mean()),
    }


def model_diagnostics(
    model: UNet,
    variables,
    train: SliceSet,
    ids,
    batches: parallel.Batcher,
    target_threshold,
    boundary_width,
) -> dict:
    """Predicted target and boundary pixel counts of the queried slices, and their redundancy
    (mean pairwise cosine similarity of embeddings)."""
    ids = np.asarray(ids, np.int64)
    if len(ids) == 0:
        return {
            "queried_mean_pred_target_pixels": 0.0,
            "queried_mean_pred_boundary_pixels": 0.0,
            "queried_redundancy": None,
        }
    features, pred_target, pred_boundary = embed(
        model, variables, train.images, ids, batches, target_threshold, boundary_width
    )
    return {
        "queried_mean_pred_target_pixels": float(pred_target.mean()),
        "queried_mean_pred_boundary_pixels": float(pred_boundary.mean()),
        "queried_redundancy": redundancy(features),
    }
