"""The benchmark's quick mode produces well-formed JSON with every field (no speed checks)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from selal_jax import bench
from selal_jax.core import scoring
from tests.helpers import REPO

RATE_FIELDS = ("seconds", "slices_per_s", "pixels_per_s")


def assert_positive(value, name):
    assert isinstance(value, (int, float)) and not isinstance(value, bool), name
    assert math.isfinite(value) and value > 0, f"{name} = {value!r}"


def assert_rates(row, name):
    for field in RATE_FIELDS:
        assert_positive(row[field], f"{name}.{field}")


def assert_device_memory(memory, name):
    if memory is None:  # allowed: backends without a memory analysis
        return
    assert isinstance(memory["peak_bytes"], int) and memory["peak_bytes"] >= 0, name
    assert all(isinstance(v, int) for v in memory.values()), name


def run_quick_cli(out, *flags):
    """Runs `python -m selal_jax.bench --quick` with these flags on the CPU; returns the JSON
    written to `out` and the completed process."""
    proc = subprocess.run(
        [sys.executable, "-m", "selal_jax.bench", "--quick", *flags, f"--output={out}"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One CLI run in quick mode, narrowed so that the test stays well under a minute on two
    cores: BALD only (single-pass scoring still runs in the scaling and reference sections),
    bfloat16 compute (the reference section runs float32), one train batch size, a U-Net of
    depth 1 on 16x16 slices. Most of its time is XLA compiling the dropout RNG of the MC programs.
    """
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    return run_quick_cli(
        out,
        "--strategies=bald",
        "--dtypes=bfloat16",
        "--train_batches=4",
        "--depth=1",
        "--image_size=16",
    )


def test_stdout_is_the_json_and_stderr_the_table(quick_run):
    result, proc = quick_run
    assert json.loads(proc.stdout) == result
    for heading in ("scoring", "scaling", "reference", "train", "MC encoder reuse"):
        assert heading in proc.stderr


def test_header_fields(quick_run):
    result, _ = quick_run
    assert result["schema_version"] == bench.SCHEMA_VERSION
    env = result["environment"]
    for field in ("backend", "device_kind", "cpu_model", "jax", "flax", "numpy", "threefry"):
        assert field in env
    assert env["backend"] == "cpu"
    assert_positive(env["device_count"], "device_count")
    config = result["config"]
    expected = dataclasses.asdict(
        dataclasses.replace(
            bench.default_config("cpu", quick=True),
            strategies=("bald",),
            dtypes=("bfloat16",),
            train_batches=(4,),
            depth=1,
            image_size=16,
        )
    )
    assert config == json.loads(json.dumps(expected))  # tuples come back as lists
    assert result["model"] == {
        "base_width": config["base_width"],
        "depth": config["depth"],
        "params": result["model"]["params"],
    }
    assert_positive(result["model"]["params"], "params")
    assert_positive(result["peak_rss_bytes"], "peak_rss_bytes")
    assert_positive(result["total_s"], "total_s")


def test_scoring_rows(quick_run):
    result, _ = quick_run
    config = result["config"]
    rows = result["scoring"]
    expected = [
        (s, m, d) for d in config["dtypes"] for s in config["strategies"] for m in config["modes"]
    ]
    assert [(r["strategy"], r["mode"], r["dtype"]) for r in rows] == expected
    for r in rows:
        name = f"scoring {r['strategy']}/{r['mode']}/{r['dtype']}"
        assert_rates(r, name)
        for field in ("lower_s", "compile_s", "score_s", "select_s", "device_only_slices_per_s"):
            assert_positive(r[field], f"{name}.{field}")
        assert r["passes"] == (config["mc_passes"] if r["strategy"] in scoring.MC_STRATEGIES else 1)
        assert r["batch_size"] == config["mc_batch_size"]
        assert math.isclose(r["seconds"], r["score_s"] + r["select_s"])
        assert math.isclose(r["pixels_per_s"], r["slices_per_s"] * config["image_size"] ** 2)
        assert_device_memory(r["device_memory"], name)


def test_scaling_rows(quick_run):
    result, _ = quick_run
    s = result["scaling"]
    assert [r["pool_size"] for r in s["rows"]] == sorted(result["config"]["scaling_pools"])
    assert s["image_size"] == result["config"]["scaling_image_size"]
    assert_positive(s["compile_s"], "scaling.compile_s")
    assert_positive(s["per_slice_time_spread"], "per_slice_time_spread")
    assert s["per_slice_time_spread"] >= 1.0
    assert_device_memory(s["device_memory"], "scaling")
    for r in s["rows"]:
        assert_rates(r, f"scaling {r['pool_size']}")
        assert_positive(r["us_per_slice"], "us_per_slice")
        for field in ("rss_before_bytes", "rss_after_bytes", "peak_rss_bytes"):
            assert_positive(r[field], field)  # Linux: /proc is there


