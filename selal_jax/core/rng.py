"""Every random key of selal-jax, derived from one root key, and the random-number setting.

The key tree of an experiment (`loop`); each edge is one function below, `fold_in` tags in
brackets. Nothing depends on how often a key was split before, so a resumed run draws the same
numbers as an uninterrupted one, and scores do not depend on batch size or order.

    root = root_key(config.seed)                         jax.random.key(seed)
    ├── init_key(root)               [2**31 - 1]         U-Net parameters (init_variables)
    ├── initial_set_key(root)        [2**31 - 2]         round 0's labelled set; with
    │                                                    al.initial_from_positive split in two
    │                                                    (positive, negative permutations)
    └── round_key(root, r)           [r]                 round r = 0, 1, ... (< 2**31 - 2)
        ├── fit_key(round)           [0]                 run.fit.fit
        │   └── epoch_key(fit, e)    [e]                 epoch e; itself: the epoch's order
        │       └── step_key(epoch, s)   [1 + s]         train_step s of the epoch; split in
        │                                                two there: (dropout, augmentation),
        │                                                augmentation split per slice, and each
        │                                                slice's key in 6 (augment.draw_params)
        ├── score_key(round)         [1]                 scoring.score_pool (MC dropout)
        │   └── slice_key(score, id)     [pool id]       one slice, whatever its batch
        │       └── pass_key(slice, t)   [t]             dropout of MC pass t
        ├── random_key(round)        [2]                 random; random_predicted's and
        │   │                                            random_label's first draw
        │   └── topup_key(random)    [1]                 their top-up draw
        └── sample_key(round)        [3]                 al.sampling != top_k: the query's
            └── stream_key(sample, s)    [s]             Gumbel noise; one ranking: s = 0 all,
                │                                        1 target, 2 boundary, 2 + c class c's
                │                                        target ranking (C >= 2)
                └── noise_key(stream, id)    [pool id]   one slice's noise, whatever the
                                                         candidates, their order or batch

`select_from_probs` draws `random` / `random_predicted` from root_key(seed) itself (as
random_key above, with topup_key below it); its `key` argument is the sample_key above.

The benchmark's tree (`selal_jax.bench`), apart from the experiment's:

    root = root_key(bench seed)
    ├── bench_init_key(root)         [0]                 U-Net parameters
    ├── bench_score_key(root)        [1]                 the scoring round (score_pool's key)
    └── bench_train_key(root)        [2]                 train steps (compiled with this key)
        └── bench_step_key(train, s)     [s]             train step s

The setting: JAX >= 0.5 defaults to the "partitionable" threefry, whose programs take 3-7x longer
to compile on XLA:CPU (measured here: U-Net init 20.7 s vs 3.1 s, a train step 13.2 s vs 6.2 s,
jax 0.10.2). Both variants are deterministic; they just give different numbers. Entry points
(`loop.run`, `select_from_probs`, the benchmarks) run under `with_classic_threefry` (or inside
`classic_threefry()`), a scoped setting, so importing selal_jax never changes JAX's global
configuration, and the same config and seed give the same results however the library is called.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import jax

Array = jax.Array

# fold_in tags of the experiment's tree. INIT_TAG and INITIAL_SET_TAG share their parent with
# the round indices, hence the values no round reaches.
INIT_TAG = 2**31 - 1
INITIAL_SET_TAG = 2**31 - 2
FIT_TAG, SCORE_TAG, RANDOM_TAG, SAMPLE_TAG = 0, 1, 2, 3  # below a round key
TOPUP_TAG = 1  # below a random key: random_predicted's and random_label's top-up
# below a sample key: one tag per ranking (class c's target ranking: CLASS_STREAM_OFFSET + c)
STREAM_TAGS = {"all": 0, "target": 1, "boundary": 2}
CLASS_STREAM_OFFSET = 2
STEP_OFFSET = 1  # step s of an epoch is fold_in tag 1 + s (tag 0 is unused)
# fold_in tags of the benchmark's tree.
BENCH_INIT_TAG, BENCH_SCORE_TAG, BENCH_TRAIN_TAG = 0, 1, 2


def root_key(seed: int) -> Array:
    """The root of every key of a run: jax.random.key(seed)."""
    return jax.random.key(seed)


def init_key(root: Array) -> Array:
    """The U-Net's initial parameters."""
    return jax.random.fold_in(root, INIT_TAG)


