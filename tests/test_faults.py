"""faults.maybe_kill: SIGKILL at the named point and round only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from selal_jax.base import faults

# Imports only selal_jax.base.faults (os and signal), so a child starts in well under a second.
CHILD = "from selal_jax.base import faults; faults.maybe_kill('score', 2); print('alive')"


def run_child(kill_at: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    if kill_at is not None:
        env[faults.ENV] = kill_at
    return subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_named_point_and_round_kill():
    done = run_child("score@2")
    assert done.returncode == -signal.SIGKILL and "alive" not in done.stdout


@pytest.mark.parametrize("kill_at", [None, "", "score@1", "train@2", "score@20"])
def test_other_points_rounds_or_unset_do_not(kill_at):
    done = run_child(kill_at)
    assert done.returncode == 0 and done.stdout.strip() == "alive", done.stderr
