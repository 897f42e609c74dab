"""Per-pixel uncertainties, target/boundary masks and per-slice masked sums (no model).

The definitions that `scoring` fuses with the forward passes into one program per batch, and
`stats_from_probs` applies to probability maps computed elsewhere (`select_from_probs`). All
of it is traceable and works per slice; callers vmap it over slices.

Two conventions (see docs/strategies.md):

* ``paper`` (default): the binary formulas, computed stably from logits (log-sigmoid, no clipping),
  "higher = more uncertain"; target pixels P > T, boundary pixels |P - 0.5| < B.
* ``official``: the published PyTorch code's quantities, from probabilities: one-sided entropy
  ``p ln p``, least confidence on the raw ``p``, BALD as ``mean_t(-p_t ln p_t) - (-pb ln pb)``;
  target pixels P >= T, boundary pixels |P - 0.5| <= B; the code ranks them in ascending order.

For ``mc_dropout`` and ``bald`` both masks are computed on the mean probability over the passes.

Multi-class (C >= 2 foreground classes, L = C + 1 softmax logits, class 0 = background; ``paper``
convention only): a program is multi-class when its logits (or probabilities) carry a trailing
class axis, i.e. per slice [passes, height, width, L] instead of [passes, height, width]; the
decision is static (the array's ndim). With p the class probabilities (their mean over the
passes), p_(1) >= p_(2) the two largest and H(p) = -sum_c p_c ln p_c: entropy H(p), least
confidence 1 - p_(1), margin 1 - (p_(1) - p_(2)), mc_dropout H(p), bald H(p) - mean_t H(p_t);
target pixels 1 - p_0 > T, boundary pixels p_(1) - p_(2) < 2B, class c's target pixels p_c > T.
With L = 2 each reduces to its binary formula (1 - p_0 = p, p_(1) - p_(2) = |2p - 1|).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

UNCERTAINTY_STRATEGIES = ("entropy", "least_confidence", "margin", "mc_dropout", "bald")
CONVENTIONS = ("paper", "official")


class PassTerms(NamedTuple):
    """Per-pass probability terms, each [passes, height, width] float32.

    Keeping p and q = 1 - p (and their logs) separately is what makes the formulas stable: from
    logits, q = sigmoid(-z) keeps its full precision where p rounds to 1.
    """

    p: Array
    q: Array
    log_p: Array
    log_q: Array


class ClassTerms(NamedTuple):
    """Per-pass class probabilities and their logs, each [passes, height, width, L] float32.

    From logits, log_p is the log-softmax (`log_softmax`) and p = exp(log_p): a probability that
    rounds to 1 in float32 is never used to form a small one (those are sums of the other
    classes' p).
    """

    p: Array
    log_p: Array


class SliceStats(NamedTuple):
    """Per-slice masked sums of the per-pixel uncertainty, each [batch] float32, and per class.

    `class_target_sum` / `class_target_count` are [batch, C]: the sum of the uncertainty over
    class c's target pixels (p_c > T, c = 1..C) and their number. The binary path has C = 1 and
    fills them with target_sum / target_count. They default to None so that stats built by hand
    from the six binary fields stay valid (`selection` then treats the target stream as the one
    class).
    """

    target_sum: Array
    target_count: Array
    boundary_sum: Array
    boundary_count: Array
    all_sum: Array
    all_count: Array
    class_target_sum: Array | None = None
    class_target_count: Array | None = None


def terms_from_logits(logits: Array) -> PassTerms:
    """logits: [passes, height, width] -> PassTerms (no clipping, finite for any finite logit)."""
    z = logits.astype(jnp.float32)
    return PassTerms(
        jax.nn.sigmoid(z), jax.nn.sigmoid(-z), jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z)
    )


def terms_from_probs(probs: Array) -> PassTerms:
    """probs: [passes, height, width] foreground probabilities in [0, 1] -> PassTerms."""
    p = probs.astype(jnp.float32)
    q = 1.0 - p
    return PassTerms(p, q, jnp.log(p), jnp.log(q))


def log_softmax(logits: Array) -> Array:
    """log-softmax over the last axis, exact also for the most likely class.

    log p_c = (z_c - z_max) - log1p(r), r = sum of exp(z_c' - z_max) over every class but one
    argmax. `jax.nn.log_softmax` adds the 1 of the argmax inside the log, which rounds
    log p_(1) = -r to 0 once r < float32 epsilon (|logit gap| > ~17) and so loses the
    leading term of the entropy there. With two classes it is the computation of
    `jax.nn.log_sigmoid(+-z)`, z = z_1 - z_0.
    """
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
    is_top = jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=bool)
    rest = jnp.sum(jnp.where(is_top, 0.0, jnp.exp(shifted)), axis=-1, keepdims=True)
    return shifted - jnp.log1p(rest)


def class_terms_from_logits(logits: Array) -> ClassTerms:
    """logits: [passes, height, width, L] -> ClassTerms (stable log-softmax, no clipping)."""
    log_p = log_softmax(logits.astype(jnp.float32))
    return ClassTerms(jnp.exp(log_p), log_p)


def class_terms_from_probs(probs: Array) -> ClassTerms:
    """probs: [passes, height, width, L] class probabilities summing to 1 -> ClassTerms."""
    p = probs.astype(jnp.float32)
    return ClassTerms(p, jnp.log(p))


def is_multiclass(x: Array, slice_ndim: int) -> bool:
    """Static decision: a trailing class axis makes an array of `slice_ndim` binary dimensions
    multi-class (logits [batch, H, W] vs [batch, H, W, L]: slice_ndim = 3)."""
    if x.ndim == slice_ndim:
        return False
    if x.ndim == slice_ndim + 1:
        if x.shape[-1] < 2:
            raise ValueError(f"expected at least 2 classes on the last axis, got shape {x.shape}")
        return True
    raise ValueError(f"expected {slice_ndim} or {slice_ndim + 1} dimensions, got shape {x.shape}")


def _xlogx(x: Array, log_x: Array) -> Array:
    """x * log(x) with the limit 0 at x = 0 (log_x may be -inf there)."""
    return jnp.where(x > 0, x * log_x, 0.0)


def binary_entropy(p: Array, q: Array, log_p: Array, log_q: Array) -> Array:
    """H(p) = -p ln p - (1 - p) ln(1 - p), in nats."""
    return -(_xlogx(p, log_p) + _xlogx(q, log_q))


def _mean_terms(terms: PassTerms) -> PassTerms:
    """Terms of the mean probability over passes (log-mean-exp keeps the logs exact)."""
    n = terms.p.shape[0]
    log_n = jnp.log(jnp.float32(n))
    return PassTerms(
        jnp.mean(terms.p, axis=0),
        jnp.mean(terms.q, axis=0),
        jax.scipy.special.logsumexp(terms.log_p, axis=0) - log_n,
        jax.scipy.special.logsumexp(terms.log_q, axis=0) - log_n,
    )


def pixel_uncertainty(terms: PassTerms, strategy: str, convention: str) -> tuple[Array, Array]:
    """Per-pixel uncertainty and the map that the masks are computed on.

    Args:
      terms: PassTerms with a leading pass axis (1 for single-pass strategies).
      strategy: one of UNCERTAINTY_STRATEGIES.
      convention: 'paper' or 'official'.

    Returns:
      (u [height, width], mask_map [height, width]) float32.
    """
    mean = _mean_terms(terms)
    if convention == "paper":
        if strategy == "entropy":
            u = binary_entropy(*mean)
        elif strategy == "least_confidence":
            u = jnp.minimum(mean.p, mean.q)  # 1 - max(p, 1 - p)
        elif strategy == "margin":
            u = 2.0 * jnp.minimum(mean.p, mean.q)  # 1 - |2p - 1|, without cancellation
        elif strategy == "mc_dropout":
            u = binary_entropy(*mean)
        elif strategy == "bald":
            expected = jnp.mean(binary_entropy(*terms), axis=0)
            # Mutual information is >= 0 (Jensen); clip the rounding noise below it.
            u = jnp.maximum(binary_entropy(*mean) - expected, 0.0)
        else:
            raise ValueError(
                f"unknown strategy {strategy!r}; expected one of {UNCERTAINTY_STRATEGIES}"
            )
    elif convention == "official":
        if strategy in ("entropy", "mc_dropout"):
            u = _xlogx(mean.p, mean.log_p)
        elif strategy == "least_confidence":
            u = mean.p
        elif strategy == "bald":
            expected = jnp.mean(-_xlogx(terms.p, terms.log_p), axis=0)
            u = expected - (-_xlogx(mean.p, mean.log_p))
        elif strategy == "margin":
            raise ValueError(
                "strategy 'margin' has no 'official' convention: the published margin code is "
                "defective (it sorts along the image width); use convention='paper'"
            )
        else:
            raise ValueError(
                f"unknown strategy {strategy!r}; expected one of {UNCERTAINTY_STRATEGIES}"
            )
    else:
        raise ValueError(f"unknown convention {convention!r}; expected one of {CONVENTIONS}")
    return u, mean.p


def masks(
    mask_map: Array, target_threshold: Array, boundary_width: Array, convention: str
) -> tuple[Array, Array]:
    """(target, boundary) pixel masks [height, width] bool of a binary slice's mask map."""
    if convention == "official":
        return mask_map >= target_threshold, jnp.abs(mask_map - 0.5) <= boundary_width
    return mask_map > target_threshold, jnp.abs(mask_map - 0.5) < boundary_width


def masked_stats(
    u: Array, mask_map: Array, target_threshold: Array, boundary_width: Array, convention: str
) -> SliceStats:
    """Masked sums and counts for one slice (u, mask_map: [height, width])."""
    target, boundary = masks(mask_map, target_threshold, boundary_width, convention)

    def masked_sum(mask):
        return jnp.sum(jnp.where(mask, u, 0.0)), jnp.sum(mask, dtype=jnp.float32)

    t_sum, t_count = masked_sum(target)
    b_sum, b_count = masked_sum(boundary)
    # One foreground class: its target pixels are the target pixels.
    return SliceStats(
        t_sum, t_count, b_sum, b_count, jnp.sum(u), jnp.float32(u.size), t_sum[None], t_count[None]
    )


def class_entropy(p: Array, log_p: Array) -> Array:
    """H(p) = -sum_c p_c ln p_c over the last (class) axis, in nats."""
    return -jnp.sum(_xlogx(p, log_p), axis=-1)


def _mean_class_terms(terms: ClassTerms) -> ClassTerms:
    """Terms of the mean class probabilities over passes (log-mean-exp keeps the logs exact)."""
    log_n = jnp.log(jnp.float32(terms.p.shape[0]))
    return ClassTerms(
        jnp.mean(terms.p, axis=0), jax.scipy.special.logsumexp(terms.log_p, axis=0) - log_n
    )


class ClassMaps(NamedTuple):
    """What the multi-class masks are computed on, from the (mean) class probabilities.

    foreground: [H, W] 1 - p_0, summed over the foreground classes (not subtracted from 1).
    top_gap: [H, W] p_(1) - p_(2).
    classes: [H, W, C] p_1 .. p_C.
    """

    foreground: Array
    top_gap: Array
    classes: Array


def class_pixel_uncertainty(
    terms: ClassTerms, strategy: str, convention: str
) -> tuple[Array, ClassMaps]:
    """Multi-class per-pixel uncertainty ('paper' convention only).

    Args:
      terms: ClassTerms with a leading pass axis (1 for single-pass strategies).
      strategy: one of UNCERTAINTY_STRATEGIES.
      convention: must be 'paper': the published code is binary.

    Returns:
      (u [height, width] float32, ClassMaps of the mean class probabilities).
    """
    if convention != "paper":
        raise ValueError(
            f"convention {convention!r} is binary only (the published code has one foreground "
            "class); multi-class scoring needs convention='paper'"
        )
    mean = _mean_class_terms(terms)
    top2, top_index = jax.lax.top_k(mean.p, 2)
    is_top = jnp.arange(mean.p.shape[-1]) == top_index[..., :1]
    # 1 - p_(1) as the sum of the other classes: exact where p_(1) rounds to 1.
    not_top = jnp.sum(jnp.where(is_top, 0.0, mean.p), axis=-1)
    if strategy in ("entropy", "mc_dropout"):
        u = class_entropy(*mean)
    elif strategy == "least_confidence":
        u = not_top
    elif strategy == "margin":
        u = not_top + top2[..., 1]  # 1 - (p_(1) - p_(2)), without cancellation
    elif strategy == "bald":
        expected = jnp.mean(class_entropy(*terms), axis=0)
        u = jnp.maximum(class_entropy(*mean) - expected, 0.0)  # >= 0 (Jensen), as binary
    else:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {UNCERTAINTY_STRATEGIES}")
    maps = ClassMaps(
        jnp.sum(mean.p[..., 1:], axis=-1), top2[..., 0] - top2[..., 1], mean.p[..., 1:]
    )
    return u, maps


def class_masks(
    maps: ClassMaps, target_threshold: Array, boundary_width: Array
) -> tuple[Array, Array, Array]:
    """(target [H, W], boundary [H, W], class target [H, W, C]) bool masks of a multi-class
    slice."""
    return (
        maps.foreground > target_threshold,
        maps.top_gap < 2.0 * boundary_width,
        maps.classes > target_threshold,
    )


def class_masked_stats(
    u: Array, maps: ClassMaps, target_threshold: Array, boundary_width: Array
) -> SliceStats:
    """Masked sums and counts for one multi-class slice (u: [height, width])."""
    target, boundary, class_target = class_masks(maps, target_threshold, boundary_width)

    def masked_sum(mask):
        return jnp.sum(jnp.where(mask, u, 0.0)), jnp.sum(mask, dtype=jnp.float32)

    t_sum, t_count = masked_sum(target)
    b_sum, b_count = masked_sum(boundary)
    if maps.classes.shape[-1] == 1:
        # One foreground class (L = 2): its mask is the target mask (p_1 = 1 - p_0 exactly);
        # reusing the sums keeps a class-balanced query equal to the plain one bit for bit.
        c_sum, c_count = t_sum[None], t_count[None]
    else:
        c_sum = jnp.sum(jnp.where(class_target, u[..., None], 0.0), axis=(0, 1))
        c_count = jnp.sum(class_target, axis=(0, 1), dtype=jnp.float32)
    return SliceStats(
        t_sum, t_count, b_sum, b_count, jnp.sum(u), jnp.float32(u.size), c_sum, c_count
    )


class PixelMaps(NamedTuple):
    """What a slice's score is made of, per pixel (`pixel_maps`).

    uncertainty: [H, W] float32, the strategy's per-pixel uncertainty.
    target, boundary: [H, W] bool, the pixels the target and boundary streams sum over.
    class_target: [H, W, C] bool, class c's target pixels (C = 1 for binary: the target mask).
    """

    uncertainty: Array
    target: Array
    boundary: Array
    class_target: Array


def pixel_maps(terms, strategy, convention, target_threshold, boundary_width) -> PixelMaps:
    """PixelMaps of one slice from PassTerms (binary) or ClassTerms (multi-class): the maps
    that `stats_from_terms` sums."""
    if isinstance(terms, ClassTerms):
        u, maps = class_pixel_uncertainty(terms, strategy, convention)
        return PixelMaps(u, *class_masks(maps, target_threshold, boundary_width))
    u, mask_map = pixel_uncertainty(terms, strategy, convention)
    target, boundary = masks(mask_map, target_threshold, boundary_width, convention)
    return PixelMaps(u, target, boundary, target[..., None])


def stats_from_terms(terms, strategy, convention, target_threshold, boundary_width):
    """SliceStats of one slice from PassTerms (binary) or ClassTerms (multi-class)."""
    if isinstance(terms, ClassTerms):
        u, maps = class_pixel_uncertainty(terms, strategy, convention)
        return class_masked_stats(u, maps, target_threshold, boundary_width)
    u, mask_map = pixel_uncertainty(terms, strategy, convention)
    return masked_stats(u, mask_map, target_threshold, boundary_width, convention)


@functools.partial(jax.jit, static_argnames=("strategy", "convention"))
def stats_from_probs(
    probs: Array, target_threshold, boundary_width, *, strategy: str, convention: str
) -> SliceStats:
    """Per-slice stats from probability maps computed elsewhere.

    Args:
      probs: [batch, passes, height, width] foreground probabilities, or [batch, passes, height,
        width, L] class probabilities (summing to 1 over the last axis; multi-class, 'paper'
        convention only); passes = 1 for single-pass strategies.
      target_threshold, boundary_width: scalars T and B.

    Returns:
      SliceStats with [batch] entries ([batch, C] per-class entries; C = 1 for binary).
    """
    to_terms = class_terms_from_probs if is_multiclass(probs, 4) else terms_from_probs

    def one(slice_probs):
        return stats_from_terms(
            to_terms(slice_probs), strategy, convention, target_threshold, boundary_width
        )

    return jax.vmap(one)(probs)