def initial_set_key(root: Array) -> Array:
    """Round 0's labelled set (`loop.initial_labelled_set`)."""
    return jax.random.fold_in(root, INITIAL_SET_TAG)


def round_key(root: Array, round_index: int) -> Array:
    """Round `round_index`: the parent of its fit, score and random keys."""
    return jax.random.fold_in(root, round_index)


def fit_key(round_key: Array) -> Array:
    """The round's training (`run.fit.fit`)."""
    return jax.random.fold_in(round_key, FIT_TAG)


def score_key(round_key: Array) -> Array:
    """The round's pool scoring (`scoring.score_pool`: MC dropout masks)."""
    return jax.random.fold_in(round_key, SCORE_TAG)


def random_key(round_key: Array) -> Array:
    """The round's random draw (`random`; `random_predicted`'s and `random_label`'s first
    draw)."""
    return jax.random.fold_in(round_key, RANDOM_TAG)


def topup_key(random_key: Array) -> Array:
    """The top-up draw of `random_predicted` (`random_label`) among the slices without
    predicted (true) target."""
    return jax.random.fold_in(random_key, TOPUP_TAG)


def sample_key(round_key: Array) -> Array:
    """The round's stochastic acquisition (al.sampling != 'top_k'): parent of its stream keys."""
    return jax.random.fold_in(round_key, SAMPLE_TAG)


def stream_key(sample_key: Array, stream: str | int) -> Array:
    """One ranking's Gumbel noise: stream 'all', 'target', 'boundary', or class c >= 1 (int)
    for class c's target ranking of a class-balanced query."""
    tag = CLASS_STREAM_OFFSET + stream if isinstance(stream, int) else STREAM_TAGS[stream]
    return jax.random.fold_in(sample_key, tag)


def noise_key(stream_key: Array, slice_id) -> Array:
    """Pool slice `slice_id`'s (int or traced int32) Gumbel noise in one ranking."""
    return jax.random.fold_in(stream_key, slice_id)


def epoch_key(fit_key: Array, epoch: int) -> Array:
    """Epoch `epoch` of a fit; itself the key of the epoch's order (`run.fit.epoch_order`)."""
    return jax.random.fold_in(fit_key, epoch)


def step_key(epoch_key: Array, step: int) -> Array:
    """Train step `step` (0-based) of an epoch: dropout and augmentation of `train_step`."""
    return jax.random.fold_in(epoch_key, STEP_OFFSET + step)


def slice_key(score_key: Array, slice_id) -> Array:
    """Pool slice `slice_id` (int or traced int32): its MC dropout passes derive from it."""
    return jax.random.fold_in(score_key, slice_id)


def pass_key(slice_key: Array, pass_index) -> Array:
    """MC dropout pass `pass_index` (int or traced int32) of one slice."""
    return jax.random.fold_in(slice_key, pass_index)


def bench_init_key(root: Array) -> Array:
    """The benchmark's U-Net parameters."""
    return jax.random.fold_in(root, BENCH_INIT_TAG)


def bench_score_key(root: Array) -> Array:
    """The benchmark's scoring round (the key `score_pool` gets)."""
    return jax.random.fold_in(root, BENCH_SCORE_TAG)


def bench_train_key(root: Array) -> Array:
    """The benchmark's train steps (also the key their program is compiled with)."""
    return jax.random.fold_in(root, BENCH_TRAIN_TAG)


def bench_step_key(train_key: Array, step: int) -> Array:
    """The benchmark's train step `step`."""
    return jax.random.fold_in(train_key, step)


def classic_threefry():
    """Context manager: non-partitionable threefry inside, the caller's setting restored after."""
    setting = getattr(jax, "threefry_partitionable", None)
    if setting is None:  # a JAX without the switch: keep its only behaviour
        return contextlib.nullcontext()
    return setting(False)


def with_classic_threefry(fn):
    """Decorator: `fn` runs inside `classic_threefry()` (the caller's setting restored after).

    Not for generator functions: their body runs after the call has returned, outside the
    setting; use `with classic_threefry():` inside them.
    """
    if inspect.isgeneratorfunction(fn):
        raise TypeError(f"with_classic_threefry: {fn.__qualname__} is a generator function")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with classic_threefry():
            return fn(*args, **kwargs)

    return wrapper
