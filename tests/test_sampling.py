"""Stochastic acquisition (al.sampling): float64 NumPy references of each mode's order, the
Plackett-Luce inclusion probabilities by enumeration, the limit beta -> infinity (top-k), and
invariance to the batch size and to the order of the pool."""

import itertools
import math

import jax
import numpy as np
import pytest

from selal_jax.core import rng, sampling, scoring, selection
from selal_jax.core.spread import Spread

MODES = ("power", "softmax", "softrank")
ROOT = rng.root_key(7)


def sample_key(i: int):
    return rng.sample_key(rng.round_key(ROOT, i))


def np_gumbel(stream_key, ids) -> np.ndarray:
    """Each id's noise on its own (no vmap, no padding): the 52 bits of its key's two words."""
    out = []
    for i in ids:
        a, b = (
            int(w) for w in np.asarray(jax.random.bits(rng.noise_key(stream_key, int(i)), (2,)))
        )
        u = (((a >> 6) << 26) + (b >> 6) + 0.5) / 2.0**52
        out.append(-math.log(-math.log(u)))
    return np.array(out)


def np_sampled_order(score, empty, ids, mode, beta, g) -> list[int]:
    """Gumbel-top-k by hand in float64: (tier, -(log-weight + G), id) ascending."""
    nonempty = [j for j in range(len(score)) if not empty[j]]
    by_rank = sorted(nonempty, key=lambda j: (-score[j], ids[j]))
    items = []
    for j in range(len(score)):
        if empty[j]:
            items.append((2, -g[j], ids[j], j))
        elif mode == "power" and score[j] <= 0:
            items.append((1, -g[j], ids[j], j))
        else:
            if mode == "power":
                logw = beta * math.log(score[j])
            elif mode == "softmax":
                logw = beta * score[j]
            else:
                logw = -beta * math.log(1 + by_rank.index(j))
            items.append((0, -(logw + g[j]), ids[j], j))
    return [item[-1] for item in sorted(items)]


@pytest.mark.parametrize("mode", MODES)
def test_sampled_order_matches_a_float64_numpy_gumbel_top_k(mode):
    gen = np.random.default_rng(1)
    for trial in range(6):
        n = int(gen.integers(1, 30))
        ids = np.sort(gen.choice(5000, n, replace=False))
        empty = gen.uniform(size=n) < 0.3
        score = np.where(empty, 0.0, gen.uniform(0, 4, n) * (gen.uniform(size=n) < 0.85))
        beta = float(gen.choice([0.3, 1.0, 4.0]))
        key = rng.stream_key(sample_key(trial), "target")
        got = sampling.sampled_order(score, empty, ids, mode, beta, key)
        want = np_sampled_order(score, empty, ids, mode, beta, np_gumbel(key, ids))
        assert got.tolist() == want


def pl_inclusion(weights: np.ndarray, k: int) -> np.ndarray:
    """P(i among the first k) under Plackett-Luce, by enumerating every ordered k-tuple."""
    total = weights.sum()
    inclusion = np.zeros(len(weights))
    for seq in itertools.permutations(range(len(weights)), k):
        p, left = 1.0, total
        for i in seq:
            p *= weights[i] / left
            left -= weights[i]
        inclusion[list(seq)] += p
    return inclusion


def all_stats(score) -> scoring.SliceStats:
    n = len(score)
    z = np.zeros(n, np.float32)
    return scoring.SliceStats(z, z, z, z, np.asarray(score, np.float32), np.full(n, 64, np.float32))


@pytest.mark.parametrize("mode", MODES)
def test_inclusion_frequencies_match_plackett_luce(mode):
    score = np.array([1.5, 0.5, 3.0, 2.0, 1.0])  # pool order is not score order
    beta, k, draws = 1.0, 2, 4000
    weights = {
        "power": score**beta,
        "softmax": np.exp(beta * score),
        "softrank": (1.0 + np.argsort(np.argsort(-score))) ** -beta,
    }[mode]
    want = pl_inclusion(weights, k)
    np.testing.assert_allclose(want.sum(), k)
    ids, stats = np.arange(40, 45), all_stats(score)
    counts = np.zeros(5)
    for d in range(draws):
        q = selection.select(stats, ids, k, mode="all", sampling=mode, key=sample_key(d))
        counts[q.ids - 40] += 1
    tolerance = 4.5 * np.sqrt(want * (1 - want) / draws)
    np.testing.assert_array_less(np.abs(counts / draws - want), tolerance)
    # the test can tell a sample from the top-k and from a uniform draw
    top_k = np.isin(np.arange(5), np.argsort(-score)[:k])
    assert np.abs(want - top_k).max() > 4 * tolerance.max()
    assert np.abs(want - k / 5).max() > 4 * tolerance.max()