def test_reference(quick_run):
    result, _ = quick_run
    r = result["reference"]
    assert (r["strategy"], r["mode"], r["dtype"]) == ("entropy", "selective", "float32")
    assert r["pool_size"] == result["config"]["pool_size"]
    assert_positive(r["forward_compile_s"], "forward_compile_s")
    assert_rates(r["host"], "reference.host")
    assert_rates(r["fused"], "reference.fused")
    for field in ("forward_copy_s", "host_scoring_s", "select_s", "host_scoring_slices_per_s"):
        assert_positive(r["host"][field], f"reference.host.{field}")
    assert_positive(r["speedup"], "speedup")
    assert r["pairs"] >= bench.REFERENCE_PAIRS
    assert 0.0 <= r["max_abs_diff_target_mean"] < 1e-3
    # The fused path and the published (host) path choose the same slices: their target means
    # differ by float32 rounding (about 2e-7 here), far below the gaps between ranked slices.
    assert r["query_overlap"] == 1.0


def test_train_rows(quick_run):
    result, _ = quick_run
    config = result["config"]
    rows = result["train"]
    assert [(r["dtype"], r["batch_size"]) for r in rows] == [
        (d, b) for d in config["dtypes"] for b in config["train_batches"]
    ]
    for r in rows:
        name = f"train {r['dtype']}/{r['batch_size']}"
        assert_rates(r, name)
        for field in ("lower_s", "compile_s", "steps_per_s", "final_loss"):
            assert_positive(r[field], f"{name}.{field}")
        assert r["steps"] == config["train_steps"]
        assert r["loss_dtype"] == "float32"  # mixed precision keeps the loss in float32
        assert_device_memory(r["device_memory"], name)


def test_mc_reuse_rows(quick_run):
    result, _ = quick_run
    rows = result["mc_reuse"]
    assert [r["dtype"] for r in rows] == result["config"]["dtypes"]
    for r in rows:
        assert (r["strategy"], r["passes"]) == ("bald", result["config"]["mc_passes"])
        for variant in ("reuse", "no_reuse"):
            assert_rates(r[variant], f"mc_reuse.{variant}")
            assert_positive(r[variant]["compile_s"], f"mc_reuse.{variant}.compile_s")
            assert_device_memory(r[variant]["device_memory"], variant)
        assert_positive(r["speedup"], "mc_reuse.speedup")
        assert math.isfinite(r["max_rel_diff_all_sum"]) and r["max_rel_diff_all_sum"] >= 0


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("image_size", 30, "multiple of 2\\*\\*depth"),
        ("strategies", ("entropy", "random"), "non-empty list of \\(.entropy., .least_confidence."),
        ("dtypes", ("float16",), "non-empty list"),
        ("sections", (), "non-empty list"),
        ("scaling_pools", (0,), "positive integers"),
        ("repeats", 0, "positive integer"),
    ],
)
def test_validate_config_names_the_field(field, value, message):
    config = dataclasses.replace(bench.default_config("cpu", quick=True), **{field: value})
    with pytest.raises(ValueError, match=f"field {field}: .*{message}"):
        bench.validate_config(config)


def test_host_reference_matches_the_fused_formulas():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.0, 1.0, (3, 8, 8)).astype(np.float32)
    probs[0, 0, :4] = [0.0, 1.0, 0.1, 0.6]  # limits and mask edges
    host = np.array([bench.host_entropy_stats(p, 0.1, 0.1) for p in probs], np.float64)
    fused = scoring.stats_from_probs(
        probs[:, None], np.float32(0.1), np.float32(0.1), strategy="entropy", convention="paper"
    )
    # The six binary fields (SliceStats may carry per-class sums after them).
    fused = np.stack([np.asarray(x) for x in fused[:6]], 1)
    np.testing.assert_allclose(host, fused, rtol=1e-5)


def test_synthetic_pool_is_lazy_and_bounded():
    pool = bench.SyntheticPool(10**9, 16, seed=0)  # far larger than memory: nothing is made
    batch = pool[np.array([0, 5, 10**9 - 1])]
    assert batch.shape == (3, 16, 16) and batch.dtype == np.float32
    assert set(np.unique(pool.labels([3]))) <= {0.0, 1.0}
    np.testing.assert_array_equal(pool[[7]], pool[[7]])
    with pytest.raises(IndexError):
        pool[[10**9]]


