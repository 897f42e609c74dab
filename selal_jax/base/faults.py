"""Fault injection for crash-safety tests: SIGKILL this process at a named point.

Set SELAL_JAX_KILL_AT="<point>@<round>" (points: train, score, save) and `maybe_kill(point,
round)` kills the process with SIGKILL when it reaches that point in that round: after the first
training epoch, after the first scoring batch is dispatched, or right after an orbax save has
started (before it is finished). Unset (the normal case), `maybe_kill` costs one dictionary
lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "SELAL_JAX_KILL_AT"


def maybe_kill(point: str, round_index: int) -> None:
    """SIGKILLs this process if SELAL_JAX_KILL_AT is "<point>@<round_index>"."""
    target = os.environ.get(ENV)
    if target and target == f"{point}@{round_index}":
        os.kill(os.getpid(), signal.SIGKILL)