def distinct_stats(gen, n, n_classes=2):
    """Every mask non-empty, every score positive and distinct (also as a mean: count 2)."""
    values = [(gen.permutation(n) + 1.0) * 0.37 + gen.uniform(0, 0.1) for _ in range(3)]
    class_sum = np.stack([(gen.permutation(n) + 1.0) * 0.5 for _ in range(n_classes)], 1)
    class_count = (gen.uniform(size=(n, n_classes)) < 0.6) * 2.0
    two = np.full(n, 2.0)
    return scoring.SliceStats(
        values[0], two, values[1], two, values[2], two, class_sum * (class_count > 0), class_count
    )


@pytest.mark.parametrize("mode", MODES)
def test_very_large_beta_gives_the_top_k_query(mode):
    gen = np.random.default_rng(2)
    for trial in range(8):
        n = int(gen.integers(2, 25))
        stats, ids = distinct_stats(gen, n), np.sort(gen.choice(900, n, replace=False))
        k = int(gen.integers(1, n + 2))
        for options in (
            dict(mode="all"),
            dict(mode="target", aggregation="mean"),
            dict(mode="boundary"),
            dict(mode="selective", merge="union"),
            dict(mode="selective", merge="interleave"),
            dict(mode="selective", class_balanced=True),
            dict(mode="target", class_balanced=True),
        ):
            top = selection.select(stats, ids, k, **options)
            drawn = selection.select(
                stats, ids, k, sampling=mode, sampling_beta=1e12, key=sample_key(trial), **options
            )
            assert drawn.ids.tolist() == top.ids.tolist(), options
            assert drawn.streams == top.streams
            np.testing.assert_array_equal(drawn.scores, top.scores)


def mixed_stats(gen, n):
    counts = [gen.integers(0, 4, n) * (gen.uniform(size=n) < 0.7) for _ in range(2)]
    class_count = gen.integers(0, 3, (n, 2)) * (gen.uniform(size=(n, 2)) < 0.5)
    return scoring.SliceStats(
        gen.uniform(0, 5, n) * (counts[0] > 0),
        counts[0].astype(float),
        gen.uniform(0, 5, n) * (counts[1] > 0),
        counts[1].astype(float),
        gen.uniform(0, 9, n),
        np.full(n, 64.0),
        gen.uniform(0, 5, (n, 2)) * (class_count > 0),
        class_count.astype(float),
    )


def permuted(stats, perm):
    return scoring.SliceStats(*(np.asarray(x)[perm] for x in stats))


@pytest.mark.parametrize("mode", MODES)
def test_the_query_does_not_depend_on_the_order_of_the_pool(mode):
    gen = np.random.default_rng(3)
    for trial in range(6):
        n = int(gen.integers(2, 40))
        stats, ids = mixed_stats(gen, n), np.sort(gen.choice(700, n, replace=False))
        case, index = gen.integers(0, 4, n), gen.integers(0, 30, n)
        spread = Spread(case, index, 2, 3)
        perm = gen.permutation(n)
        k = int(gen.integers(1, n + 1))
        for options in (
            dict(mode="all"),
            dict(mode="selective"),
            dict(mode="selective", merge="interleave", aggregation="mean"),
            dict(mode="selective", class_balanced=True, spread=spread),
        ):
            common = dict(sampling=mode, key=sample_key(trial), **options)
            a = selection.select(stats, ids, k, **common)
            if "spread" in options:
                common["spread"] = Spread(case[perm], index[perm], 2, 3)
            b = selection.select(permuted(stats, perm), ids[perm], k, **common)
            assert a.ids.tolist() == b.ids.tolist() and a.streams == b.streams, options
            np.testing.assert_array_equal(a.scores, b.scores)


