"""Multi-class and multi-channel training: losses, evaluation terms and per-class Dice against
NumPy computed here."""

import jax
import numpy as np
import pytest

from selal_jax.core import train
from selal_jax.core.models import UNet, init_variables


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _batch(seed=0, n=8, channels=2):
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 32, 32), np.uint8)
    labels[:, 8:20, 8:20] = 1
    labels[:, 12:16, 12:16] = 2
    labels[:, 24:28, 4:10] = 3
    images = np.stack(
        [(labels == 1) + (labels == 3), (labels >= 2) * 1.0 + 0.5 * (labels == 3)], axis=-1
    )[..., :channels]
    images = (images + 0.3 * rng.standard_normal(images.shape)).astype(np.float32)
    return images, labels


@pytest.mark.parametrize("loss", ["ce", "ce_dice"])
def test_a_few_multiclass_train_steps_lower_the_loss(loss):
    model = UNet(base_width=4, depth=2, dropout_rate=0.0, num_logits=4, head_bias_prior=0.1)
    tx = train.make_optimizer(1e-2)
    state = train.create_train_state(
        init_variables(model, jax.random.key(0), 32, 32, channels=2), tx
    )
    images, labels = _batch()
    losses = []
    for step in range(15):
        state, value = train.train_step(
            state, images, labels, jax.random.key(step), model=model, tx=tx, loss=loss
        )
        losses.append(float(value))
    assert losses[-1] < 0.7 * losses[0], losses


def test_softmax_ce_and_soft_dice_against_numpy():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 8, 8, 4)).astype(np.float32) * 3
    labels = rng.integers(0, 4, size=(3, 8, 8)).astype(np.uint8)
    logp = _log_softmax(logits.astype(np.float64))
    ce = -np.take_along_axis(logp, labels[..., None].astype(np.int64), axis=-1).mean()
    np.testing.assert_allclose(train.segmentation_loss(logits, labels, "ce"), ce, rtol=1e-5)
    p = np.exp(logp)[..., 1:]
    g = np.eye(4)[labels][..., 1:]
    s = 1e-5
    dice = (2 * (p * g).sum((0, 1, 2)) + s) / (p.sum((0, 1, 2)) + g.sum((0, 1, 2)) + s)
    np.testing.assert_allclose(
        train.segmentation_loss(logits, labels, "ce_dice"), ce + 1 - dice.mean(), rtol=1e-5
    )
    # Binary head: sigmoid probabilities, one class.
    z = logits[..., 0]
    y = (labels > 1).astype(np.uint8)
    q = 1 / (1 + np.exp(-z.astype(np.float64)))
    bce = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).mean()
    bin_dice = (2 * (q * y).sum() + s) / (q.sum() + y.sum() + s)
    np.testing.assert_allclose(
        train.segmentation_loss(z, y, "ce_dice"), bce + 1 - bin_dice, rtol=1e-5
    )
    with pytest.raises(ValueError, match="train.loss"):
        train.segmentation_loss(z, y, "dice")


def test_multiclass_eval_terms_and_dice_against_numpy():
    model = UNet(base_width=4, depth=2, num_logits=3, head_bias_prior=0.2)
    variables = init_variables(model, jax.random.key(1), 32, 32, channels=2)
    images, labels = _batch(seed=4, n=3)
    labels = np.minimum(labels, 2)
    out = train.eval_batch(variables, images, labels, model=model)
    logits = np.asarray(jax.jit(model.apply)(variables, images), np.float64)
    pred = logits.argmax(-1)
    for c in (1, 2):
        np.testing.assert_array_equal(out["pred_sum"][:, c - 1], (pred == c).sum((1, 2)))
        np.testing.assert_array_equal(out["label_sum"][:, c - 1], (labels == c).sum((1, 2)))
        np.testing.assert_array_equal(
            out["intersection"][:, c - 1], ((pred == c) & (labels == c)).sum((1, 2))
        )
    logp = _log_softmax(logits)
    ce = -np.take_along_axis(logp, labels[..., None].astype(np.int64), axis=-1)[..., 0]
    np.testing.assert_allclose(out["ce_sum"], ce.sum((1, 2)), rtol=1e-4)
    np.testing.assert_allclose(train.mean_loss(out), ce.mean(), rtol=1e-4)


def test_class_dice_scores_by_hand():
    # Two slices, two classes.
    # class 1: slice 0 pred 4 / label 2 / overlap 2; slice 1 both empty.
    # class 2: slice 0 pred 0 / label 3; slice 1 pred 2 / label 2 / overlap 1.
    terms = {
        "pixels": np.array([16.0, 16.0]),
        "intersection": np.array([[2.0, 0.0], [0.0, 1.0]]),
        "pred_sum": np.array([[4.0, 0.0], [0.0, 2.0]]),
        "label_sum": np.array([[2.0, 3.0], [0.0, 2.0]]),
    }
    s = 1e-5
    per_slice, per_global = train.class_dice_scores(terms)
    np.testing.assert_allclose(per_slice[0], ((4 + s) / (6 + s) + 1.0) / 2, rtol=1e-12)
    np.testing.assert_allclose(per_slice[1], (s / (3 + s) + (2 + s) / (4 + s)) / 2, rtol=1e-12)
    np.testing.assert_allclose(per_global, [4 / 6, 2 / 7], rtol=1e-12)
    mean_dice, global_dice = train.dice_scores(terms)
    np.testing.assert_allclose(mean_dice, per_slice.mean(), rtol=1e-12)
    np.testing.assert_allclose(global_dice, (4 / 6 + 2 / 7) / 2, rtol=1e-12)
