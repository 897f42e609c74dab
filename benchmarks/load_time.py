"""Load time of a synthetic NIfTI cohort, cold (preprocess + write the cache) and cached.

The cohort is written by selal_jax.data.writers (the tests' layout writers) and reused across
runs; timing and the host description come from selal_jax.bench.measure. Prints JSON.

  PYTHONPATH=. python benchmarks/load_time.py                       # 40 x 512x512x90 CT, MSD
  PYTHONPATH=. python benchmarks/load_time.py --shape=64,64,20 --n_volumes=8 --size=32,32

Cold times read the NIfTI files from the OS page cache when they were just written (no cache
dropping here): they measure decompression and preprocessing, not the disk.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default  # noqa: E402
from selal_jax.bench import measure  # noqa: E402
from selal_jax.data import loading, writers  # noqa: E402

_N = flags.DEFINE_integer("n_volumes", 40, "Volumes in the cohort.")
_SHAPE = flags.DEFINE_list("shape", ["512", "512", "90"], "Voxels X,Y,Z per volume.")
_SIZE = flags.DEFINE_list("size", None, "Slice size H,W (data.size); default: the volume's X,Y.")
_LAYOUT = flags.DEFINE_enum("layout", "msd", ["msd", "brats", "paired"], "Layout to write.")
_KIND = flags.DEFINE_enum("kind", "ct", ["ct", "mri"], "int16 CT (Spleen-like) or float32 MRI.")
_REPEATS = flags.DEFINE_integer("cached_repeats", 3, "Cached loads timed after the cold one.")
_COHORT = flags.DEFINE_string("cohort_dir", None, "Where the cohort is (re)used; default: tmp.")
_SCRATCH = flags.DEFINE_string("scratch", None, "Parent of the workdir (deleted at the end).")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    shape = tuple(int(s) for s in _SHAPE.value)
    size = tuple(int(s) for s in (_SIZE.value or shape[:2]))
    n = _N.value
    name = f"selal_load_time_{_LAYOUT.value}_{_KIND.value}_{n}x{'x'.join(map(str, shape))}"
    cohort = _COHORT.value or os.path.join(tempfile.gettempdir(), name)
    if not os.path.isdir(cohort):
        tmp = cohort + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        write_s, _ = measure.wall_seconds(
            lambda: writers.write_cohort(tmp, _LAYOUT.value, n, shape, seed=0, kind=_KIND.value)
        )
        os.rename(tmp, cohort)
    else:
        write_s = None  # reused
    source_bytes = sum(
        os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(cohort) for f in files
    )

    config = default.get_config().data
    config.layout, config.root, config.size = _LAYOUT.value, cohort, size
    if _LAYOUT.value == "brats":
        config.brats.grades = "LGG"
    scratch = tempfile.mkdtemp(prefix="selal_load_time_", dir=_SCRATCH.value)
    try:
        cold_s, cold = measure.wall_seconds(lambda: loading.load_dataset(config, scratch))
        cached_s, warm = measure.timed_runs(
            lambda: loading.load_dataset(config, scratch), _REPEATS.value
        )
        # What the loop does first with the pool: read every label once (from the memory map).
        parts = (warm.train, warm.val, warm.test)
        read_labels_s, positive = measure.wall_seconds(
            lambda: sum(int(p.labels.reshape(len(p), -1).any(axis=1).sum()) for p in parts)
        )
        cache_dir = os.path.join(scratch, "cache", warm.fingerprint)
        cache_bytes = sum(
            os.path.getsize(os.path.join(cache_dir, f)) for f in os.listdir(cache_dir)
        )
        n_slices = len(cold.train) + len(cold.val) + len(cold.test)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    env = measure.host_environment()
    result = {
        "cold_s": round(cold_s, 2),
        "cold_s_per_volume": round(cold_s / n, 3),
        "cached_s": [round(t, 4) for t in cached_s],
        "cached_read_all_labels_s": round(read_labels_s, 2),
        "slices": n_slices,
        "slices_with_target": positive,
        "cache_gb": round(cache_bytes / 1e9, 3),
    }
    print(
        json.dumps(
            {
                "n_volumes": n,
                "volume_shape": shape,
                "slice_size": size,
                "layout": _LAYOUT.value,
                "kind": _KIND.value,
                "cohort": cohort,
                "cohort_gb": round(source_bytes / 1e9, 3),
                "cohort_write_s": None if write_s is None else round(write_s, 1),
                "cpus": env["cpu_count"],
                "machine": env["cpu_model"] or platform.machine(),
                "environment": env,
                **result,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    app.run(main)
