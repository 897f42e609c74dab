"""selal-jax: selective uncertainty-based active learning for medical image segmentation.

The package's folders are its layers, each importing only from those below it
(docs/architecture.md; tests/test_architecture.py holds the table):

  base/   errors, atomic writes, progress bars, fault hooks, the config schema
  core/   the numerical core: U-Net, training steps, scoring, selection, metrics, keys, devices
  data/   datasets: layouts, reading, preprocessing, the slice cache, splits
  run/    one run: its parts, the round loop, checkpoints, the run folder, evaluation
  verbs/  what launch.py runs: annotate, export, inspect, sweep, report
  bench/  throughput benchmarks (core only)

The names below resolve lazily (PEP 562), so that `import selal_jax` imports no JAX, and
`from selal_jax import models, scoring, train, rng` keeps working for scripts written against
the flat package.
"""

import importlib

__all__ = ["models", "rng", "scoring", "select_from_probs", "train"]
__version__ = "0.1.0"

_CORE_MODULES = ("models", "rng", "scoring", "train")


def __getattr__(name):
    if name in _CORE_MODULES:
        return importlib.import_module(f"selal_jax.core.{name}")
    if name == "select_from_probs":
        from selal_jax.core.selection import select_from_probs

        return select_from_probs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
