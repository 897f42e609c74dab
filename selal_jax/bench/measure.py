"""Measurement helpers shared by the benchmarks: wall-clock timing, compile timing, process RSS,
device memory of a compiled program, and a description of the machine and library versions.

Also used by benchmarks/load_time.py (timing and `host_environment`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable

import flax
import jax
import numpy as np
import optax


def current_rss_bytes() -> int | None:
    """Resident set size now (Linux /proc), or None where unavailable."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def rss_anon_bytes() -> int | None:
    """The process's anonymous resident memory now (`RssAnon` of /proc/self/status: heap, stacks,
    CPU device buffers; not the page cache that memory-mapped files are read through), or None
    where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def release_free_memory() -> None:
    """Collects garbage and hands the allocator's free memory back to the system (glibc's
    `malloc_trim`; elsewhere only the collection), so that `RssAnon` measured next counts the
    memory in use rather than what earlier work left free in malloc's arenas."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
        if trim is not None:
            trim(0)


class PeakAnon:
    """The peak of `rss_anon_bytes` while a `with` block runs, sampled every `interval` seconds
    by a daemon thread (and once at entry and exit).

    Attributes:
      start: RssAnon at entry, bytes (None where unavailable).
      peak: the largest sample, bytes (None where unavailable); set on exit.
    """

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.start = self.peak = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _take(self) -> None:
        now = rss_anon_bytes()
        if now is not None and (self.peak is None or now > self.peak):
            self.peak = now

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def __enter__(self) -> PeakAnon:
        self.start = rss_anon_bytes()
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        self._thread.join()
        self._take()
        return False


def load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages; None where the platform has none."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def peak_rss_bytes() -> int:
    """Peak resident set size of the process so far (getrusage)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def device_memory(compiled) -> dict | None:
    """Byte counts of a compiled program's memory analysis, plus a peak estimate; None if absent.

    `peak_bytes` is the larger of the backend's own peak and arguments + outputs + temporaries
    - aliased (donated) bytes: XLA:CPU (jax 0.10) reports a peak smaller than its arguments plus
    temporaries, while XLA:GPU allocates the temporaries as one buffer next to the arguments.
    """
    try:
        stats = compiled.memory_analysis()
    except Exception:  # backends without the analysis raise various errors
        return None
    if stats is None:
        return None
    fields = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
        "peak_memory_in_bytes",
    )
    out = {f: int(getattr(stats, f)) for f in fields if getattr(stats, f, None) is not None}
    if not out:
        return None
    out["peak_bytes"] = peak_device_bytes(out)
    return out


def peak_device_bytes(fields: dict) -> int:
    """See `device_memory`; `fields` holds its byte counts (missing ones count as 0)."""
    total = (
        fields.get("argument_size_in_bytes", 0)
        + fields.get("output_size_in_bytes", 0)
        + fields.get("temp_size_in_bytes", 0)
        - fields.get("alias_size_in_bytes", 0)
    )
    return max(total, fields.get("peak_memory_in_bytes", 0))


def compile_timed(jitted, *args, **kwargs):
    """(executable, lower seconds, compile seconds) of `jitted` for these arguments."""
    start = time.perf_counter()
    lowered = jitted.lower(*args, **kwargs)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return compiled, lowered_at - start, time.perf_counter() - lowered_at


def wall_seconds(fn: Callable[[], object]) -> tuple[float, object]:
    """(wall seconds of one call, its result); fn must block until its work is done."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def timed_runs(fn: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    """(wall seconds of each of `repeats` calls, the last call's result); fn must block."""
    times, result = [], None
    for _ in range(repeats):
        seconds, result = wall_seconds(fn)
        times.append(seconds)
    return times, result


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(median wall seconds of `repeats` calls, the last call's result); fn must block."""
    times, result = timed_runs(fn, repeats)
    return statistics.median(times), result


def median_run(runs: list[dict]) -> dict:
    """The run of median 'seconds' (the upper one of an even count)."""
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def cpu_model() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo, else `platform.processor()`), or None."""
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None
            )
    except OSError:
        pass
    return model or platform.processor() or None


def host_environment() -> dict:
    """The host's CPU and the Python and NumPy versions (enough for a host-only benchmark)."""
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def environment() -> dict:
    """`host_environment` plus the JAX backend, its devices and the library versions."""
    host = host_environment()
    return {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "cpu_model": host["cpu_model"],
        "cpu_count": host["cpu_count"],
        "python": host["python"],
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": host["numpy"],
        "threefry": "classic (rng.classic_threefry)",
    }
