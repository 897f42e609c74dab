"""Issue 24: a kill during the cache build, the export or a write leaves temporary `.tmp-*`
folders and files; the next run removes those it owns whose process is gone (their name holds
its pid and host) or that are older than a day, before it builds. Each test failed before."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from selal_jax.base import atomic
from selal_jax.run import lock
from tests import helpers
from tests.test_data import data_config, load, volumes

THIRDS = (1 / 3, 1 / 3, 1 / 3)


def dead_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def left_behind(folder, prefix: str) -> dict[str, str]:
    """Temporary entries as killed and running processes leave them: {kind: name}."""
    host = atomic.owner_tag().split("h", 1)[1]
    names = {
        "dead": f"{prefix}pid{dead_pid()}h{host}abc",  # this host, its process gone
        "alive": f"{prefix}pid{os.getppid()}h{host}abc",  # this host, running (pytest's parent)
        "other host": f"{prefix}pid{dead_pid()}h00000000-abc",  # another host: by age only
        "old": f"{prefix}xyz",  # an older version's name, two days old
        "new": f"{prefix}uvw",  # an older version's name, just written
    }
    os.makedirs(folder, exist_ok=True)
    for kind, name in names.items():
        os.makedirs(os.path.join(folder, name, "sub"))
        if kind == "old":
            two_days_ago = time.time() - 2 * 86400
            os.utime(os.path.join(folder, name), (two_days_ago, two_days_ago))
    return names


def test_a_cache_build_removes_the_stale_temporary_folders_it_owns(tmp_path):
    root = helpers.write_msd(str(tmp_path / "msd"), volumes(3))
    cache_dir = tmp_path / "work" / "cache"
    names = left_behind(cache_dir, ".tmp-0123456789abcdef-")
    splits = load(data_config("msd", root, split=THIRDS), tmp_path)
    kept = sorted(n for n in os.listdir(cache_dir) if n.startswith(".tmp-"))
    assert kept == sorted(names[k] for k in ("alive", "other host", "new"))
    assert splits.fingerprint in os.listdir(cache_dir)


def test_writing_a_synthetic_cohort_removes_stale_temporary_folders(tmp_path):
    from selal_jax.data import synthetic

    names = left_behind(tmp_path, ".synthetic-")
    synthetic.write_cohort(str(tmp_path / "cohort"), 3, (16, 16, 6), 0)
    kept = sorted(n for n in os.listdir(tmp_path) if n.startswith(".synthetic-"))
    assert kept == sorted(names[k] for k in ("alive", "other host", "new"))


def test_taking_a_workdir_removes_the_stale_temporary_files_of_its_writes(tmp_path):
    workdir = tmp_path / "run"
    names = left_behind(workdir, ".tmp-")
    with lock.hold(str(workdir)):
        pass
    kept = sorted(n for n in os.listdir(workdir) if n.startswith(".tmp-"))
    assert kept == sorted(names[k] for k in ("alive", "other host", "new"))


def test_temporary_names_carry_their_owner(tmp_path):
    with atomic.atomic_open(str(tmp_path / "x.json"), "w") as f:
        (name,) = [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
        f.write("{}")
    assert name.startswith(".tmp-" + atomic.owner_tag())
    assert atomic.owner_tag().startswith(f"pid{os.getpid()}h")
