"""The random-number setting every selal-jax entry point runs under.

JAX >= 0.5 defaults to the "partitionable" threefry, whose programs take 3-7x longer to compile
on XLA:CPU (measured here: U-Net init 20.7 s vs 3.1 s, a train step 13.2 s vs 6.2 s, jax 0.10.2).
Both variants are deterministic; they just give different numbers. Entry points
(`loop.run`, `select_from_probs`, the benchmarks) run inside `classic_threefry()`, a scoped
setting, so importing selal_jax never changes JAX's global configuration, and the same config and
seed give the same results however the library is called.
"""

from __future__ import annotations

import contextlib

import jax


def classic_threefry():
    """Context manager: non-partitionable threefry inside, the caller's setting restored after."""
    setting = getattr(jax, "threefry_partitionable", None)
    if setting is None:  # a JAX without the switch: keep its only behaviour
        return contextlib.nullcontext()
    return setting(False)
