"""Fault injection for crash-safety tests: SIGKILL this process at a named point.

Set SELAL_JAX_KILL_AT="<point>@<round>" (points: train, score, save) and the process kills itself
with SIGKILL when it reaches that point in that round: after the first training epoch, after the
first scoring batch is dispatched, or right after an orbax save has started (before it is
finished). Unset (the normal case), `checkpoint` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "SELAL_JAX_KILL_AT"


def checkpoint(point: str, round_index: int) -> None:
    target = os.environ.get(ENV)
    if target and target == f"{point}@{round_index}":
        os.kill(os.getpid(), signal.SIGKILL)
