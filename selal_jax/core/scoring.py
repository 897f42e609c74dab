"""Scoring a pool: forward pass(es), per-pixel uncertainty, masks and per-slice sums, fused.

`score_batch` is one jitted program per fixed-shape batch: the model's logits (Monte-Carlo
dropout passes for MC_STRATEGIES) go through the definitions of `selal_jax.uncertainty` and
only per-slice numbers (`SliceStats`) leave the device, so scoring a pool never holds its
probability maps on the host. `score_pool` maps it over the candidate slices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from selal_jax.core import parallel, rng
from selal_jax.core.models import UNet

# Re-exported: callers name the definitions through this module (scoring.SliceStats, ...).
from selal_jax.core.uncertainty import (  # noqa: F401
    CONVENTIONS,
    UNCERTAINTY_STRATEGIES,
    PixelMaps,
    SliceStats,
    class_pixel_uncertainty,
    class_terms_from_logits,
    class_terms_from_probs,
    is_multiclass,
    pixel_maps,
    pixel_uncertainty,
    stats_from_probs,
    stats_from_terms,
    terms_from_logits,
    terms_from_probs,
)
from selal_jax.core.xla_options import backend_jit

Array = jax.Array

# Strategies that score no uncertainty: `random`, `random_predicted` (uniform among the slices
# with predicted target, see queries.select_random_predicted) and `random_label` (among those
# with true target: queries.select_random_label).
RANDOM_STRATEGIES = ("random", "random_predicted", "random_label")
STRATEGIES = ("random", *UNCERTAINTY_STRATEGIES, "random_predicted", "random_label")
MC_STRATEGIES = ("mc_dropout", "bald")


def mc_logits(
    model: UNet,
    variables,
    images: Array,
    slice_ids: Array,
    score_key: Array,
    passes: int,
    reuse_encoder: bool = True,
) -> Array:
    """Monte-Carlo dropout logits [batch, passes, height, width] (binary head) or
    [batch, passes, height, width, L] (multi-class head).

    The dropout key of pass t of slice s is rng.pass_key(rng.slice_key(score_key, s), t), so a
    slice's passes do not depend on the batch it is in, its position, padding or resumption. With
    `reuse_encoder`, the (deterministic) encoder runs once per batch and only the decoder, which
    holds every dropout layer, runs `passes` times; without it, every pass is a full forward pass
    (the published code's loop, kept as the baseline the reuse is measured against). The result
    is identical either way.
    """

    def slice_keys(sid):
        k = rng.slice_key(score_key, sid)
        return jax.vmap(lambda t: rng.pass_key(k, t))(jnp.arange(passes))

    keys = jax.vmap(slice_keys)(slice_ids)  # [batch, passes]
    if reuse_encoder:
        bottleneck, skips = model.apply(variables, images, False, method=UNet.encode)

        def decode_one(b, s, key):
            s = tuple(x[None] for x in s)
            return model.apply(
                variables, b[None], s, mc=True, rngs={"dropout": key}, method=UNet.decode
            )[0]

        per_slice = jax.vmap(decode_one, in_axes=(None, None, 0))  # over passes
        return jax.vmap(per_slice)(bottleneck, skips, keys)

    def full_one(image, key):
        return model.apply(variables, image[None], mc=True, rngs={"dropout": key})[0]

    # One image per pass: with the image shared (in_axes=None), vmap would batch only what depends
    # on the key and so compute the encoder once anyway, which is the reuse this option turns off.
    per_pass = jnp.broadcast_to(images[:, None], (images.shape[0], passes, *images.shape[1:]))
    return jax.vmap(jax.vmap(full_one))(per_pass, keys)


@functools.partial(
    backend_jit,
    static_argnames=("model", "strategy", "convention", "passes", "reuse_encoder", "maps"),
)
def score_batch(
    variables,
    images: Array,
    slice_ids: Array,
    score_key: Array,
    target_threshold,
    boundary_width,
    *,
    model: UNet,
    strategy: str,
    convention: str,
    passes: int = 1,
    reuse_encoder: bool = True,
    maps: bool = False,
) -> SliceStats | PixelMaps:
    """Forward pass(es), per-pixel uncertainty, masks and per-slice sums in one program.

    Args:
      variables: {'params', 'batch_stats'} of `model`.
      images: [batch, height, width] or [batch, height, width, K] float32 (padding rows
        allowed; the caller drops them).
      slice_ids: [batch] int32 pool ids (seed MC dropout keys).
      score_key: the round's `rng.score_key` (the MC dropout masks derive from it).
      target_threshold, boundary_width: T and B (traced: changing them does not recompile).
      maps: return the per-pixel maps that the sums are made of (PixelMaps: the uncertainty
        [batch, H, W] and the target, boundary and per-class target masks) instead of the sums.

    The model's head decides the path: logits [batch, H, W] are binary, [batch, H, W, L]
    multi-class ('paper' convention only).

    Returns:
      SliceStats with [batch] entries ([batch, C] per-class entries; C = 1 for binary), or with
      `maps` PixelMaps with [batch, H, W] entries ([batch, H, W, C] per-class masks).
    """
    if strategy in MC_STRATEGIES:
        logits = mc_logits(model, variables, images, slice_ids, score_key, passes, reuse_encoder)
    else:
        logits = model.apply(variables, images, False, scoring=True)[:, None]

    multiclass = is_multiclass(logits, 4)  # [batch, passes, H, W] or [..., L]

    def one(slice_logits):
        if multiclass:
            terms = class_terms_from_logits(slice_logits)
        elif convention == "paper":
            terms = terms_from_logits(slice_logits)
        else:  # The published code works on probabilities; so does its convention here.
            terms = terms_from_probs(jax.nn.sigmoid(slice_logits))
        if maps:
            return pixel_maps(terms, strategy, convention, target_threshold, boundary_width)
        return stats_from_terms(terms, strategy, convention, target_threshold, boundary_width)

    return jax.vmap(one)(logits)


def score_pool(
    model: UNet,
    variables,
    images,
    candidate_ids,
    score_key: Array,
    *,
    strategy: str,
    convention: str,
    target_threshold: float,
    boundary_width: float,
    passes: int,
    batch_size: int,
    reuse_encoder: bool = True,
    progress=None,
    mesh=None,
    maps: bool = False,
) -> SliceStats | PixelMaps:
    """Scores the candidate slices of a pool in fixed-shape batches.

    Host memory stays bounded: each batch's images are gathered from `images` (a NumPy array or
    memmap [N, H, W] or [N, H, W, K]) as it is dispatched, and only per-slice stats come back, in
    transfers of `parallel.FETCH_BATCHES` batches. The model's head decides binary (num_logits 1)
    or multi-class scoring.

    With a `mesh` (see selal_jax.parallel), `batch_size` is global: each batch is split over the
    mesh's devices (each process reads only its own rows), and the per-slice stats of every
    device are gathered (every `parallel.FETCH_BATCHES` batches), so every process returns the whole pool's stats. Per-slice
    results do not depend on the batching (MC dropout keys are per slice, derived from
    `score_key`, the round's `rng.score_key`). `None` is the single-device path.

    Returns:
      SliceStats of NumPy arrays [len(candidate_ids)] (per-class fields [len(candidate_ids), C],
      C = 1 for a binary head), aligned with `candidate_ids`; with `maps` the PixelMaps of
      NumPy arrays [len(candidate_ids), ...] instead (`score_batch`).
    """
    t_arr, b_arr = np.float32(target_threshold), np.float32(boundary_width)
    if mesh is not None:
        variables = parallel.put_replicated(mesh, variables)

    def score(batch_ids, batch_images):
        return score_batch(
            variables,
            batch_images,
            batch_ids,
            score_key,
            t_arr,
            b_arr,
            model=model,
            strategy=strategy,
            convention=convention,
            passes=passes,
            reuse_encoder=reuse_encoder,
            maps=maps,
        )

    on_batch = None if progress is None else progress.update
    return parallel.map_batches(
        score, candidate_ids, _Float32(images), batch_size=batch_size, mesh=mesh, on_batch=on_batch
    )


def pool_pixel_maps(model: UNet, variables, images, ids, score_key: Array, **kwargs) -> PixelMaps:
    """PixelMaps of NumPy arrays [len(ids), ...] of the pool slices `ids`: the maps whose masked
    sums `score_pool` (same keyword arguments) returns for them, to the float32 rounding of a
    program that keeps them."""
    return score_pool(model, variables, images, ids, score_key, maps=True, **kwargs)


class _Float32:
    """Rows of a host array read as float32 (the scoring programs' input dtype)."""

    def __init__(self, array):
        self.array = array

    def __getitem__(self, rows):
        return np.asarray(self.array[rows], np.float32)
