"""A finished run on a read-only file system (an archive, a shared mount): `export-nnunet` and
`query` read it through `run.state.open_finished` and write nothing there.

The workdir and the dataset are bound read-only in a private mount namespace (`unshare`), so a
write fails with EROFS even for root; without `unshare`, a non-root user's `chmod -R a-w` does
the same. Before `open_finished`, both verbs failed there: every verb opened the run with orbax
creating its folder and probing it with a write ("the checkpoint folder is not writable ...
nothing was trained"), and `query` also opened the lock file for writing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from selal_jax.run import loop
from tests.helpers import REPO, smoke_config

TRAIN = {"train.max_epochs": 1, "train.min_steps_per_epoch": 2, "al.rounds": 1}
# Binds each folder ($1 ...) onto itself read-only, then runs the command after "--".
BIND_READ_ONLY = (
    'while [ "$1" != -- ]; do mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 97;'
    ' shift; done; shift; exec "$@"'
)


def _unshare_works(folder: str) -> bool:
    """Whether a read-only bind mount in a private namespace refuses a write in `folder`."""
    if shutil.which("unshare") is None:
        return False
    probe = os.path.join(folder, "probe")
    script = BIND_READ_ONLY.replace('exec "$@"', f'touch "{probe}"')
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", folder, "--"], capture_output=True, text=True
    )
    return proc.returncode not in (0, 97) and not os.path.exists(probe)


def _snapshot(folders) -> dict:
    """{path: (size, mtime, sha256)} of every file under `folders`."""
    out = {}
    for folder in folders:
        for parent, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(parent, name)
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                st = os.stat(path)
                out[path] = (st.st_size, st.st_mtime_ns, digest)
    return out


@pytest.fixture
def read_only(tmp_path):
    """launch.py with `folders` read-only: (args, folders) -> CompletedProcess."""
    if _unshare_works(str(tmp_path)):

        def run(args, folders):
            command = [sys.executable, os.path.join(REPO, "launch.py"), *args]
            return subprocess.run(
                ["unshare", "-rm", "sh", "-c", BIND_READ_ONLY, "sh", *folders, "--", *command],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=600,
            )

        return run
    if os.geteuid() == 0:
        pytest.skip("no unshare (mount namespaces), and chmod does not stop root's writes")

    def run(args, folders):
        modes = {}
        for folder in folders:
            for parent, _, names in os.walk(folder):
                for path in [parent, *(os.path.join(parent, n) for n in names)]:
                    modes[path] = os.stat(path).st_mode
                    os.chmod(path, modes[path] & ~0o222)
        try:
            command = [sys.executable, os.path.join(REPO, "launch.py"), *args]
            return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
        finally:
            for path, mode in modes.items():
                os.chmod(path, mode)

    return run


def _finished_run(tmp_path, cohort_root, **fields) -> tuple[str, str]:
    """(workdir, data root) of a finished smoke run, the data copied beside it."""
    root = str(tmp_path / "data")
    shutil.copytree(cohort_root, root)
    workdir = str(tmp_path / "run")
    loop.run(smoke_config(**{"data.root": root, **TRAIN, **fields}), workdir)
    return workdir, root


def test_export_nnunet_reads_a_read_only_run(tmp_path, cohort_root, read_only):
    workdir, root = _finished_run(tmp_path, cohort_root)
    before = _snapshot([workdir, root])
    out = str(tmp_path / "Dataset501_ReadOnly")
    proc = read_only(["export-nnunet", f"--workdir={workdir}", f"--out={out}"], [workdir, root])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out}" in proc.stdout
    with open(os.path.join(out, "dataset.json")) as f:
        meta = json.load(f)
    assert len(os.listdir(os.path.join(out, "labelsTr"))) == meta["numTraining"] > 0
    assert _snapshot([workdir, root]) == before


def test_query_reads_a_read_only_run(tmp_path, cohort_root, read_only):
    workdir, root = _finished_run(tmp_path, cohort_root, **{"al.annotator": "human"})
    with open(os.path.join(workdir, "records.jsonl")) as f:
        queried = json.loads(f.readline())["queried"]
    before = _snapshot([workdir, root])
    out = str(tmp_path / "query")
    proc = read_only(["query", f"--workdir={workdir}", f"--out={out}"], [workdir, root])
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "query.json")) as f:
        assert [row["pool_id"] for row in json.load(f)["slices"]] == queried
    assert _snapshot([workdir, root]) == before
