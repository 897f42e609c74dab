import jax
import numpy as np
import pytest

from selal_jax.core import train
from selal_jax.core.models import UNet, init_variables
from selal_jax.run import fit


def test_a_few_train_steps_lower_the_loss_on_a_fixed_batch():
    model = UNet(base_width=4, depth=2, dropout_rate=0.0)
    tx = train.make_optimizer(1e-2)
    state = train.create_train_state(init_variables(model, jax.random.key(0), 32, 32), tx)
    rng = np.random.default_rng(0)
    labels = np.zeros((8, 32, 32), np.uint8)
    labels[:, 10:20, 12:22] = 1
    images = (labels + 0.3 * rng.standard_normal(labels.shape)).astype(np.float32)
    losses = []
    for step in range(15):
        state, loss = train.train_step(
            state, images, labels, jax.random.key(step), model=model, tx=tx
        )
        losses.append(float(loss))
    assert int(state.step) == 15
    assert losses[-1] < 0.6 * losses[0], losses


def test_dice_against_hand_computed_cases():
    # slice 0: pred 4 px, label 2 px, overlap 2 -> 2*2/(4+2) = 2/3
    # slice 1: both empty -> 1 (smoothing);  slice 2: pred 3 px, label empty -> ~0
    terms = {
        "intersection": np.array([2.0, 0.0, 0.0]),
        "pred_sum": np.array([4.0, 0.0, 3.0]),
        "label_sum": np.array([2.0, 0.0, 0.0]),
    }
    mean_dice, global_dice = train.dice_scores(terms)
    s = 1e-5
    expected = ((4 + s) / (6 + s) + 1.0 + s / (3 + s)) / 3
    np.testing.assert_allclose(mean_dice, expected, rtol=1e-12)
    np.testing.assert_allclose(global_dice, 4 / 9, rtol=1e-12)
    assert train.dice_scores({k: np.zeros(2) for k in terms})[1] == 1.0


def test_eval_batch_counts_pixels_at_threshold_half():
    model = UNet(base_width=4, depth=2)
    variables = init_variables(model, jax.random.key(0), 32, 32)
    images = np.random.default_rng(1).standard_normal((3, 32, 32)).astype(np.float32)
    labels = (np.random.default_rng(2).uniform(size=(3, 32, 32)) < 0.3).astype(np.uint8)
    out = train.eval_batch(variables, images, labels, model=model)
    logits = np.asarray(jax.jit(model.apply)(variables, images), np.float64)
    pred = 1 / (1 + np.exp(-logits)) > 0.5
    np.testing.assert_array_equal(out["pred_sum"], pred.sum((1, 2)))
    np.testing.assert_array_equal(out["intersection"], (pred & (labels > 0)).sum((1, 2)))
    bce = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
    np.testing.assert_allclose(out["bce_sum"], bce.sum((1, 2)), rtol=1e-4)


@pytest.mark.parametrize("n,batch,min_steps", [(5, 4, 1), (40, 16, 8), (32, 8, 2)])
def test_epoch_order_fills_whole_batches_covering_every_slice(n, batch, min_steps):
    ids = np.arange(100, 100 + n)
    order = fit.epoch_order(jax.random.key(0), ids, batch, min_steps)
    steps = max(-(-n // batch), min_steps)
    assert order.shape == (steps, batch)
    assert set(order.ravel().tolist()) == set(ids.tolist())
    # the first n entries are a permutation (each slice once before any repeats)
    assert sorted(order.ravel()[:n].tolist()) == ids.tolist()
