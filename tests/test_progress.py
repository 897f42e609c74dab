"""The progress bars: count, rate and the info text; shown on process 0 only."""

import io

import jax

from selal_jax.base.progress import Progress


def test_bar_shows_count_rate_and_info():
    stream = io.StringIO()
    bar = Progress("scoring pool", total=6, unit="slices", stream=stream)
    for done in (2, 4, 6):  # absolute counts, as map_batches reports them
        bar.update(done, "loss 0.5")
    bar.close()
    last = stream.getvalue().strip().split("\r")[-1]
    assert last.startswith("scoring pool: 100%") and "6/6" in last
    assert "slices/s" in last and "loss 0.5" in last
    assert bar.bar.n == 6


def test_bar_is_silent_on_other_processes(monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    stream = io.StringIO()
    bar = Progress("round 0 training", total=3, unit="epoch", stream=stream)
    bar.update(3, "x")
    bar.close()
    assert stream.getvalue() == ""
