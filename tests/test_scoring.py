"""Per-pixel formulas, masks and aggregations against independent float64 NumPy computations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selal_jax.core import scoring, selection
from selal_jax.core.models import UNet, init_variables, resolve_conv_impl
from tests.helpers import all_eqns


def np_sigmoid(z):
    z = np.asarray(z, np.float64)
    return np.where(z >= 0, 1 / (1 + np.exp(-z)), np.exp(z) / (1 + np.exp(z)))


def np_entropy(p):
    p = np.asarray(p, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(p > 0, -p * np.log(p), 0.0)
        b = np.where(p < 1, -(1 - p) * np.log1p(-p), 0.0)
    return a + b


def np_entropy_from_logits(z):
    """H(sigmoid(z)) = softplus(-|z|) + |z| sigmoid(-|z|): exact in float64 for any z."""
    z = np.abs(np.asarray(z, np.float64))
    return np.log1p(np.exp(-z)) + z * np_sigmoid(-z)


LOGITS = np.array([[-40.0, -12.0, -3.0, -0.4, 0.0], [0.2, 1.5, 7.0, 15.0, 40.0]], np.float32)


def paper_u(logits, strategy):
    return scoring.pixel_uncertainty(
        scoring.terms_from_logits(jnp.asarray(logits)), strategy, "paper"
    )


def test_paper_entropy_matches_numpy_including_extreme_logits():
    u, mask_map = paper_u(LOGITS[None], "entropy")
    expected = np_entropy_from_logits(LOGITS)
    assert np.all(np.isfinite(u))
    np.testing.assert_allclose(u, expected, rtol=2e-5, atol=1e-30)
    np.testing.assert_allclose(mask_map, np_sigmoid(LOGITS), rtol=1e-6)
    # |logit| = 40: H ~ 41 e^-40, far below float32 epsilon but still positive and exact.
    assert u[0, 0] > 0 and u[1, 4] > 0


@pytest.mark.parametrize("strategy,factor", [("least_confidence", 1.0), ("margin", 2.0)])
def test_paper_least_confidence_and_margin(strategy, factor):
    u, _ = paper_u(LOGITS[None], strategy)
    p = np_sigmoid(LOGITS)
    if strategy == "least_confidence":
        expected = 1 - np.maximum(p, 1 - p)
    else:
        expected = 1 - np.abs(2 * p - 1)
    # Computed as min(p, 1-p) from sigmoid(+-z): exact where 1 - max(p, 1-p) would cancel.
    np.testing.assert_allclose(
        u, factor * np.minimum(np_sigmoid(LOGITS), np_sigmoid(-LOGITS)), rtol=1e-6
    )
    np.testing.assert_allclose(u, expected, rtol=1e-6, atol=1e-7)


def test_paper_mc_dropout_and_bald_match_numpy():
    rng = np.random.default_rng(0)
    passes = rng.normal(0, 4, size=(6, 5, 7)).astype(np.float32)
    passes[:, 0, 0] = 40.0  # saturated everywhere: both must be ~0, finite
    passes[:, 0, 1] = [-40, 40, -40, 40, -40, 40]  # maximal disagreement
    p = np_sigmoid(passes)
    mean = p.mean(axis=0)
    h_mean = np_entropy(mean)
    bald = h_mean - np_entropy_from_logits(passes).mean(axis=0)
    u_mc, mask_mc = paper_u(passes, "mc_dropout")
    u_bald, mask_bald = paper_u(passes, "bald")
    for x in (u_mc, u_bald):
        assert np.all(np.isfinite(x))
    np.testing.assert_allclose(u_mc, h_mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(u_bald, np.maximum(bald, 0), rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(mask_mc, mean, rtol=1e-6)
    np.testing.assert_allclose(mask_bald, mean, rtol=1e-6)
    np.testing.assert_allclose(u_bald[0, 1], np.log(2), rtol=1e-5)  # half the passes say 0, half 1


def test_official_per_pixel_quantities():
    rng = np.random.default_rng(1)
    probs = rng.uniform(1e-6, 1 - 1e-6, size=(4, 6, 6)).astype(np.float32)
    p64 = probs.astype(np.float64)
    terms = scoring.terms_from_probs(jnp.asarray(probs[:1]))
    u, _ = scoring.pixel_uncertainty(terms, "entropy", "official")
    np.testing.assert_allclose(u, p64[0] * np.log(p64[0]), rtol=1e-5)
    u, _ = scoring.pixel_uncertainty(terms, "least_confidence", "official")
    np.testing.assert_allclose(u, p64[0], rtol=1e-7)
    terms = scoring.terms_from_probs(jnp.asarray(probs))
    m = p64.mean(axis=0)
    u, mask_map = scoring.pixel_uncertainty(terms, "mc_dropout", "official")
    np.testing.assert_allclose(u, m * np.log(m), rtol=1e-5, atol=1e-7)
    u, _ = scoring.pixel_uncertainty(terms, "bald", "official")
    expected = (-p64 * np.log(p64)).mean(axis=0) - (-m * np.log(m))
    np.testing.assert_allclose(u, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="margin"):
        scoring.pixel_uncertainty(terms, "margin", "official")


@pytest.mark.parametrize("convention", ["paper", "official"])
def test_masked_sums_and_counts_match_numpy(convention):
    rng = np.random.default_rng(2)
    probs = rng.uniform(0, 1, size=(5, 1, 16, 16)).astype(np.float32)
    probs[0] = 0.01  # empty target and boundary masks
    probs[1, 0, :4, :4] = 0.5  # exactly on the boundary centre
    T, B = np.float32(0.3), np.float32(0.1)
    stats = scoring.stats_from_probs(probs, T, B, strategy="entropy", convention=convention)
    p = probs[:, 0].astype(np.float64)
    u = np_entropy(p) if convention == "paper" else np.where(p > 0, p * np.log(p), 0)
    if convention == "paper":
        target, boundary = p > T, np.abs(p - 0.5) < B
    else:
        target, boundary = p >= T, np.abs(p - 0.5) <= B
    np.testing.assert_allclose(stats.target_sum, (u * target).sum((1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.boundary_sum, (u * boundary).sum((1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stats.target_count, target.sum((1, 2)))
    np.testing.assert_array_equal(stats.boundary_count, boundary.sum((1, 2)))
    np.testing.assert_allclose(stats.all_sum, u.sum((1, 2)), rtol=1e-5)
    np.testing.assert_array_equal(stats.all_count, 256)
    assert stats.target_count[0] == 0 and stats.boundary_count[0] == 0


def test_probability_and_logit_paths_agree():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, size=(4, 3, 8, 8)).astype(np.float32)
    probs = np_sigmoid(logits).astype(np.float32)
    for strategy in ("entropy", "least_confidence", "margin", "mc_dropout", "bald"):
        x = logits[:, :1] if strategy not in scoring.MC_STRATEGIES else logits
        pr = probs[:, :1] if strategy not in scoring.MC_STRATEGIES else probs
        from_probs = scoring.stats_from_probs(pr, 0.2, 0.1, strategy=strategy, convention="paper")
        from_logits = jax.vmap(
            lambda z, s=strategy: scoring.stats_from_terms(
                scoring.terms_from_logits(z), s, "paper", 0.2, 0.1
            )
        )(x)
        for a, b in zip(from_probs, from_logits, strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.fixture(scope="module")
def tiny_model():
    model = UNet(base_width=4, depth=2, dropout_rate=0.5)
    variables = init_variables(model, jax.random.key(0), 32, 32)
    images = np.random.default_rng(4).standard_normal((10, 32, 32)).astype(np.float32)
    return model, variables, images


def _pool_stats(model, variables, images, ids, batch_size, strategy="bald", reuse=True):
    return scoring.score_pool(
        model,
        variables,
        images,
        ids,
        jax.random.key(7),
        strategy=strategy,
        convention="paper",
        target_threshold=0.1,
        boundary_width=0.1,
        passes=3,
        batch_size=batch_size,
        reuse_encoder=reuse,
    )


def test_mc_scores_do_not_depend_on_batch_size_order_or_padding(tiny_model):
    model, variables, images = tiny_model
    ids = np.arange(10)
    a = _pool_stats(model, variables, images, ids, batch_size=4)  # 3 batches, last padded
    b = _pool_stats(model, variables, images, ids, batch_size=10)
    order = np.random.default_rng(0).permutation(10)
    c = _pool_stats(model, variables, images, ids[order], batch_size=3)
    # Same dropout masks; only float32 rounding of the convolutions differs between batch shapes
    # (BALD, a difference of entropies, amplifies it to ~1e-4 relative).
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(x[order], z, rtol=1e-3, atol=1e-6)
    # ... but they do depend on the slice id (its dropout key): far beyond that tolerance.
    shifted = _pool_stats(model, variables, images[np.r_[1:10, 0]], np.r_[1:10, 0], batch_size=10)
    assert not np.allclose(np.asarray(a.all_sum)[np.r_[1:10, 0]], shifted.all_sum, rtol=3e-2)


def test_encoder_reuse_gives_the_same_mc_logits(tiny_model):
    model, variables, images = tiny_model
    ids = jnp.arange(4)
    with_reuse = scoring.mc_logits(model, variables, images[:4], ids, jax.random.key(1), 3, True)
    without = scoring.mc_logits(model, variables, images[:4], ids, jax.random.key(1), 3, False)
    assert with_reuse.shape == (4, 3, 32, 32)
    np.testing.assert_allclose(with_reuse, without, rtol=1e-5, atol=1e-5)
    assert not np.allclose(with_reuse[:, 0], with_reuse[:, 1])  # passes differ


def test_pool_scoring_compiles_once_per_shape(tiny_model):
    model, variables, images = tiny_model
    traced = chex.assert_max_traces(scoring.score_batch.__wrapped__, n=1)
    fn = jax.jit(
        traced,
        static_argnames=("model", "strategy", "convention", "passes", "reuse_encoder", "maps"),
    )
    original = scoring.score_batch
    scoring.score_batch = fn
    try:
        for ids in (np.arange(10), np.arange(7), np.arange(3)):  # padded to the same shape
            _pool_stats(model, variables, images, ids, batch_size=4, strategy="entropy")
    finally:
        scoring.score_batch = original


def test_single_pass_pool_scores_match_numpy_from_the_forward_pass(tiny_model):
    model, variables, images = tiny_model
    stats = _pool_stats(model, variables, images, np.arange(10), batch_size=4, strategy="entropy")
    logits = np.asarray(jax.jit(model.apply)(variables, images), np.float64)
    p = np_sigmoid(logits)
    u = np_entropy_from_logits(logits)
    np.testing.assert_allclose(stats.target_sum, (u * (p > 0.1)).sum((1, 2)), rtol=1e-4)
    np.testing.assert_allclose(
        stats.boundary_sum, (u * (np.abs(p - 0.5) < 0.1)).sum((1, 2)), rtol=1e-4
    )
    np.testing.assert_allclose(stats.all_sum, u.sum((1, 2)), rtol=1e-4)


def test_single_pass_scoring_runs_the_scoring_layers_and_keeps_the_query(tiny_model):
    """The single-pass program runs the scoring forward pass (`UNet(..., scoring=True)`: skips
    convolved apart, no concatenation on the CPU path); its per-slice sums equal those of the
    evaluation forward pass to float32 rounding, and where the scores are farther apart than
    that, the query is the same."""
    model, variables, images = tiny_model
    images = images * np.linspace(0.2, 3.0, len(images), dtype=np.float32)[:, None, None]
    jaxpr = jax.make_jaxpr(
        lambda v, x: scoring.score_batch.__wrapped__(
            v,
            x,
            jnp.arange(4),
            jax.random.key(0),
            0.1,
            0.1,
            model=model,
            strategy="entropy",
            convention="paper",
        )
    )(variables, images[:4])
    concatenates = [e for e in all_eqns(jaxpr.jaxpr) if e.primitive.name == "concatenate"]
    custom = resolve_conv_impl(model.conv_impl) == "custom"
    assert len(concatenates) == (0 if custom else model.depth)
    ids = np.arange(len(images))
    stats = _pool_stats(model, variables, images, ids, batch_size=4, strategy="entropy")
    logits = jax.jit(model.apply)(variables, images)  # evaluation: the concatenation
    reference = jax.device_get(
        jax.vmap(
            lambda z: scoring.stats_from_terms(
                scoring.terms_from_logits(z[None]), "entropy", "paper", 0.1, 0.1
            )
        )(logits)
    )
    for got, expected in zip(stats, reference, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    for field in ("all_sum", "target_sum", "boundary_sum"):
        got, expected = np.asarray(getattr(stats, field)), getattr(reference, field)
        gaps = np.diff(np.sort(expected))
        assert np.min(gaps) > 100 * np.max(np.abs(got - expected)), field  # well apart
    for mode in ("all", "target", "boundary", "selective"):
        queries = [selection.select(s, ids, 4, mode=mode).ids for s in (stats, reference)]
        np.testing.assert_array_equal(*queries)
