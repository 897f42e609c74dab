"""Monte-Carlo encoder reuse: same numbers either way, and only the reuse shares the encoder."""

from __future__ import annotations

import jax
import numpy as np

from selal_jax.core import rng, scoring
from selal_jax.core.models import UNet, init_variables
from tests.helpers import all_eqns

BATCH, PASSES, SIZE = 3, 4, 16


@rng.with_classic_threefry  # the default threefry takes several times longer to compile
def _setup():
    model = UNet(base_width=4, depth=2)
    variables = init_variables(model, jax.random.key(0), SIZE, SIZE)
    images = np.random.default_rng(0).normal(size=(BATCH, SIZE, SIZE)).astype(np.float32)
    return model, variables, images, np.arange(BATCH, dtype=np.int32), jax.random.key(1)


def _conv_batches(jaxpr) -> list[int]:
    """Batch size of every convolution, in program order (nested jaxprs included)."""
    return [
        eqn.invars[0].aval.shape[0]
        for eqn in all_eqns(jaxpr)
        if eqn.primitive.name == "conv_general_dilated"
    ]


@rng.with_classic_threefry
def test_reuse_and_recompute_give_the_same_logits():
    model, variables, images, ids, key = _setup()

    @jax.jit  # one program for both: the dropout RNG dominates compile time on CPU
    def both(variables, images, ids, key):
        return tuple(
            scoring.mc_logits(model, variables, images, ids, key, PASSES, reuse)
            for reuse in (True, False)
        )

    reused, recomputed = both(variables, images, ids, key)
    assert reused.shape == (BATCH, PASSES, SIZE, SIZE)
    np.testing.assert_allclose(np.asarray(reused), np.asarray(recomputed), rtol=1e-5, atol=1e-5)
    # The passes differ (dropout is active), so the comparison is not trivially of copies.
    assert not np.allclose(np.asarray(reused[:, 0]), np.asarray(reused[:, 1]))


@rng.with_classic_threefry
def test_only_reuse_runs_the_encoder_once_per_slice():
    model, variables, images, ids, key = _setup()
    batches = {}
    for reuse in (True, False):
        jaxpr = jax.make_jaxpr(
            lambda v, x, i, k, reuse=reuse: scoring.mc_logits(model, v, x, i, k, PASSES, reuse)
        )(variables, images, ids, key)
        batches[reuse] = _conv_batches(jaxpr.jaxpr)
    n_encoder = 2 * (model.depth + 1)  # two convolutions per level and in the bottleneck
    assert batches[True][:n_encoder] == [BATCH] * n_encoder
    assert batches[False][:n_encoder] == [BATCH * PASSES] * n_encoder
    # Each decoder level (the transposed convolution is a matmul on this path): the first 3x3
    # convolution in two parts (the skip's, then the upsampled input's: Conv3x3) and the second
    # one; the head last. With reuse only the skip's part runs once per slice; without,
    # everything once per pass.
    level = lambda skip: [skip, BATCH * PASSES, BATCH * PASSES]  # noqa: E731
    head = [BATCH * PASSES]
    assert batches[True][n_encoder:] == level(BATCH) * model.depth + head
    assert batches[False][n_encoder:] == level(BATCH * PASSES) * model.depth + head


@rng.with_classic_threefry
def test_the_xla_path_convolves_the_concatenated_skip_in_every_pass():
    model, variables, images, ids, key = _setup()
    model = model.clone(conv_impl="xla")
    jaxpr = jax.make_jaxpr(lambda v, x, i, k: scoring.mc_logits(model, v, x, i, k, PASSES, True))(
        variables, images, ids, key
    )
    n_encoder = 2 * (model.depth + 1)
    assert _conv_batches(jaxpr.jaxpr)[n_encoder:] == [BATCH * PASSES] * (3 * model.depth + 1)
