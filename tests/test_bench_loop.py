"""The benchmark's loop section (issue 28): a smoke run at tiny sizes (well-formed rows, no speed
or memory checks: the benchmark is never a timed test), and the pieces it measures with."""

from __future__ import annotations

import time
import types

import numpy as np
import pytest

from selal_jax import bench
from selal_jax.bench import loop
from tests.test_bench import assert_positive, run_quick_cli


def test_loop_section_rows(tmp_path):
    result, proc = run_quick_cli(
        tmp_path / "loop.json", "--sections=loop", "--loop_pools=32,16", "--loop_repeats=2"
    )
    config = result["config"]
    assert result["config"]["sections"] == ["loop"] and "scoring" not in result
    rows = result["loop"]
    assert [r["pool_size"] for r in rows] == [16, 32]  # ascending
    for r in rows:
        assert list(r["seconds"]) == list(bench.LOOP_PARTS)
        for part, seconds in r["seconds"].items():
            assert_positive(seconds, f"loop {r['pool_size']} {part}")
        assert r["repeats"] == 2 and len(r["peak_anon_mib_runs"]) == 2
        assert r["peak_anon_mib"] == pytest.approx(np.median(r["peak_anon_mib_runs"]))
        assert 0 < r["start_anon_mib"] <= r["peak_anon_mib"]
        assert r["round_s"] >= sum(r["seconds"].values()) * (1 - 1e-9)
        candidates = r["pool_size"] - config["loop_labelled"]
        assert r["score_us_per_slice"] == pytest.approx(1e6 * r["seconds"]["score"] / candidates)
        for field in ("round_s", "open_s", "write_cache_s"):
            assert_positive(r[field], f"loop {r['pool_size']} {field}")
    first, second = rows
    assert first["anon_growth_mib"] == 0 and first["score_per_slice_ratio"] == 1
    paired = np.subtract(second["peak_anon_mib_runs"], first["peak_anon_mib_runs"])
    assert second["anon_growth_mib_runs"] == pytest.approx(paired.tolist())
    assert second["anon_growth_mib"] == pytest.approx(np.median(paired))
    assert second["score_per_slice_ratio"] == pytest.approx(
        second["score_us_per_slice"] / first["score_us_per_slice"]
    )
    # one batch: loop_batch_size float32 images and uint8 labels of loop_image_size^2 pixels
    batch = config["loop_batch_size"] * config["loop_image_size"] ** 2 * (4 + 1)
    allowance = (batch + bench.BUDGET_BYTES_PER_SLICE * 16) / 2**20
    assert second["allowance_mib"] == pytest.approx(allowance)
    assert second["within_budget"] == (second["anon_growth_mib"] < allowance)
    assert "loop (one round of the loop" in proc.stderr


def test_loop_pools_below_the_labelled_set_and_query_are_refused():
    config = bench.default_config("cpu", quick=True)
    small = config.loop_labelled + config.query_size - 1
    with pytest.raises(ValueError, match=r"loop_pools: expected pools of at least .*--loop_pools"):
        bench.validate_config(bench.BenchConfig(**{**vars(config), "loop_pools": (small,)}))


def test_part_timer_counts_each_second_once():
    """A timed call's seconds go to its part less those of the timed calls inside it; the
    functions are restored afterwards; one never called is an error."""
    now = [0.0]
    module = types.SimpleNamespace(__name__="m")

    def inner():
        now[0] += 2.0

    def outer():
        now[0] += 1.0
        module.inner()
        now[0] += 4.0

    def unused():
        pass

    module.inner, module.outer, module.unused = inner, outer, unused
    timed = ((module, "outer", "select"), (module, "inner", "score"))
    timer = loop.PartTimer(timed, clock=lambda: now[0])
    with timer.installed():
        module.outer()
        module.inner()
    assert timer.seconds["select"] == 5.0 and timer.seconds["score"] == 2.0 + 2.0
    assert timer.seconds["train"] == 0.0 and set(timer.seconds) == set(bench.LOOP_PARTS)
    assert timer.calls == {"m.outer": 1, "m.inner": 2}
    assert (module.inner, module.outer) == (inner, outer)
    timer.check_all_called()
    never = loop.PartTimer(((module, "unused", "records"),))
    with pytest.raises(RuntimeError, match=r"never called .*m\.unused"):
        never.check_all_called()


def test_peak_anon_sees_an_array_written_and_freed_inside_the_block():
    size = 64 * 2**20
    with bench.PeakAnon(interval=0.001) as anon:
        array = np.ones(size // 8)  # every page written: anonymous memory
        time.sleep(0.05)
        del array  # a large array is unmapped when freed
    assert anon.peak - anon.start >= 0.9 * size
    assert bench.rss_anon_bytes() < anon.peak - 0.5 * size
