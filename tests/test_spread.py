"""Volume spread (al.max_per_case, al.min_slice_gap): a hand-worked walk, an independent
reference of the single-ranking walk, the limits in every strategy's query, the fill when they
cannot be met, and in every round of real runs (read from the records' queried_slices)."""

import collections
import logging

import jax
import numpy as np

from selal_jax.core import rng, scoring, selection
from selal_jax.core.spread import Spread
from selal_jax.run import loop

SPREAD_WARNING = "volume spread"


def all_stats(score) -> scoring.SliceStats:
    n = len(score)
    z = np.zeros(n, np.float32)
    return scoring.SliceStats(z, z, z, z, np.asarray(score, np.float32), np.full(n, 9, np.float32))


def spread_warnings(caplog) -> int:
    return sum(SPREAD_WARNING in r.getMessage() for r in caplog.records)


def test_a_hand_worked_walk_and_its_fill(caplog):
    # cases 0 0 0 1 1 2 at slices 0 2 5 0 1 0; ranking = pool order (descending scores)
    spread = Spread(np.array([0, 0, 0, 1, 1, 2]), np.array([0, 2, 5, 0, 1, 0]), 2, 3)
    stats, ids = all_stats([6, 5, 4, 3, 2, 1]), np.arange(10, 16)
    # 10 taken; 11 two slices from 10 (< 3): skipped; 12 taken (case 0's second); 13 taken;
    # 14 one slice from 13: skipped; 15 taken
    with caplog.at_level(logging.WARNING):
        q = selection.select(stats, ids, 4, mode="all", spread=spread)
    assert q.ids.tolist() == [10, 12, 13, 15] and spread_warnings(caplog) == 0
    np.testing.assert_array_equal(q.scores, [6, 4, 3, 1])
    # k = 6 cannot be met: the skipped 11 then 14 fill it, logged once
    with caplog.at_level(logging.WARNING):
        q = selection.select(stats, ids, 6, mode="all", spread=spread)
    assert q.ids.tolist() == [10, 12, 13, 15, 11, 14] and spread_warnings(caplog) == 1
    # only max_per_case = 1: 10, 13, 15, then the skipped 11, 12, 14 in order
    only_max = Spread(spread.case, spread.slice_index, 1, 0)
    assert selection.select(stats, ids, 5, mode="all", spread=only_max).ids.tolist() == [
        10, 13, 15, 11, 12,
    ]  # fmt: skip


def reference_walk(order, case, index, k, max_per_case, gap) -> list[int]:
    """The single-ranking walk by hand: take what the limits allow, then the skipped ones."""
    taken, skipped = [], []
    for p in order:
        if len(taken) == min(k, len(order)):
            break
        same = [index[t] for t in taken if case[t] == case[p]]
        if (max_per_case and len(same) >= max_per_case) or (
            gap and any(abs(index[p] - s) < gap for s in same)
        ):
            skipped.append(p)
        else:
            taken.append(p)
    return taken + skipped[: min(k, len(order)) - len(taken)]


