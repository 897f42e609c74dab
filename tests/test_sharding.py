"""Data parallelism: 4 fake CPU devices against 1, and a two-process jax.distributed run.

The main pytest process has the devices it was started with (usually one CPU device), so the
4-device checks run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4
(tests/sharding_worker.py computes everything on one device and on the 4-device mesh there).

Tolerances (float32):
* Scoring: per-slice sums within rtol 1e-4 plus 1e-7 per summed pixel. Each device runs the
  same per-slice program on 4 slices instead of 16, which XLA may block and fuse differently, so
  the last bits of each pixel's value differ: about float32 eps x ln 2 (~1e-7) absolute per
  pixel. That dominates where BALD = H(mean) - mean(H) cancels to ~1e-6 per pixel (relative
  errors up to 4e-4 on such slices). Pixel counts may differ by one pixel crossing a threshold.
  The selections must be identical.
* Training with SGD: parameters atol 1e-5. The differences are the order of the sums that the
  compiler all-reduces (loss, gradients, BatchNorm batch statistics) and, on CPU, how XLA's own
  convolution kernels (the YNNPACK-free programs of selal_jax/core/xla_options.py) block a 4-slice
  and a 16-slice batch differently: up to 6e-6 on weights of magnitude ~0.4 after three steps
  (relative 1.6e-5; within 1e-6 with YNNPACK), deterministic from run to run;
  dropout and augmentation draw the same bits (a different bit would change parameters by far
  more).
* Training with Adam (what fit uses): parameters atol 0.1 * lr per step. Adam divides each
  gradient by its running RMS, so a gradient that is mathematically zero (e.g. a shift of a
  convolution kernel that the following BatchNorm removes) is rounding noise that Adam can turn
  into a step of up to lr either way; agreement is only guaranteed to O(lr) per step. Here the
  differences are ~1e-7, well inside.
"""

import json
import math
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from selal_jax.core import parallel
from selal_jax.run import loop
from tests import sharding_worker as worker
from tests.helpers import (
    REPO,
    TIMING_FIELDS,
    read_records,
    restore_final,
    run_on_devices,
    smoke_config,
)

# Minutes of end-to-end runs (4 fake devices and two processes): skipped by the README's test command, run by .ci/run.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sharding") / "results.npz")
    run_on_devices("tests.sharding_worker", out)
    with np.load(out) as data:
        return dict(data)


def pairs(results, prefix):
    """(key, one-device value, mesh value) for every array under prefix/one/."""
    keys = [k for k in results if k.startswith(f"{prefix}/one/")]
    assert keys, prefix
    return [(k, results[k], results[k.replace("/one/", "/mesh/", 1)]) for k in keys]


@pytest.mark.parametrize("strategy", ["entropy", "bald"])
def test_scoring_on_4_devices_gives_the_same_stats_and_selection(results, strategy):
    for mask in ("target", "boundary", "all"):
        one, mesh = results[f"one/{strategy}/{mask}_sum"], results[f"mesh/{strategy}/{mask}_sum"]
        pixels = results[f"one/{strategy}/{mask}_count"]
        bad = np.abs(mesh - one) > 1e-4 * np.abs(one) + 1e-7 * pixels
        assert not bad.any(), (mask, one[bad], mesh[bad], pixels[bad])
    for field in ("target_count", "boundary_count", "all_count"):
        one, mesh = results[f"one/{strategy}/{field}"], results[f"mesh/{strategy}/{field}"]
        np.testing.assert_allclose(mesh, one, atol=1, err_msg=field)
    # the masks are not trivial: counts vary over the pool
    assert len(np.unique(results[f"one/{strategy}/target_count"])) > 5
    for mode in ("selective", "all"):
        one, mesh = results[f"one/{strategy}/{mode}/ids"], results[f"mesh/{strategy}/{mode}/ids"]
        assert len(one) == worker.QUERY
        np.testing.assert_array_equal(mesh, one, err_msg=mode)


def test_sgd_steps_on_4_devices_give_the_same_parameters(results):
    for step in range(worker.SGD_STEPS):
        np.testing.assert_allclose(
            results[f"sgd/mesh/loss{step}"], results[f"sgd/one/loss{step}"], rtol=2e-6
        )
    moved = 0.0
    for key, one, mesh in pairs(results, "sgd"):
        np.testing.assert_allclose(mesh, one, atol=1e-5, rtol=0, err_msg=key)
        if "/params" in key:
            moved = max(moved, np.abs(one - results["init" + key[len("sgd/one/params") :]]).max())
    assert moved > 1e-3  # the steps did change the parameters, far beyond the tolerance


def test_fit_on_4_devices_gives_the_same_parameters(results):
    atol = 0.1 * worker.ADAM_LR * worker.ADAM_STEPS
    for key, one, mesh in pairs(results, "adam"):
        np.testing.assert_allclose(mesh, one, atol=atol, rtol=0, err_msg=key)
    np.testing.assert_allclose(
        results["adam/mesh/best_val_loss"], results["adam/one/best_val_loss"], rtol=1e-5
    )
    assert results["mesh_state_replicated"]


