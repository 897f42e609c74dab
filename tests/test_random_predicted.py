"""random_predicted: uniform among unlabelled slices with predicted target, topped up from the
rest; the predicted-target counts of the U-Net against NumPy; the annotation-cost counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selal_jax.core import scoring, selection
from selal_jax.core.models import UNet, init_variables
from selal_jax.core.parallel import Batcher
from selal_jax.run import diagnostics, label_store

T = 0.3


def test_random_predicted_is_a_strategy_but_not_an_uncertainty():
    assert "random_predicted" in scoring.STRATEGIES
    assert "random_predicted" not in scoring.UNCERTAINTY_STRATEGIES
    assert scoring.UNCERTAINTY_STRATEGIES == (
        "entropy",
        "least_confidence",
        "margin",
        "mc_dropout",
        "bald",
    )
    selection.validate_options("random_predicted", "all", "paper", "sum", "union", True)


def test_enough_predicted_target_draws_only_among_them_as_select_random_does():
    rng = np.random.default_rng(3)
    for trial in range(20):
        n = int(rng.integers(5, 40))
        candidates = np.sort(rng.choice(200, n, replace=False))
        pixels = rng.integers(0, 3, n) * (rng.uniform(size=n) < 0.6)
        k = int(rng.integers(1, max((pixels > 0).sum(), 1) + 1))
        if k > (pixels > 0).sum():
            continue
        key = jax.random.key(trial)
        q = selection.select_random_predicted(candidates, pixels, k, key)
        assert len(q) == len(set(q.ids.tolist())) == k
        assert set(q.ids.tolist()) <= set(candidates[pixels > 0].tolist())
        assert q.streams == ("random_predicted",) * k and np.isnan(q.scores).all()
        # the draw is select_random's on the slices with predicted target, from the same key
        same = selection.select_random(candidates[pixels > 0], k, key)
        assert q.ids.tolist() == same.ids.tolist()


def test_too_few_predicted_target_takes_all_and_tops_up_from_the_rest():
    candidates = np.arange(10, 30)
    pixels = np.zeros(20, int)
    pixels[[2, 7, 11]] = [5, 1, 9]
    key = jax.random.key(5)
    q = selection.select_random_predicted(candidates, pixels, 8, key)
    assert len(set(q.ids.tolist())) == 8 and set(q.ids.tolist()) <= set(candidates.tolist())
    assert set(q.ids[:3].tolist()) == {12, 17, 21}
    assert q.streams == ("random_predicted",) * 3 + ("random",) * 5
    rest = candidates[pixels == 0]
    topup = selection.select_random(rest, 5, jax.random.fold_in(key, 1))
    assert q.ids[3:].tolist() == topup.ids.tolist()
    # k above the pool: every candidate once
    everything = selection.select_random_predicted(candidates, pixels, 50, key)
    assert sorted(everything.ids.tolist()) == candidates.tolist()
    # no predicted target at all: plain random from the round key's top-up
    none = selection.select_random_predicted(candidates, np.zeros(20, int), 4, key)
    assert none.streams == ("random",) * 4
    with pytest.raises(ValueError, match="predicted_pixels"):
        selection.select_random_predicted(candidates, pixels[:5], 4, key)


def test_same_key_same_query_other_key_other_query():
    candidates = np.arange(100)
    pixels = (np.arange(100) % 3 == 0).astype(int)
    a = selection.select_random_predicted(candidates, pixels, 10, jax.random.key(1))
    b = selection.select_random_predicted(candidates, pixels, 10, jax.random.key(1))
    c = selection.select_random_predicted(candidates, pixels, 10, jax.random.key(2))
    assert a.ids.tolist() == b.ids.tolist() != c.ids.tolist()


def test_select_from_probs_random_predicted_binary_and_multiclass():
    rng = np.random.default_rng(0)
    probs = np.full((12, 4, 4), 0.05, np.float32)
    probs[[1, 4, 9], 2, 2] = 0.35  # P > T = 0.3 in three slices
    labelled = np.zeros(12, bool)
    labelled[4] = True
    got = selection.select_from_probs(
        probs, 2, strategy="random_predicted", labelled=labelled, target_threshold=T, seed=3
    )
    assert sorted(got.tolist()) == [1, 9]
    got = selection.select_from_probs(
        probs, 4, strategy="random_predicted", labelled=labelled, target_threshold=T, seed=3
    )
    assert set(got[:2].tolist()) == {1, 9} and 4 not in got.tolist() and len(set(got)) == 4
    # multi-class: argmax != background, whatever T (slice 5 has 1 - p_0 = 0.45 > T but argmax 0)
    classes = np.zeros((8, 3, 4, 4), np.float32)
    classes[:, 0] = 1.0
    classes[5, :, 0, 0] = [0.55, 0.25, 0.2]
    classes[[2, 6], :, 1, 1] = [0.3, 0.1, 0.6]
    got = selection.select_from_probs(
        classes, 2, strategy="random_predicted", target_threshold=T, seed=int(rng.integers(9))
    )
    assert sorted(got.tolist()) == [2, 6]


@pytest.mark.parametrize("num_logits", [1, 4])
def test_predicted_target_counts_match_numpy_on_the_unet_logits(num_logits):
    model = UNet(
        base_width=4, depth=2, dropout_rate=0.5, head_bias_prior=0.2, num_logits=num_logits
    )
    variables = init_variables(model, jax.random.key(0), 16, 16)
    params = dict(variables["params"])
    head = dict(params["head"])
    head["kernel"] = jnp.asarray(
        np.random.default_rng(0).normal(0, 6, head["kernel"].shape), jnp.float32
    )
    params["head"] = head
    variables = {**variables, "params": params}
    images = np.random.default_rng(4).standard_normal((7, 16, 16)).astype(np.float32)
    ids = np.array([6, 0, 3, 5, 1])
    got = diagnostics.predicted_target_counts(model, variables, images, ids, Batcher(2), T)
    logits = np.asarray(model.apply(variables, images[ids], False), np.float64)
    if num_logits == 1:
        want = (1 / (1 + np.exp(-logits)) > T).sum(axis=(1, 2))
    else:
        want = (np.argmax(logits, axis=-1) != 0).sum(axis=(1, 2))
    assert got.dtype == np.int64 and got.tolist() == want.tolist()
    assert 0 < want.sum() < want.size * 16 * 16  # neither empty nor full: a real check
    assert diagnostics.predicted_target_counts(
        model, variables, images, [], Batcher(2), T
    ).shape == (0,)


def test_labelled_target_pixels_reads_the_overlaid_labels():
    base = np.zeros((6, 3, 3), np.uint8)
    base[0, 0, :2] = 1  # 2 pixels
    base[2, :, :] = 2  # 9 pixels (class 2 counts as target)
    base[4, 1, 1] = 1  # 1 pixel, replaced below by an imported mask of 3 pixels
    masks = np.zeros((2, 3, 3), np.uint8)
    masks[0, 0, :] = 1
    labels = label_store.OverlaidLabels(base, np.array([4, 5]), masks)
    got = diagnostics.labelled_target_pixels(labels, [4, 0, 2, 5, 1], chunk=2)
    assert got == {"labelled_target_pixels": 2 + 9 + 3, "labelled_slices_with_target": 3}
    assert diagnostics.labelled_target_pixels(labels, []) == {
        "labelled_target_pixels": 0,
        "labelled_slices_with_target": 0,
    }