def test_multiclass_multichannel_run(quick_run, tmp_path):
    """C = 3 foreground classes (a 4-logit softmax head) and K = 2 input channels: the scoring and
    train sections run, the binary host reference says it is skipped (no speed checks)."""
    result, proc = run_quick_cli(
        tmp_path / "multiclass.json",
        "--num_classes=3",
        "--channels=2",
        "--sections=scoring,reference,train",
        "--strategies=entropy",
        "--modes=selective",
        "--dtypes=float32",
        "--train_batches=4",
        "--depth=1",
        "--image_size=16",
    )
    config = result["config"]
    assert (config["num_classes"], config["channels"]) == (3, 2)
    assert config["sections"] == ["scoring", "reference", "train"]
    # The binary run's U-Net plus 9 x base_width weights per further input channel (the first
    # 3x3 convolution) and base_width + 1 per further logit (the 1x1 head).
    width, binary = config["base_width"], quick_run[0]["model"]["params"]
    assert result["model"]["params"] == binary + 9 * width * (2 - 1) + (width + 1) * (4 - 1)
    assert "skipped" in result["reference"] and "num_classes = 3" in result["reference"]["skipped"]
    assert "reference: skipped" in proc.stderr
    [row] = result["scoring"]
    assert (row["strategy"], row["mode"], row["dtype"]) == ("entropy", "selective", "float32")
    assert_rates(row, "multiclass scoring")
    assert_positive(row["device_only_slices_per_s"], "multiclass device_only_slices_per_s")
    [row] = result["train"]
    assert_rates(row, "multiclass train")
    assert_positive(row["steps_per_s"], "multiclass steps_per_s")
    assert_positive(row["final_loss"], "multiclass final_loss")  # softmax CE over 4 logits


def test_synthetic_pool_channels_and_classes():
    pool = bench.SyntheticPool(100, 16, seed=0, channels=3, num_classes=3)
    assert pool[[0, 1]].shape == (2, 16, 16, 3)
    labels = pool.labels(np.arange(64))
    assert labels.shape == (64, 16, 16) and labels.dtype == np.float32
    assert set(np.unique(labels)) <= {0.0, 1.0, 2.0, 3.0} and labels.max() == 3.0
    # One class and one channel: the binary pool, bit for bit.
    np.testing.assert_array_equal(
        bench.SyntheticPool(100, 16, seed=0, channels=1, num_classes=1)[[5]],
        bench.SyntheticPool(100, 16, seed=0)[[5]],
    )


def test_peer_section(tmp_path):
    """--sections=peer: with torch, the same U-Net in PyTorch beside the product (rows, rates and
    per-pair ratios, no speed checks); without it, the skip message."""
    result, proc = run_quick_cli(
        tmp_path / "peer.json",
        "--sections=peer",
        "--depth=1",
        "--image_size=16",
        "--train_batches=4",
    )
    assert result["config"]["sections"] == ["peer"]
    assert set(result) >= {"peer", "environment", "model"} and "scoring" not in result
    peer = result["peer"]
    try:
        import torch  # noqa: F401
    except ImportError:
        assert peer == {"skipped": "torch not importable"}
        assert "peer: skipped (torch not importable)" in proc.stderr
        return
    assert peer["torch_device"] == "cpu" and peer["pairs"] >= bench.PEER_PAIRS
    config = result["config"]
    assert [r["name"] for r in peer["rows"]] == ["score_entropy", "score_bald", "train"]
    # The second peer, torch.compile (channels-last), runs where inductor can compile (a C++
    # compiler on a CPU); otherwise the result says why.
    peers = ["torch_eager"]
    if "torch_compile_skipped" in peer:
        assert peer["torch_compile_skipped"].startswith("torch.compile failed: ")
    else:
        peers.append("torch_compile")
    for r in peer["rows"]:
        for key in ("product", *peers):
            assert len(r[f"{key}_s"]) == peer["pairs"]
            assert_positive(r[f"{key}_slices_per_s"], f"peer {r['name']} {key}")
        for key in peers:
            assert_positive(r[f"product_over_{key}"], f"peer {r['name']} ratio {key}")
    assert peer["rows"][1]["passes"] == config["mc_passes"]
    assert peer["rows"][2]["slices"] == 4 * config["train_steps"]
    for key in peers:
        assert f"product / {key}" in proc.stderr


def test_peer_section_says_when_torch_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    config = dataclasses.replace(bench.default_config("cpu", quick=True), sections=("peer",))
    assert bench.peer_section(bench.Bench(config)) == {"skipped": "torch not importable"}
    assert "peer: skipped" in bench.format_table(
        {
            "environment": {k: "x" for k in ("device_kind", "backend", "cpu_model", "cpu_count")}
            | {"jax": "x", "flax": "x"},
            "config": dataclasses.asdict(config),
            "model": {"params": 1},
            "peer": {"skipped": "torch not importable"},
            "peak_rss_bytes": 1,
            "total_s": 1.0,
        }
    )
