"""Run by tests/test_sharding.py in a subprocess with 4 fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4): computes the same things on one device
(mesh=None, the single-device code path) and on a 4-device mesh, and saves both to an .npz for
the test to compare. Usage: python -m tests.sharding_worker OUT.npz
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
import optax
from ml_collections import config_dict

from selal_jax.core import parallel, rng, scoring, selection, train
from selal_jax.core.models import UNet, init_variables
from selal_jax.data.slices import SliceSet
from selal_jax.run import fit, validation
from tests.helpers import smoke_config

N_DEVICES = 4
SIZE = 32
QUERY = 10
SGD_STEPS = 3
ADAM_LR = 1e-3
ADAM_STEPS = 4  # fit: 2 epochs x 2 steps
# The briefly trained model's P lies in about [0.35, 0.5]: T and B that cover part of each slice.
TARGET_THRESHOLD, BOUNDARY_WIDTH = 0.49, 0.005


def synthetic_slices(n: int, seed: int) -> SliceSet:
    """Noisy images with a bright square lesion on some slices (labels = the square)."""
    rng_np = np.random.default_rng(seed)
    labels = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        if i % 3:
            y, x = rng_np.integers(4, SIZE - 12, size=2)
            s = rng_np.integers(3, 9)
            labels[i, y : y + s, x : x + s] = 1
    images = (1.5 * labels + rng_np.standard_normal(labels.shape)).astype(np.float32)
    zeros = np.zeros(n, np.int32)
    return SliceSet(images, labels, zeros, np.arange(n, dtype=np.int32), np.ones((n, 3)), ["s"])


def flat(prefix: str, tree) -> dict[str, np.ndarray]:
    return {
        f"{prefix}{jax.tree_util.keystr(path)}": np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
    }


def refusal(fn) -> str:
    try:
        fn()
    except ValueError as e:
        return str(e)
    return ""


@rng.with_classic_threefry
def main(out_path: str) -> None:
    if jax.device_count() != N_DEVICES:
        raise SystemExit(f"expected {N_DEVICES} devices, got {jax.device_count()}")
    mesh = parallel.make_mesh()
    out: dict[str, np.ndarray] = {}
    messages = {}
    model = UNet(base_width=4, depth=2, dropout_rate=0.2)
    variables = init_variables(model, jax.random.key(0), SIZE, SIZE)
    pool, val = synthetic_slices(70, 1), synthetic_slices(20, 2)

    # (2a) Three train steps with plain SGD, dropout and augmentation on: the sharded
    # gradient (and the random bits) must equal the single-device ones up to rounding.
    sgd = optax.sgd(0.1)
    for name, m in (("one", None), ("mesh", mesh)):
        state = parallel.put_replicated(m, train.create_train_state(jax.device_get(variables), sgd))
        for step in range(SGD_STEPS):
            ids = np.arange(8 * step, 8 * step + 8)
            state, loss = train.train_step(
                state,
                *parallel.host_batch(m, ids, pool.images, pool.labels),
                jax.random.key(100 + step),
                model=model,
                tx=sgd,
                augment=True,
            )
            out[f"sgd/{name}/loss{step}"] = np.asarray(loss)
        out.update(flat(f"sgd/{name}/params", state.params))
        out.update(flat(f"sgd/{name}/batch_stats", state.batch_stats))

    # (2b) fit() with Adam, as a round trains: 2 epochs of 2 steps (global batch 8).
    tx = train.make_optimizer(ADAM_LR)
    train_config = config_dict.ConfigDict(
        dict(
            batch_size=8,
            eval_batch_size=16,
            patience=5,
            max_epochs=2,
            min_steps_per_epoch=2,
            augment=False,
        )
    )
    labelled = np.arange(0, 70, 5)
    out.update(flat("init", variables["params"]))
    for name, m in (("one", None), ("mesh", mesh)):
        state = train.create_train_state(jax.device_get(variables), tx)  # donated by fit
        state, summary = fit.fit(
            model, state, tx, pool, labelled, val, jax.random.key(3), train_config, mesh=m
        )
        out.update(flat(f"adam/{name}/params", state.params))
        out.update(flat(f"adam/{name}/batch_stats", state.batch_stats))
        out[f"adam/{name}/best_val_loss"] = np.float64(summary["best_val_loss"])
        if m is None:  # host copy: scored on one device and, replicated, on the mesh
            trained = jax.device_get(state.variables)
        else:
            out["mesh_state_replicated"] = np.bool_(
                all(
                    x.sharding.is_equivalent_to(parallel.replicated(mesh), x.ndim)
                    for x in jax.tree_util.tree_leaves(state)
                )
            )

    # (1) Pool scoring with the trained model (so that the masks and scores vary), a global
    # batch of 16 = 4 per device, the last batch padded.
    candidates = np.setdiff1d(np.arange(70), labelled)
    for strategy in ("entropy", "bald"):
        for name, m in (("one", None), ("mesh", mesh)):
            stats = scoring.score_pool(
                model,
                trained,
                pool.images,
                candidates,
                jax.random.key(7),
                strategy=strategy,
                convention="paper",
                target_threshold=TARGET_THRESHOLD,
                boundary_width=BOUNDARY_WIDTH,
                passes=3 if strategy == "bald" else 1,
                batch_size=16,
                mesh=m,
            )
            for field in scoring.SliceStats._fields:
                out[f"{name}/{strategy}/{field}"] = getattr(stats, field)
            for mode in ("selective", "all"):
                q = selection.select(stats, candidates, QUERY, mode=mode, convention="paper")
                out[f"{name}/{strategy}/{mode}/ids"] = q.ids

    # (3) Global batch sizes that do not divide over 4 devices.
    messages["validate_config"] = refusal(
        lambda: validation.validate_config(smoke_config(**{"train.batch_size": 6}))
    )
    messages["validate_config_eval"] = refusal(
        lambda: validation.validate_config(smoke_config(**{"train.eval_batch_size": 30}))
    )
    bad = config_dict.ConfigDict(train_config.to_dict())
    bad.batch_size = 10
    messages["fit"] = refusal(
        lambda: fit.fit(
            model,
            train.create_train_state(jax.device_get(variables), tx),
            tx,
            pool,
            labelled,
            val,
            jax.random.key(3),
            bad,
            mesh=mesh,
        )
    )
    out["messages"] = np.asarray(json.dumps(messages))
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