def test_batch_size_not_divisible_by_the_device_count_is_refused(results):
    messages = json.loads(str(results["messages"]))
    for name, field, value in (
        ("validate_config", "train.batch_size", 6),
        ("validate_config_eval", "train.eval_batch_size", 30),
        ("fit", "train.batch_size", 10),
    ):
        assert f"config field {field}" in messages[name], messages[name]
        assert f"global batch size {value} does not divide evenly over 4 devices" in messages[name]
    with pytest.raises(ValueError, match=r"train\.eval_batch_size.*32.*3 devices"):
        parallel.check_batch_sizes(smoke_config(**{"train.batch_size": 9}).train, 3)
    parallel.check_batch_sizes(smoke_config().train, 8)  # 8 and 32 divide by 8


# ---------------------------------------------------------------------------- two processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# The two-process comparison trains as the smoke config did before it learned fast: at its 1e-2
# the split batch's last-bit differences (another summation order) grow into Dice differences of
# 1e-3 within three rounds; at 1e-3 they stay within the tolerances below.
GENTLE_TRAINING = {"train.learning_rate": 1e-3, "train.min_steps_per_epoch": 2}


def launch_processes(workdir, n, env, timeout=600):
    """Runs launch.py as n jax.distributed processes; returns their (returncode, log) pairs.

    If one fails the others are stopped at once (they would otherwise wait for its heartbeat).
    """
    port = free_port()
    procs, logs = [], []
    for p in range(n):
        log = open(os.path.join(os.path.dirname(workdir), f"process{p}.log"), "w+")
        args = [
            sys.executable,
            os.path.join(REPO, "launch.py"),
            "--config=" + os.path.join(REPO, "configs/default.py:smoke"),
            f"--workdir={workdir}",
            f"--coordinator_address=localhost:{port}",
            f"--num_processes={n}",
            f"--process_id={p}",
            *(f"--config.{k}={v}" for k, v in GENTLE_TRAINING.items()),
        ]
        procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=log))
        logs.append(log)
    deadline = time.time() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs) or time.time() > deadline:
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    out = []
    for p, log in zip(procs, logs, strict=True):
        log.seek(0)
        out.append((p.returncode, log.read()))
        log.close()
    return out


def assert_records_match(records, reference):
    assert len(records) == len(reference) == smoke_config().al.rounds + 1
    for rec, ref in zip(records, reference, strict=True):
        assert set(rec) == set(ref)
        for key, value in ref.items():
            if key in TIMING_FIELDS:
                continue
            if isinstance(value, float):
                np.testing.assert_allclose(rec[key], value, rtol=1e-5, err_msg=key)
            elif key == "queried_scores":
                np.testing.assert_allclose(rec[key], value, rtol=1e-4, err_msg=key)
            else:  # selections, streams, counts, epochs: identical
                assert rec[key] == value, (rec["round"], key)


def test_two_process_run_matches_a_single_process_run(tmp_path, cohort_root):
    """Two local processes (one CPU device each, gloo collectives) run the smoke experiment
    (rounds 0-2) in one workdir; records and final parameters equal a one-process run's.

    Equality is to tolerance, not exact: the global batch is split over two devices, so the
    compiler's cross-device sums (loss, gradients, BatchNorm statistics) add in another order
    (see the module docstring). The two-process run also writes its own synthetic cohort and
    slice cache (process 0 first), exercising that path.
    """
    workdir = str(tmp_path / "two" / "run")
    os.makedirs(os.path.dirname(workdir))
    env = dict(os.environ)
    env.update(
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    env.pop("SELAL_JAX_KILL_AT", None)
    for rc, log in launch_processes(workdir, 2, env):
        assert rc == 0, log[-4000:]
    assert "jax.distributed: process 1 of 2" in log

    reference_dir = str(tmp_path / "one")
    reference = loop.run(
        smoke_config(**{"data.root": cohort_root, **GENTLE_TRAINING}), reference_dir
    )
    reference = json.loads(json.dumps(reference))
    records = read_records(workdir)
    assert_records_match(records, reference)

    # final parameters: Adam steps of all rounds, each within 0.1 lr (module docstring)
    train = smoke_config(**GENTLE_TRAINING).train
    steps = sum(
        r["epochs"] * max(math.ceil(r["n_labelled"] / train.batch_size), train.min_steps_per_epoch)
        for r in records
    )
    state, _ = restore_final(smoke_config(), workdir)
    ref_state, _ = restore_final(smoke_config(), reference_dir)
    atol = 0.1 * train.learning_rate * steps
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(state), leaves(ref_state), strict=True):
        if np.issubdtype(np.asarray(b).dtype, np.floating):
            np.testing.assert_allclose(a, b, atol=atol, rtol=1e-5)

    # the same command resumes: both processes restore the last round (orbax, multi-host)
    for rc, log in launch_processes(workdir, 2, env):
        assert rc == 0, log[-4000:]
        assert "resuming" in log
    assert read_records(workdir) == records


def test_the_replicating_identity_is_built_once_per_mesh():
    # A fresh jax.jit per fetch recompiled the all-gather on every evaluation (multi-host).
    from selal_jax.core import parallel

    mesh = parallel.make_mesh(jax.devices()[:1])
    assert parallel.replicate_fn(mesh) is parallel.replicate_fn(mesh)
