"""Run by tests/test_mesh_calls.py in a subprocess with 4 fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4): records every batched call
(`parallel.map_batches`) and every training batch (`parallel.host_batch`) of whole runs of the
loop and of the verbs that predict, each with the function of the package that made it and the
mesh it got, and writes them as JSON. Usage: python -m tests.mesh_calls_worker OUT.json TMPDIR

Runs: the loop (al.rounds = 1: rounds 0 and 1, per-case evaluation on) with `entropy` (scoring,
both diagnostics) and with `random_predicted` (the predicted-target counts); the sweep's shared
round 0 (the pool embeddings); a human annotator's run and its query export (the predictions);
the query gallery of the entropy run (its maps and predictions).
"""

from __future__ import annotations

import json
import os
import sys

import jax

from selal_jax.core import parallel
from selal_jax.run import loop
from selal_jax.verbs import annotate, report_gallery, sweep
from tests.helpers import smoke_config

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "selal_jax")
SPIED = os.path.join(PACKAGE, "core", "parallel.py")


def caller() -> str:
    """'module.function' of the nearest frame in the package outside core/parallel.py."""
    frame = sys._getframe(2)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if path.startswith(PACKAGE) and path != SPIED:
            module = os.path.relpath(path, PACKAGE)[: -len(".py")].replace(os.sep, ".")
            return f"{module}.{frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


def spy(calls: list[dict]) -> None:
    """Replaces map_batches and host_batch by recording wrappers (Batcher.map and scoring call
    them through the module, so every batched call passes here)."""
    real_map, real_host = parallel.map_batches, parallel.host_batch

    def map_batches(fn, ids, *arrays, mesh=None, **kwargs):
        calls.append({"call": "map_batches", "by": caller(), "devices": mesh and mesh.size})
        return real_map(fn, ids, *arrays, mesh=mesh, **kwargs)

    def host_batch(mesh, ids, *arrays):
        calls.append({"call": "host_batch", "by": caller(), "devices": mesh and mesh.size})
        return real_host(mesh, ids, *arrays)

    parallel.map_batches, parallel.host_batch = map_batches, host_batch


def main(out: str, tmp: str) -> None:
    assert jax.device_count() == 4, jax.devices()
    calls: list[dict] = []
    spy(calls)
    cohort = os.path.join(tmp, "cohort")
    common = {"data.root": cohort, "al.rounds": 1, "eval.cases": True}
    for strategy in ("entropy", "random_predicted"):
        loop.run(smoke_config(**common, **{"al.strategy": strategy}), os.path.join(tmp, strategy))
    sweep.train_shared_round0(smoke_config(**common), os.path.join(tmp, "round0"))
    human = smoke_config(**common, **{"al.annotator": "human"})
    loop.run(human, os.path.join(tmp, "human"))
    annotate.export_query(human, os.path.join(tmp, "human"))
    assert report_gallery.build_gallery(os.path.join(tmp, "entropy")).rows
    with open(out, "w") as f:
        json.dump(calls, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
