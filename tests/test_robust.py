"""Issue 18: nothing lost, nothing silently wrong. Each test failed before its fix."""

import os
import socket
import subprocess
import sys
import time

import pytest

from selal_jax import checkpointing, lock, loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs/default.py:smoke")


def launch(*args, env=None, timeout=600, wrapper=None):
    """launch.py in a subprocess; `wrapper` is Python code run before it (a fault to inject)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("SELAL_JAX_KILL_AT", None)
    command = [sys.executable]
    if wrapper:
        command += [
            "-c",
            wrapper + "\nimport runpy, sys\nsys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')",
        ]
    command += [os.path.join(REPO, "launch.py"), *args]
    return subprocess.run(
        command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )


# ------------------------------------------------------------------ 1. the workdir lock


@pytest.fixture
def held_workdir(tmp_path):
    """A workdir whose lock another (real) process holds; yields (workdir, holder pid)."""
    workdir = str(tmp_path / "held")
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {REPO!r})\n"
        "from selal_jax import lock\n"
        f"with lock.hold({workdir!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield workdir, holder
    finally:
        holder.kill()
        holder.wait()


def test_a_second_process_is_refused_naming_the_workdir_and_holder(held_workdir, cohort_root):
    from tests.conftest import smoke_config

    workdir, holder = held_workdir
    config = smoke_config(**{"data.root": cohort_root})
    pattern = rf"{workdir}: in use by another process \(pid {holder.pid} on host "
    with pytest.raises(lock.LockedError, match=pattern) as e:
        loop.run(config, workdir)
    assert socket.gethostname() in str(e.value)
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))  # nothing touched
    # every verb that writes the workdir takes the lock
    from selal_jax import annotate, sweep

    for call in (
        lambda: sweep.run(config, workdir),
        lambda: loop.train_supervised(config, workdir),
        lambda: loop.train_shared_round0(config, workdir),
        lambda: annotate.export_query(config, workdir),
        lambda: annotate.import_labels(config, workdir, workdir),
    ):
        with pytest.raises(lock.LockedError, match="in use by another process"):
            call()
    # and launch.py says so in one line, at once
    start = time.time()
    proc = launch(f"--config={SMOKE}", f"--workdir={workdir}", f"--config.data.root={cohort_root}")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {workdir}: in use by")
    assert "Traceback" not in proc.stderr and time.time() - start < 60


def test_a_stale_lock_does_not_block(held_workdir):
    workdir, holder = held_workdir
    holder.kill()
    holder.wait()
    assert os.path.exists(os.path.join(workdir, lock.LOCK_FILE))  # the file stays behind
    with lock.hold(workdir):
        with lock.hold(workdir):  # re-entrant within a process
            pass
        with open(os.path.join(workdir, lock.LOCK_FILE)) as f:
            assert f.read().startswith(f"pid {os.getpid()} on host ")


def test_workdir_that_is_a_file_and_query_of_a_missing_workdir_are_messages(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    proc = launch(f"--config={SMOKE}", f"--workdir={path}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {path}: is a file, not a folder (--workdir)"
    )
    missing = str(tmp_path / "no_such_run")
    for verb in ("query", "import-labels"):
        proc = launch(verb, f"--workdir={missing}", f"--labels={tmp_path}")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{missing}: no such run folder" in proc.stderr
        assert not os.path.exists(missing)


# ------------------------------------------------- messages instead of tracebacks (launch.py)


def test_expected_failures_are_one_line_and_traceback_on_request(tmp_path):
    args = (f"--config={SMOKE}", f"--workdir={tmp_path / 'w'}", "--config.train.patience=-1")
    proc = launch(*args)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: config field train.patience: must be >= 1, got -1"
    )
    proc = launch(*args, env={"SELAL_JAX_TRACEBACK": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    proc = launch(*args, "--verbose")
    assert proc.returncode == 1 and "Traceback" in proc.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (
            (f"--config={SMOKE}", "--config.train.learnng_rate=1"),
            "error: unknown config field train.learnng_rate; did you mean train.learning_rate?",
        ),
        (
            ("--config.al.strateg=bald",),  # the default config, loaded at import
            "error: unknown config field al.strateg; did you mean al.strategy?",
        ),
        (
            ("--config=configs/no_such_config.py",),
            "error: config file configs/no_such_config.py not found or not loadable (--config)",
        ),
    ],
)
def test_config_typos_and_missing_config_files_are_named(tmp_path, args, message):
    proc = launch(*args, f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == message


# --------------------------------------------------------- 7. a read-only or full workdir

# Orbax's background save threads hit the read-only error the way a read-only mount does.
READ_ONLY_ROUND_1 = """
import os
real_mkdir = os.mkdir
def mkdir(path, *args, **kwargs):
    if os.sep + "checkpoints" + os.sep + "1." in os.fspath(path):
        raise OSError(30, "Read-only file system", os.fspath(path))
    return real_mkdir(path, *args, **kwargs)
os.mkdir = mkdir
"""


def test_a_failed_save_ends_the_process_at_once_with_the_error_last(tmp_path, cohort_root):
    from tests.conftest import smoke_config

    workdir = str(tmp_path / "run")
    loop.run(smoke_config(**{"data.root": cohort_root, "al.rounds": 0}), workdir)
    start = time.time()
    proc = launch(
        f"--config={SMOKE}",
        f"--workdir={workdir}",
        f"--config.data.root={cohort_root}",
        "--config.al.rounds=1",
        wrapper=READ_ONLY_ROUND_1,
        timeout=290,  # before: the CheckpointError, then 300 s of orbax threads waiting
    )
    elapsed = time.time() - start
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {workdir}/checkpoints: saving round 1 failed"), last
    assert "round 0) is intact" in last
    assert elapsed < 240


def test_resume_checks_that_the_checkpoints_folder_is_writable_before_training(
    tmp_path, cohort_root, monkeypatch
):
    from tests.conftest import smoke_config

    config = smoke_config(**{"data.root": cohort_root, "al.rounds": 0})
    workdir = str(tmp_path / "run")
    loop.run(config, workdir)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    def no_training(*args, **kwargs):
        raise AssertionError("trained before finding out it cannot save")

    monkeypatch.setattr(os, "fsync", disk_full)
    monkeypatch.setattr(loop, "fit", no_training)
    with pytest.raises(
        checkpointing.CheckpointError,
        match=rf"{workdir}/checkpoints: the checkpoint folder is not writable .*No space left",
    ):
        loop.run(smoke_config(**{"data.root": cohort_root, "al.rounds": 1}), workdir)


def test_an_error_of_close_does_not_mask_the_error_that_ended_the_run(
    tmp_path, cohort_root, monkeypatch
):
    from tests.conftest import smoke_config

    def disk_full(self):
        raise checkpointing.CheckpointError("disk full while saving")

    def close_fails(self):
        raise RuntimeError("close failed too")

    monkeypatch.setattr(loop.Experiment, "run", disk_full)
    monkeypatch.setattr(loop.Experiment, "close", close_fails)
    with pytest.raises(checkpointing.CheckpointError, match="disk full while saving"):
        loop.run(smoke_config(**{"data.root": cohort_root}), str(tmp_path / "run"))
