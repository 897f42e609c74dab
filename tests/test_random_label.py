"""random_label: uniform among unlabelled slices whose true label has target, topped up from the
rest; the pool's labels read in chunks; the refusals (human annotator, select_from_probs) and the
other new config fields' refusals."""

import jax
import numpy as np
import pytest

from selal_jax.core import scoring, selection
from selal_jax.run import diagnostics, validation
from tests.helpers import smoke_config


def test_random_label_is_a_random_strategy():
    assert "random_label" in scoring.STRATEGIES and "random_label" in scoring.RANDOM_STRATEGIES
    assert "random_label" not in scoring.UNCERTAINTY_STRATEGIES


def test_random_label_draws_as_select_random_on_the_slices_with_target_then_tops_up():
    candidates = np.arange(50, 80)
    true_pixels = np.zeros(30, int)
    true_pixels[[1, 4, 5, 20, 28]] = [3, 1, 7, 2, 9]
    key = jax.random.key(8)
    q = selection.select_random_label(candidates, true_pixels, 3, key)
    assert (
        q.ids.tolist() == selection.select_random(candidates[true_pixels > 0], 3, key).ids.tolist()
    )
    assert q.streams == ("random_label",) * 3 and np.isnan(q.scores).all()
    q = selection.select_random_label(candidates, true_pixels, 9, key)
    assert sorted(q.ids[:5].tolist()) == [51, 54, 55, 70, 78]
    assert q.streams == ("random_label",) * 5 + ("random",) * 4
    topup = selection.select_random(candidates[true_pixels == 0], 4, jax.random.fold_in(key, 1))
    assert q.ids[5:].tolist() == topup.ids.tolist()
    with pytest.raises(ValueError, match="true_pixels"):
        selection.select_random_label(candidates, true_pixels[:4], 3, key)


class ChunkedOnly:
    """Labels [N, H, W] that refuse a read of more than `limit` slices at once."""

    def __init__(self, labels, limit):
        self.labels, self.limit, self.reads = labels, limit, 0

    def __getitem__(self, index):
        index = np.asarray(index)
        assert index.ndim == 1 and len(index) <= self.limit, f"read of {index.shape} slices"
        self.reads += 1
        return self.labels[index]


def test_target_pixel_counts_read_the_pool_in_chunks_in_the_order_given():
    gen = np.random.default_rng(9)
    labels = (gen.uniform(size=(70, 6, 5)) < 0.1) * gen.integers(1, 4, (70, 6, 5))
    labels = labels.astype(np.uint8)
    ids = gen.permutation(70)[:53]
    pool = ChunkedOnly(labels, limit=8)
    got = diagnostics.target_pixel_counts(pool, ids, chunk=8)
    assert got.tolist() == [int((labels[i] > 0).sum()) for i in ids]
    assert pool.reads == 7  # ceil(53 / 8)
    assert diagnostics.target_pixel_counts(pool, [], chunk=8).shape == (0,)


def test_random_label_and_the_new_fields_are_refused_with_one_line_naming_the_field():
    def refused(match, **fields):
        with pytest.raises(ValueError, match=match) as error:
            validation.validate_config(smoke_config(**fields))
        assert "\n" not in str(error.value)

    refused(
        "al.strategy: 'random_label'.*human",
        **{"al.strategy": "random_label", "al.annotator": "human"},
    )
    refused("al.max_per_case: must be >= 0", **{"al.max_per_case": -1})
    refused("al.min_slice_gap: must be >= 0", **{"al.min_slice_gap": -2})
    refused("al.sampling_beta", **{"al.sampling_beta": 0.0})
    refused("al.sampling: unknown", **{"al.sampling": "top-k"})
    for field, value in (("al.sampling", "softmax"), ("al.max_per_case", 2)):
        refused(
            f"{field}: needs al.convention='paper'", **{"al.convention": "official", field: value}
        )
    validation.validate_config(smoke_config(**{"al.strategy": "random_label"}))
    with pytest.raises(ValueError, match="random_label"):
        selection.select_from_probs(np.full((4, 8, 8), 0.5), 2, strategy="random_label")
