"""Multi-class scoring and selection: float64 NumPy references, reductions to the binary path,
the class-balanced target stream and the refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selal_jax.core import scoring, selection
from selal_jax.core.models import UNet, init_variables

STRATEGIES = scoring.UNCERTAINTY_STRATEGIES
MODES = selection.MODES
T, B = 0.3, 0.1


# ---------------------------------------------------------------- float64 NumPy references


def np_log_softmax(z):
    """Exact in float64 also for the top class: log p_(1) = -log1p(sum of the others' exp)."""
    z = np.asarray(z, np.float64)
    ordered = np.sort(z, axis=-1)
    top = ordered[..., -1:]
    return z - top - np.log1p(np.exp(ordered[..., :-1] - top).sum(-1, keepdims=True))


def np_mean_log(p, log_p):
    """log of the mean over axis 0; the mean's top class as log1p(-sum of the others)."""
    mean = p.mean(0)
    with np.errstate(divide="ignore"):
        log_mean = np.log(mean)
    top = np.argmax(mean, axis=-1)[..., None]
    others = np.where(np.arange(mean.shape[-1]) == top, 0.0, mean).sum(-1, keepdims=True)
    exact_top = np.log1p(-others) if p.shape[0] > 1 else np.take_along_axis(log_p[0], top, -1)
    np.put_along_axis(log_mean, top, exact_top, -1)
    return mean, log_mean


def np_entropy(p, log_p):
    return -np.where(p > 0, p * log_p, 0.0).sum(-1)


def np_reference(p, log_p, strategy):
    """Per-pixel u and the mask maps from per-pass class probabilities [passes, ..., L]."""
    mean, log_mean = np_mean_log(p, log_p)
    ordered = np.sort(mean, axis=-1)
    p1, p2 = ordered[..., -1], ordered[..., -2]
    others = ordered[..., :-1].sum(-1)  # 1 - p_(1)
    if strategy in ("entropy", "mc_dropout"):
        u = np_entropy(mean, log_mean)
    elif strategy == "least_confidence":
        u = others
    elif strategy == "margin":
        u = others + p2
    else:
        u = np.maximum(np_entropy(mean, log_mean) - np_entropy(p, log_p).mean(0), 0.0)
    return u, mean[..., 1:].sum(-1), p1 - p2, mean[..., 1:]


def np_reference_from_logits(logits, strategy):
    log_p = np_log_softmax(logits)
    return np_reference(np.exp(log_p), log_p, strategy)


def np_stats(u, foreground, gap, classes):
    """Masked sums over the last two pixel axes ([..., H, W]), per class [..., C]."""
    target, boundary, class_target = foreground > T, gap < 2 * B, classes > T
    return {
        "target_sum": (u * target).sum((-2, -1)),
        "target_count": target.sum((-2, -1)),
        "boundary_sum": (u * boundary).sum((-2, -1)),
        "boundary_count": boundary.sum((-2, -1)),
        "all_sum": u.sum((-2, -1)),
        "class_target_sum": (u[..., None] * class_target).sum((-3, -2)),
        "class_target_count": class_target.sum((-3, -2)),
    }


def assert_stats_match(stats, expected, rtol=1e-5, atol=1e-6):
    for name, value in expected.items():
        got = np.asarray(getattr(stats, name))
        assert got.shape == value.shape, name
        if name.endswith("count"):
            np.testing.assert_array_equal(got, value, err_msg=name)
        else:
            np.testing.assert_allclose(got, value, rtol=rtol, atol=atol, err_msg=name)


def extreme_logits(rng, passes, n_classes, shape=(6, 7), scale=4.0):
    """Random logits with saturated pixels (|logit| = 40), a uniform one and a two-way tie."""
    z = rng.normal(0, scale, size=(passes, *shape, n_classes)).astype(np.float32)
    signs = np.where(np.arange(n_classes) % 2 == 0, 1.0, -1.0)
    z[:, 0, 0] = 40.0 * signs  # background certain
    z[:, 0, 1] = -40.0
    z[:, 0, 1, -1] = 40.0  # last class certain
    z[:, 0, 2] = 0.0  # uniform
    z[:, 0, 3] = -40.0
    z[:, 0, 3, :2] = 40.0  # tie of the two top classes
    if passes > 1:  # passes that disagree completely
        z[:, 0, 4] = -40.0
        z[np.arange(passes), 0, 4, np.arange(passes) % n_classes] = 40.0
    return z


# ---------------------------------------------------------------- per-pixel formulas


@pytest.mark.parametrize("n_classes", [3, 4])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_multiclass_formulas_and_maps_match_numpy_from_logits(strategy, n_classes):
    rng = np.random.default_rng(n_classes)
    passes = 5 if strategy in scoring.MC_STRATEGIES else 1
    z = extreme_logits(rng, passes, n_classes)
    u, maps = scoring.class_pixel_uncertainty(
        scoring.class_terms_from_logits(jnp.asarray(z)), strategy, "paper"
    )
    u_ref, foreground, gap, classes = np_reference_from_logits(z, strategy)
    assert np.all(np.isfinite(u))
    if passes == 1:  # relative precision down to the saturated pixels' ~e^-40
        np.testing.assert_allclose(u, u_ref, rtol=2e-5, atol=1e-30)
    else:  # the mean's log comes from logsumexp - log n: absolute precision, as binary
        np.testing.assert_allclose(u, u_ref, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(maps.foreground, foreground, rtol=1e-5, atol=1e-30)
    np.testing.assert_allclose(maps.top_gap, gap, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps.classes, classes, rtol=1e-5, atol=1e-30)


def test_saturated_multiclass_entropy_keeps_its_leading_term():
    # logits [40, -40, 0]: H = log S + (40 a + 80 a^2) / S with a = e^-40, S = 1 + a + a^2,
    # i.e. ~41 e^-40; a plain log-softmax rounds log p_0 to 0 and returns ~40 e^-40.
    z = jnp.asarray([[[[40.0, -40.0, 0.0]]]])
    u, _ = scoring.class_pixel_uncertainty(scoring.class_terms_from_logits(z), "entropy", "paper")
    a = np.exp(-40.0)
    s = 1 + a + a * a
    expected = np.log1p(a + a * a) + (40 * a + 80 * a * a) / s
    np.testing.assert_allclose(float(u[0, 0]), expected, rtol=1e-5)
    lc, _ = scoring.class_pixel_uncertainty(
        scoring.class_terms_from_logits(z), "least_confidence", "paper"
    )
    np.testing.assert_allclose(float(lc[0, 0]), (a + a * a) / s, rtol=1e-5)


@pytest.mark.parametrize("n_classes", [3, 4])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_masked_and_class_sums_from_probs_match_numpy(strategy, n_classes):
    rng = np.random.default_rng(10 + n_classes)
    passes = 4 if strategy in scoring.MC_STRATEGIES else 1
    logits = rng.normal(0, 2.5, size=(5, passes, 12, 12, n_classes))
    logits[0, :, :, :, 0] += 30  # background everywhere: empty target and class masks
    logits[1, :, :6, :, 1] += 30  # class 1 only in the top half
    probs = np.exp(np_log_softmax(logits)).astype(np.float32)
    stats = scoring.stats_from_probs(
        probs, np.float32(T), np.float32(B), strategy=strategy, convention="paper"
    )
    p = np.moveaxis(probs.astype(np.float64), 1, 0)  # [passes, batch, H, W, L]
    with np.errstate(divide="ignore"):
        log_p = np.log(p)
    expected = np_stats(*np_reference(p, log_p, strategy))
    assert_stats_match(stats, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(stats.all_count, 144)
    assert stats.target_count[0] == 0 and np.all(stats.class_target_count[0] == 0)
    assert stats.class_target_count[1, 0] >= 72  # the top half of slice 1
    assert np.asarray(stats.class_target_sum).shape == (5, n_classes - 1)


def test_binary_class_fields_are_the_target_fields():
    probs = np.random.default_rng(0).uniform(0, 1, size=(4, 1, 8, 8)).astype(np.float32)
    stats = scoring.stats_from_probs(probs, 0.3, 0.1, strategy="entropy", convention="paper")
    assert stats.class_target_sum.shape == (4, 1) == stats.class_target_count.shape
    np.testing.assert_array_equal(stats.class_target_sum[:, 0], stats.target_sum)
    np.testing.assert_array_equal(stats.class_target_count[:, 0], stats.target_count)


# ---------------------------------------------------------------- reductions to binary


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_class_softmax_reduces_to_the_binary_formulas(strategy):
    rng = np.random.default_rng(20)
    passes = 4 if strategy in scoring.MC_STRATEGIES else 1
    z = rng.normal(0, 5, size=(passes, 4, 6)).astype(np.float32)
    z[:, 0] = [-40.0, -12.0, -0.4, 0.0, 7.0, 40.0]
    z0 = rng.normal(0, 3, size=z.shape).astype(np.float32)
    z0[:, 0] = 0.0
    z1 = (z0 + z).astype(np.float32)
    z = z1 - z0  # the binary logit the pair represents, in float32
    u_bin, p = scoring.pixel_uncertainty(
        scoring.terms_from_logits(jnp.asarray(z)), strategy, "paper"
    )
    u_mc, maps = scoring.class_pixel_uncertainty(
        scoring.class_terms_from_logits(jnp.asarray(np.stack([z0, z1], -1))), strategy, "paper"
    )
    if strategy == "bald":  # a difference of entropies: its rounding is absolute
        np.testing.assert_allclose(u_mc, u_bin, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(u_mc, u_bin, rtol=1e-5, atol=1e-30)
    np.testing.assert_allclose(maps.foreground, p, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(maps.classes[..., 0], p, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(maps.top_gap, np.abs(2 * np.asarray(p, np.float64) - 1), atol=1e-6)


def far_from_thresholds(p, threshold, width, gap=1e-3):
    """Moves pixels whose (mean over passes, axis 0 of p [passes, ...]) probability lies near a
    mask threshold away from it, so that rounding cannot flip a mask."""
    p = p.copy()
    mean = p.astype(np.float64).mean(0)
    for edge in (threshold, 0.5 - width, 0.5 + width):
        near = np.abs(mean - edge) < gap
        p[:, near] = np.float32(0.9)
    return p


# random_predicted is left out: its multi-class definition is argmax != 0 (p > 0.5 with two
# classes), the binary one P > T (see diagnostics.predicted_target_mask); random_label needs
# the true labels, which select_from_probs does not have.
@pytest.mark.parametrize(
    "strategy", [s for s in scoring.STRATEGIES if s not in ("random_predicted", "random_label")]
)
def test_two_class_probs_select_exactly_as_the_binary_path(strategy):
    rng = np.random.default_rng(21)
    mc = strategy in scoring.MC_STRATEGIES
    p1 = rng.beta(0.4, 0.4, size=(3 if mc else 1, 14, 8, 8)).astype(np.float32)
    p1 = far_from_thresholds(p1, T, B)
    p1 = p1 if mc else p1[0]
    p1[..., 2, :, :] = 0.01  # an empty target mask
    pair = np.stack([np.float32(1) - p1, p1], axis=-3)  # [.., N, 2, H, W]
    labelled = np.zeros(14, bool)
    labelled[[3, 8]] = True
    common = dict(strategy=strategy, labelled=labelled, target_threshold=T, boundary_width=B)
    for mode in MODES:
        for merge in selection.MERGES:
            for aggregation in selection.AGGREGATIONS:
                options = dict(common, mode=mode, merge=merge, aggregation=aggregation)
                binary = selection.select_from_probs(p1, 7, batch_size=5, **options)
                two = selection.select_from_probs(pair, 7, batch_size=5, **options)
                assert two.tolist() == binary.tolist(), (mode, merge, aggregation)
                if mode in ("target", "selective") and strategy != "random":
                    balanced = selection.select_from_probs(
                        pair, 7, batch_size=5, class_balanced=True, **options
                    )
                    assert balanced.tolist() == binary.tolist(), (mode, merge, aggregation)


# ---------------------------------------------------------------- the U-Net's own logits


@pytest.fixture(scope="module")
def tiny_multiclass_model():
    model = UNet(base_width=4, depth=2, dropout_rate=0.5, head_bias_prior=0.2, num_logits=4)
    variables = init_variables(model, jax.random.key(0), 32, 32)
    # The untrained head's logits are nearly collinear; a random head spreads them so that the
    # masks are neither empty nor full and every class has target pixels.
    params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    head = np.random.default_rng(0).normal(0, 6, params["head"]["kernel"].shape)
    params["head"]["kernel"] = jnp.asarray(head, jnp.float32)
    params["head"]["bias"] = jnp.asarray([4.0, 0.0, 0.0, 0.0], jnp.float32)
    variables = {**variables, "params": params}
    images = np.random.default_rng(4).standard_normal((6, 32, 32)).astype(np.float32)
    return model, variables, images


def _score_pool(model, variables, images, ids, batch_size, strategy, passes=3):
    return scoring.score_pool(
        model,
        variables,
        images,
        ids,
        jax.random.key(7),
        strategy=strategy,
        convention="paper",
        target_threshold=T,
        boundary_width=B,
        passes=passes,
        batch_size=batch_size,
    )


@pytest.mark.parametrize("strategy", ["entropy", "margin"])
def test_single_pass_unet_scores_match_numpy_on_its_logits(tiny_multiclass_model, strategy):
    model, variables, images = tiny_multiclass_model
    stats = _score_pool(model, variables, images, np.arange(6), 4, strategy, passes=1)
    logits = np.asarray(jax.jit(model.apply)(variables, images), np.float64)  # [6, H, W, 4]
    assert logits.shape == (6, 32, 32, 4)
    expected = np_stats(*np_reference_from_logits(logits[None], strategy))
    assert 0 < expected["target_count"].min() and expected["target_count"].max() < 1024
    assert 0 < expected["boundary_count"].sum() < 6 * 1024
    assert np.all(expected["class_target_count"].sum(0) > 0)  # every class has target pixels
    assert_stats_match(stats, expected, rtol=1e-4, atol=1e-4)


def test_mc_unet_scores_match_numpy_and_do_not_depend_on_batching(tiny_multiclass_model):
    model, variables, images = tiny_multiclass_model
    ids = np.arange(6)
    a = _score_pool(model, variables, images, ids, 4, "bald")  # 2 batches, the last padded
    b = _score_pool(model, variables, images, ids, 6, "bald")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-5)
    logits = jax.jit(scoring.mc_logits, static_argnums=(0, 5))(
        model, variables, images, jnp.asarray(ids, jnp.int32), jax.random.key(7), 3
    )
    assert logits.shape == (6, 3, 32, 32, 4)
    z = np.moveaxis(np.asarray(logits, np.float64), 1, 0)  # [passes, batch, H, W, L]
    expected = np_stats(*np_reference_from_logits(z, "bald"))
    assert_stats_match(b, expected, rtol=2e-3, atol=1e-3)
    assert expected["all_sum"].min() > 0  # dropout passes disagree: not a trivial zero


def test_empty_pool_stats_have_per_class_columns(tiny_multiclass_model):
    model, variables, images = tiny_multiclass_model
    stats = _score_pool(model, variables, images, np.arange(0), 4, "entropy", passes=1)
    assert stats.target_sum.shape == (0,) and stats.class_target_sum.shape == (0, 3)
    binary = UNet(base_width=4, depth=2)
    channels = 1 if images.ndim == 3 else images.shape[-1]
    binary_variables = init_variables(binary, jax.random.key(0), 32, 32, channels=channels)
    stats = _score_pool(binary, binary_variables, images, np.arange(0), 4, "entropy", passes=1)
    assert stats.class_target_count.shape == (0, 1)


def test_official_convention_refuses_a_multiclass_model(tiny_multiclass_model):
    model, variables, images = tiny_multiclass_model
    with pytest.raises(ValueError, match="'official' is binary only"):
        scoring.score_pool(
            model,
            variables,
            images,
            np.arange(2),
            jax.random.key(7),
            strategy="entropy",
            convention="official",
            target_threshold=T,
            boundary_width=B,
            passes=1,
            batch_size=2,
        )


# ---------------------------------------------------------------- class-balanced stream


def class_stats(target_sum, target_count, boundary_sum, class_sum, class_count):
    n = len(target_sum)
    f = lambda x: np.asarray(x, np.float32)  # noqa: E731
    return scoring.SliceStats(
        f(target_sum),
        f(target_count),
        f(boundary_sum),
        f(np.asarray(boundary_sum) > 0),
        np.zeros(n, np.float32),
        np.full(n, 100, np.float32),
        f(class_sum),
        f(class_count),
    )


def hand_worked_stats():
    # Class 1 (large) fills slices 0-3; class 2 (small, e.g. enhancing tumour) only slices 4, 5;
    # slice 6 has target pixels (1 - p_0 > T) but no pixel of any one class above T.
    class_sum = [[9, 0], [8, 0], [7, 0], [6, 0], [0, 0.5], [0, 0.2], [0, 0]]
    class_count = [[9, 0], [8, 0], [7, 0], [6, 0], [0, 1], [0, 1], [0, 0]]
    return class_stats(
        [9, 8, 7, 6, 0.5, 0.2, 3], [9, 8, 7, 6, 1, 1, 2], [1, 2, 9, 8, 0, 0.1, 0],
        class_sum, class_count,
    )  # fmt: skip


def test_class_balanced_gives_a_small_class_slots_as_worked_by_hand():
    stats, ids = hand_worked_stats(), np.arange(100, 107)
    plain = selection.select(stats, ids, 4, mode="selective")
    # target top-2 {0, 1}, boundary top-2 {2, 3}: the small class gets nothing.
    assert plain.ids.tolist() == [100, 101, 102, 103]
    # balanced target order: class 1 -> 0, class 2 -> 4, 1 -> 1, 2 -> 5, 1 -> 2, 1 -> 3 (class 2
    # used up yields its turns), then the plain target ranking: 6.
    order, chooser = selection.balanced_target_order(
        *selection.class_target_scores(stats, "sum"), np.array([0, 1, 2, 3, 6, 4, 5])
    )
    assert order.tolist() == [0, 4, 1, 5, 2, 3, 6] and chooser.tolist() == [1, 2, 1, 2, 1, 1, 0]
    q = selection.select(stats, ids, 4, mode="selective", class_balanced=True)
    assert q.ids.tolist() == [100, 104, 102, 103]
    assert q.streams == ("target:1", "target:2", "boundary", "boundary")
    np.testing.assert_allclose(q.scores, [9, 0.5, 9, 8])
    q = selection.select(stats, ids, 4, mode="selective", merge="interleave", class_balanced=True)
    assert q.ids.tolist() == [100, 102, 104, 103]  # t1 b1 t2 b2
    q = selection.select(stats, ids, 7, mode="target", class_balanced=True)
    assert q.ids.tolist() == [100, 104, 101, 105, 102, 103, 106]
    assert q.streams[-1] == "target" and q.scores[-1] == 3
    # mean aggregation ranks class 2 by its mean (0.5 vs 0.2): same order here.
    q = selection.select(stats, ids, 2, mode="target", aggregation="mean", class_balanced=True)
    assert q.ids.tolist() == [100, 104]


def binary_like(stats, with_class_fields):
    """The binary path's stats: class fields equal to the target fields, or absent."""
    fields = stats._asdict()
    fields["class_target_sum"] = fields["target_sum"][:, None] if with_class_fields else None
    fields["class_target_count"] = fields["target_count"][:, None] if with_class_fields else None
    return scoring.SliceStats(**fields)


def random_stats(rng, n, n_classes):
    class_count = rng.integers(0, 5, (n, n_classes)) * (rng.uniform(size=(n, n_classes)) < 0.5)
    class_sum = rng.uniform(0, 5, (n, n_classes)) * (class_count > 0)
    extra = rng.integers(0, 3, n)  # target pixels under no single class
    boundary_count = rng.integers(0, 5, n) * (rng.uniform(size=n) < 0.7)
    return class_stats(
        class_sum.sum(1) + extra * 0.1,
        class_count.sum(1) + extra,
        rng.uniform(0, 5, n) * (boundary_count > 0),
        class_sum,
        class_count,
    )


@pytest.mark.parametrize("mode", ["target", "selective"])
def test_class_balanced_with_one_class_is_the_plain_query(mode):
    rng = np.random.default_rng(30)
    for trial in range(20):
        n = int(rng.integers(1, 30))
        stats = binary_like(random_stats(rng, n, 1), with_class_fields=trial % 2 == 0)
        candidates = np.sort(rng.choice(100, n, replace=False))
        k = int(rng.integers(1, n + 3))
        for merge in selection.MERGES:
            options = dict(mode=mode, merge=merge, aggregation=("sum", "mean")[trial % 2])
            plain = selection.select(stats, candidates, k, **options)
            balanced = selection.select(stats, candidates, k, class_balanced=True, **options)
            assert balanced.ids.tolist() == plain.ids.tolist()
            assert balanced.streams == plain.streams
            np.testing.assert_array_equal(balanced.scores, plain.scores)


@pytest.mark.parametrize("merge", selection.MERGES)
def test_class_balanced_returns_exactly_min_k_u_distinct_slices(merge):
    rng = np.random.default_rng(31)
    for _ in range(30):
        n_pool, n_classes = int(rng.integers(1, 40)), int(rng.integers(2, 5))
        labelled = rng.uniform(size=n_pool) < 0.4
        candidates = np.flatnonzero(~labelled)
        if len(candidates) == 0:
            continue
        k = int(rng.integers(1, n_pool + 3))
        stats = random_stats(rng, len(candidates), n_classes)
        for mode in ("target", "selective"):
            q = selection.select(stats, candidates, k, mode=mode, merge=merge, class_balanced=True)
            assert len(q.ids) == min(k, len(candidates)) == len(set(q.ids.tolist()))
            assert not labelled[q.ids].any() and len(q.streams) == len(q.scores) == len(q.ids)
        order, _ = selection.balanced_target_order(
            *selection.class_target_scores(stats, "sum"), np.arange(len(candidates))[::-1]
        )
        assert sorted(order.tolist()) == list(range(len(candidates)))


def test_class_balanced_select_from_probs_takes_the_small_class():
    # 3 classes; class 2 appears only in slice 5, as a small uncertain blob.
    rng = np.random.default_rng(32)
    logits = rng.normal(0, 0.5, size=(8, 3, 8, 8))
    logits[:, 0] += 2.0
    logits[:5, 1, :, :4] += 2.5  # class 1: large uncertain areas in slices 0-4
    logits[5, 2, :2, :2] += 2.5
    logits[:, 2, :, :] -= np.where(np.arange(8)[:, None, None] == 5, 0.0, 6.0)
    probs = np.exp(np_log_softmax(np.moveaxis(logits, 1, -1)))
    probs = np.moveaxis(probs, -1, 1).astype(np.float32)  # [N, 3, H, W]
    options = dict(strategy="entropy", mode="target", target_threshold=T, boundary_width=B)
    plain = selection.select_from_probs(probs, 3, **options)
    balanced = selection.select_from_probs(probs, 3, class_balanced=True, **options)
    assert 5 not in plain.tolist() and balanced.tolist()[1] == 5


# ---------------------------------------------------------------- refusals


def test_multiclass_refusals():
    probs = np.full((4, 3, 8, 8), 1 / 3, np.float32)
    with pytest.raises(ValueError, match="probs: .*binary only"):
        selection.select_from_probs(probs, 2, strategy="entropy", convention="official")
    with pytest.raises(ValueError, match="probs: .*binary only"):
        selection.select_from_probs(probs[None], 2, strategy="bald", convention="official")
    bad = probs.copy()
    bad[1, 0, 2, 2] += 0.01
    with pytest.raises(ValueError, match="probs: class probabilities must sum to 1"):
        selection.select_from_probs(bad, 2, strategy="entropy")
    selection.select_from_probs(probs + 2e-5, 2, strategy="entropy")  # within the tolerance
    with pytest.raises(ValueError, match="al.class_balanced"):
        selection.select_from_probs(
            probs[:, 1], 2, strategy="entropy", convention="official", class_balanced=True
        )
    with pytest.raises(ValueError, match="al.class_balanced"):
        selection.validate_options("entropy", "all", "paper", "sum", "union", class_balanced=True)
    stats = hand_worked_stats()
    with pytest.raises(ValueError, match="al.class_balanced"):
        selection.select(stats, np.arange(7), 2, mode="selective", convention="official",
                         class_balanced=True)  # fmt: skip
    with pytest.raises(ValueError, match=r"\(T, N, C\+1, H, W\)"):
        selection.select_from_probs(probs[None, None], 2, strategy="bald")
    with pytest.raises(ValueError, match="binary only"):
        scoring.class_pixel_uncertainty(
            scoring.class_terms_from_probs(jnp.full((1, 8, 8, 3), 1 / 3)), "entropy", "official"
        )