def test_select_from_probs_sampling_does_not_depend_on_the_batch_size():
    gen = np.random.default_rng(4)
    probs = gen.beta(0.3, 0.3, size=(13, 8, 8)).astype(np.float32)
    labelled = np.zeros(13, bool)
    labelled[[1, 6]] = True
    key = jax.random.key(12)
    picks = {
        batch: selection.select_from_probs(
            probs, 5, strategy="entropy", labelled=labelled, batch_size=batch, sampling="power",
            key=key, target_threshold=0.5, boundary_width=0.2,
        ).tolist()
        for batch in (2, 5, 64)
    }  # fmt: skip
    assert picks[2] == picks[5] == picks[64]
    assert len(set(picks[2])) == 5 and not labelled[picks[2]].any()
    others = {
        tuple(
            selection.select_from_probs(
                probs, 5, strategy="entropy", labelled=labelled, sampling="power",
                key=jax.random.key(s), target_threshold=0.5, boundary_width=0.2,
            ).tolist()
        )
        for s in range(6)
    }  # fmt: skip
    assert len(others) > 1  # the key matters


@pytest.mark.parametrize("mode", MODES)
def test_empty_masks_are_drawn_only_when_nothing_else_is_left(mode):
    # slices 0-3: target pixels with positive scores; 4-5: target pixels scoring 0; 6-9: empty
    score = np.array([2.0, 0.5, 1.0, 3.0, 0.0, 0.0, 0, 0, 0, 0], np.float32)
    count = np.array([3, 1, 2, 4, 2, 1, 0, 0, 0, 0], np.float32)
    z = np.zeros(10, np.float32)
    stats = scoring.SliceStats(score, count, z, z, z, np.full(10, 64, np.float32))
    ids = np.arange(100, 110)
    for d in range(40):
        q = selection.select(stats, ids, 6, mode="target", sampling=mode, key=sample_key(d))
        assert set(q.ids.tolist()) == set(range(100, 106))
        if mode == "power":  # zero weights come after every positive weight
            assert set(q.ids[:4].tolist()) == {100, 101, 102, 103}


def test_sampling_refusals_name_the_field():
    with pytest.raises(ValueError, match="al.sampling: needs al.convention='paper'"):
        selection.validate_options(
            "entropy", "selective", "official", "sum", "union", sampling="power"
        )
    with pytest.raises(ValueError, match="al.sampling: unknown value 'gumbel'"):
        selection.validate_options("entropy", "all", "paper", "sum", "union", sampling="gumbel")
    for beta in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="al.sampling_beta"):
            selection.validate_options(
                "bald", "all", "paper", "sum", "union", sampling="power", sampling_beta=beta
            )
    # random strategies rank nothing: sampling is ignored, also with the official convention
    selection.validate_options("random", "all", "official", "sum", "union", sampling="power")
    with pytest.raises(ValueError, match="key"):
        selection.select_from_probs(
            np.full((4, 8, 8), 0.5), 2, strategy="entropy", sampling="power"
        )


def test_class_balanced_power_sampling_draws_each_class_by_its_own_weights():
    # class 1 in slices 0-3 (scores 9, 8, 7, 6), class 2 only in slices 4, 5 (0.5, 0.2)
    class_sum = np.array([[9, 0], [8, 0], [7, 0], [6, 0], [0, 0.5], [0, 0.2]])
    class_count = (class_sum > 0) * 1.0
    z = np.zeros(6)
    stats = scoring.SliceStats(
        class_sum.sum(1), class_count.sum(1), z, z, z, np.full(6, 64.0), class_sum, class_count
    )
    ids, draws = np.arange(6), 1200
    first = np.zeros((2, 6))
    for d in range(draws):
        q = selection.select(
            stats, ids, 2, mode="target", class_balanced=True, sampling="power", key=sample_key(d)
        )
        assert q.streams == ("target:1", "target:2")  # one slot per class, every draw
        first[0, q.ids[0]] += 1
        first[1, q.ids[1]] += 1
    want = np.array([[9, 8, 7, 6, 0, 0], [0, 0, 0, 0, 0.5, 0.2]])
    want = want / want.sum(1, keepdims=True)  # each class's ranking, sampled on its own
    tolerance = 4.5 * np.sqrt(want * (1 - want) / draws) + 1e-12
    np.testing.assert_array_less(np.abs(first / draws - want), tolerance)
