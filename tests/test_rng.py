"""The key tree: each named key is the fold_in chain the code used before it had names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from selal_jax.core import rng


def data(key) -> np.ndarray:
    return np.asarray(jax.random.key_data(key))


ROOT = jax.random.key(11)
fold = jax.random.fold_in


def test_root_key_is_the_seeds_key():
    np.testing.assert_array_equal(data(rng.root_key(11)), data(ROOT))


@pytest.mark.parametrize(
    "named, literal",
    [
        (lambda: rng.init_key(ROOT), lambda: fold(ROOT, 2147483647)),
        (lambda: rng.initial_set_key(ROOT), lambda: fold(ROOT, 2147483646)),
        (lambda: rng.round_key(ROOT, 4), lambda: fold(ROOT, 4)),
        (lambda: rng.fit_key(rng.round_key(ROOT, 4)), lambda: fold(fold(ROOT, 4), 0)),
        (lambda: rng.score_key(rng.round_key(ROOT, 4)), lambda: fold(fold(ROOT, 4), 1)),
        (lambda: rng.random_key(rng.round_key(ROOT, 4)), lambda: fold(fold(ROOT, 4), 2)),
        (
            lambda: rng.topup_key(rng.random_key(rng.round_key(ROOT, 4))),
            lambda: fold(fold(fold(ROOT, 4), 2), 1),
        ),
        (
            lambda: rng.epoch_key(rng.fit_key(rng.round_key(ROOT, 4)), 3),
            lambda: fold(fold(fold(ROOT, 4), 0), 3),
        ),
        (
            lambda: rng.step_key(rng.epoch_key(rng.fit_key(rng.round_key(ROOT, 4)), 3), 0),
            lambda: fold(fold(fold(fold(ROOT, 4), 0), 3), 1),
        ),
        (
            lambda: rng.step_key(rng.epoch_key(rng.fit_key(rng.round_key(ROOT, 4)), 3), 5),
            lambda: fold(fold(fold(fold(ROOT, 4), 0), 3), 6),
        ),
        (
            lambda: rng.pass_key(rng.slice_key(rng.score_key(rng.round_key(ROOT, 4)), 17), 2),
            lambda: fold(fold(fold(fold(ROOT, 4), 1), 17), 2),
        ),
        (lambda: rng.sample_key(rng.round_key(ROOT, 4)), lambda: fold(fold(ROOT, 4), 3)),
        (
            lambda: rng.stream_key(rng.sample_key(rng.round_key(ROOT, 4)), "all"),
            lambda: fold(fold(fold(ROOT, 4), 3), 0),
        ),
        (
            lambda: rng.stream_key(rng.sample_key(rng.round_key(ROOT, 4)), "target"),
            lambda: fold(fold(fold(ROOT, 4), 3), 1),
        ),
        (
            lambda: rng.stream_key(rng.sample_key(rng.round_key(ROOT, 4)), "boundary"),
            lambda: fold(fold(fold(ROOT, 4), 3), 2),
        ),
        (
            lambda: rng.stream_key(rng.sample_key(rng.round_key(ROOT, 4)), 3),
            lambda: fold(fold(fold(ROOT, 4), 3), 5),
        ),
        (
            lambda: rng.noise_key(rng.stream_key(rng.sample_key(rng.round_key(ROOT, 4)), 1), 17),
            lambda: fold(fold(fold(fold(ROOT, 4), 3), 3), 17),
        ),
        (lambda: rng.bench_init_key(ROOT), lambda: fold(ROOT, 0)),
        (lambda: rng.bench_score_key(ROOT), lambda: fold(ROOT, 1)),
        (lambda: rng.bench_train_key(ROOT), lambda: fold(ROOT, 2)),
        (lambda: rng.bench_step_key(rng.bench_train_key(ROOT), 7), lambda: fold(fold(ROOT, 2), 7)),
    ],
)
def test_each_named_key_is_its_fold_in_chain(named, literal):
    np.testing.assert_array_equal(data(named()), data(literal()))


def test_traced_slice_and_pass_keys_match_the_python_ones():
    # mc_logits derives them under vmap from traced int32 ids.
    score = rng.score_key(rng.round_key(ROOT, 1))
    ids, passes = jnp.array([3, 0, 9], jnp.int32), 4
    traced = jax.vmap(
        lambda sid: jax.vmap(lambda t: rng.pass_key(rng.slice_key(score, sid), t))(
            jnp.arange(passes)
        )
    )(ids)
    for i, sid in enumerate((3, 0, 9)):
        for t in range(passes):
            np.testing.assert_array_equal(data(traced[i, t]), data(fold(fold(score, sid), t)))


# key_data of the keys in test_the_tree_is_pinned, computed with literal fold_in chains.
PINNED = {
    "init": [3380239599, 3343201961],
    "initial_set": [1120217530, 2425421979],
    "fit": [2799984767, 1105366846],
    "score": [3777617834, 145086855],
    "topup": [2726258505, 2543231531],
    "step": [103611567, 2073053532],
    "pass": [2733741509, 2400844209],
}


def test_the_tree_is_pinned():
    # Classic threefry (the session's setting, as every entry point's): these numbers are what
    # records and selections of earlier versions were drawn from.
    root = rng.root_key(0)
    r2 = rng.round_key(root, 2)
    got = {
        "init": data(rng.init_key(root)),
        "initial_set": data(rng.initial_set_key(root)),
        "fit": data(rng.fit_key(r2)),
        "score": data(rng.score_key(r2)),
        "topup": data(rng.topup_key(rng.random_key(r2))),
        "step": data(rng.step_key(rng.epoch_key(rng.fit_key(r2), 1), 2)),
        "pass": data(rng.pass_key(rng.slice_key(rng.score_key(r2), 5), 1)),
    }
    assert {k: v.tolist() for k, v in got.items()} == PINNED


def test_decorator_runs_under_the_classic_setting_and_restores_the_callers():
    if not hasattr(jax, "threefry_partitionable"):
        pytest.skip("a JAX without the switch")

    @rng.with_classic_threefry
    def setting(x):
        """doc"""
        return jax.config.jax_threefry_partitionable, x

    assert setting.__name__ == "setting" and setting.__doc__ == "doc"
    with jax.threefry_partitionable(True):
        assert setting(3) == (False, 3)
        assert jax.config.jax_threefry_partitionable is True


def test_decorator_refuses_generator_functions():
    def gen():
        yield 1

    with pytest.raises(TypeError, match="generator"):
        rng.with_classic_threefry(gen)


def test_context_manager_still_enters_by_hand():
    # An external probe calls classic_threefry().__enter__() without a with statement.
    if not hasattr(jax, "threefry_partitionable"):
        pytest.skip("a JAX without the switch")
    with jax.threefry_partitionable(True):
        ctx = rng.classic_threefry()
        ctx.__enter__()
        assert jax.config.jax_threefry_partitionable is False
        ctx.__exit__(None, None, None)
        assert jax.config.jax_threefry_partitionable is True