def random_limits(gen, n):
    case = gen.integers(0, 1 + n // 4, n)
    index = np.zeros(n, int)
    for c in set(case.tolist()):  # distinct slices of one case
        members = np.flatnonzero(case == c)
        index[members] = np.sort(gen.choice(40, len(members), replace=False))
    return case, index, int(gen.integers(0, 4)), int(gen.integers(0, 5))


def test_single_ranking_and_random_walks_match_the_reference():
    gen = np.random.default_rng(5)
    for trial in range(40):
        n = int(gen.integers(1, 30))
        case, index, max_per_case, gap = random_limits(gen, n)
        spread = Spread(case, index, max_per_case, gap)
        score = gen.permutation(n) + 1.0
        ids, k = np.sort(gen.choice(500, n, replace=False)), int(gen.integers(1, n + 3))
        ranked = selection.select(all_stats(score), ids, k, mode="all", spread=spread)
        want = reference_walk(np.argsort(-score), case, index, k, max_per_case, gap)
        assert ranked.ids.tolist() == ids[want].tolist()
        key = jax.random.key(trial)
        drawn = selection.select_random(ids, k, key, spread)
        want = reference_walk(np.asarray(jax.random.permutation(key, n)), case, index, k,
                              max_per_case, gap)  # fmt: skip
        assert drawn.ids.tolist() == ids[want].tolist()


def limits_hold(case_of, index_of, ids, max_per_case, gap) -> bool:
    by_case = collections.defaultdict(list)
    for i in ids:
        by_case[case_of[i]].append(index_of[i])
    return all(
        (not max_per_case or len(v) <= max_per_case)
        and (not gap or all(abs(a - b) >= gap for j, a in enumerate(v) for b in v[:j]))
        for v in by_case.values()
    )


def queries(stats, ids, pixels, k, spread, key) -> dict:
    """Every query path: rankings (top-k and sampled), merges, class balance, random draws."""
    paths = {
        f"select {options}": lambda options=options: selection.select(
            stats, ids, k, key=key, spread=spread, **options
        )
        for options in (
            dict(mode="all"),
            dict(mode="boundary", sampling="softrank"),
            dict(mode="selective"),
            dict(mode="selective", merge="interleave", sampling="power"),
            dict(mode="selective", class_balanced=True, sampling="power"),
            dict(mode="target", class_balanced=True),
        )
    }
    paths["random"] = lambda: selection.select_random(ids, k, key, spread)
    for name, draw in (
        ("random_predicted", selection.select_random_predicted),
        ("random_label", selection.select_random_label),
    ):
        paths[name] = lambda draw=draw: draw(ids, pixels, k, key, spread)
    return paths


def pool_stats(gen, n):
    counts = [gen.integers(0, 3, n) * (gen.uniform(size=n) < 0.7) for _ in range(3)]
    return scoring.SliceStats(
        gen.uniform(0, 5, n) * (counts[0] > 0), counts[0] * 1.0,
        gen.uniform(0, 5, n) * (counts[1] > 0), counts[1] * 1.0,
        gen.uniform(0, 5, n), np.full(n, 9.0),
        np.stack([gen.uniform(0, 5, n) * (counts[2] > 0), gen.uniform(0, 5, n) * (counts[0] > 0)], 1),
        np.stack([counts[2], counts[0]], 1) * 1.0,
    ), counts[2]  # fmt: skip


def test_every_query_keeps_the_limits_or_is_filled_with_one_warning(caplog):
    gen = np.random.default_rng(6)
    outcomes = collections.Counter()
    for trial in range(25):
        n = int(gen.integers(2, 40))
        case, index, max_per_case, gap = random_limits(gen, n)
        spread = Spread(case, index, max_per_case or 1, gap)
        (stats, pixels), ids = pool_stats(gen, n), np.arange(n) + 1000
        k = int(gen.integers(1, n + 1))
        for name, draw in queries(stats, ids, pixels, k, spread, sample_key(trial)).items():
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                q = draw()
            assert len(q.ids) == len(set(q.ids.tolist())) == k, name
            kept = limits_hold(case, index, (q.ids - 1000).tolist(), max_per_case or 1, gap)
            # a fill adds slices the limits refused: the query breaks them, and says so once
            assert spread_warnings(caplog) == (0 if kept else 1), name
            outcomes[kept] += 1
    assert outcomes[True] and outcomes[False]  # both were exercised


def test_limits_that_never_bind_give_the_query_without_limits():
    gen = np.random.default_rng(7)
    for trial in range(15):
        n = int(gen.integers(1, 30))
        case, index, _, _ = random_limits(gen, n)
        (stats, pixels), ids = pool_stats(gen, n), np.sort(gen.choice(800, n, replace=False))
        k = int(gen.integers(1, n + 2))
        # at most n per case and gap 1 (distinct slices of a case are >= 1 apart): no refusal
        loose = Spread(case, index, n, 1)
        key = sample_key(trial)
        with_limits = queries(stats, ids, pixels, k, loose, key)
        for name, draw in queries(stats, ids, pixels, k, None, key).items():
            a, b = draw(), with_limits[name]()
            assert a.ids.tolist() == b.ids.tolist() and a.streams == b.streams, name


def sample_key(i: int):
    return rng.sample_key(rng.round_key(rng.root_key(3), i))


def run_smoke(workdir, cohort_root, **fields):
    from tests.helpers import smoke_config

    config = smoke_config(**{"data.root": cohort_root, "train.max_epochs": 1, **fields})
    history = loop.run(config, str(workdir))
    from selal_jax.data import loading

    return config, history, loading.load_dataset(config.data, str(workdir)).train


def check_queried_slices(history, pool):
    """queried_slices name each queried pool id's case and slice, in selection order."""
    for record in history:
        want = [[pool.cases[pool.subject[i]], int(pool.slice_index[i])] for i in record["queried"]]
        assert record["queried_slices"] == want


def test_limits_hold_in_every_round_of_a_sampled_run(tmp_path, cohort_root):
    config, history, pool = run_smoke(
        tmp_path, cohort_root, **{"al.sampling": "power", "al.max_per_case": 2,
                                  "al.min_slice_gap": 3}
    )  # fmt: skip
    check_queried_slices(history, pool)
    queried = [r for r in history if r["queried"]]
    assert len(queried) == config.al.rounds
    second_slices = 0
    for record in queried:
        assert len(record["queried"]) == config.al.query_size
        assert record["sampling"] == "power" and record["max_per_case"] == 2
        cases, index = zip(*record["queried_slices"], strict=True)
        assert limits_hold(cases, index, range(len(cases)), 2, 3)
        second_slices += not limits_hold(cases, index, range(len(cases)), 1, 0)
    assert second_slices  # a case gave two slices, 3 or more apart: the gap was tested
    assert len({c for r in queried for c, _ in r["queried_slices"]}) >= 3  # spread out


def test_random_label_run_is_filled_when_the_limits_cannot_be_met(tmp_path, cohort_root, caplog):
    # one slice per case and more slices than training cases: the limits cannot fill a query
    with caplog.at_level(logging.WARNING):
        config, history, pool = run_smoke(
            tmp_path, cohort_root, **{"al.strategy": "random_label", "al.mode": "all",
                                      "al.max_per_case": 1, "al.rounds": 1, "al.query_size": 9}
        )  # fmt: skip
    n_cases = len(set(pool.subject.tolist()))
    assert n_cases < 9
    check_queried_slices(history, pool)
    record = history[0]
    assert len(record["queried"]) == len(set(record["queried"])) == 9
    assert spread_warnings(caplog) == 1  # logged once
    # the first n_cases slices are one per case, the rest fills from what was skipped
    first = [case for case, _ in record["queried_slices"][:n_cases]]
    assert len(set(first)) == n_cases
    # random_label draws among slices whose true label has target
    has_target = (np.asarray(pool.labels).reshape(len(pool), -1) > 0).any(axis=1)
    for i, stream in zip(record["queried"], record["queried_streams"], strict=True):
        assert stream in ("random_label", "random")
        assert has_target[i] == (stream == "random_label")
