"""Issue 24: one line per refusal. An expected failure (a bad flag, config, workdir, disk or
records file) ends with one `error:` line naming the file, folder or field and exit status 1,
without a traceback; a bug (any other exception, a plain ValueError included) keeps its
traceback. Each test failed before its fix (a full or read-only disk by making the write fail)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, failing_mkdir, launch

SMOKE = os.path.join(REPO, "configs/default.py:smoke")
LOG_LINE = re.compile(r"^[IWEF]\d{4} ")  # absl's log lines: time-stamped, not the message
PROGRESS = re.compile(r"^[\w ]+: +\d+%\|")  # tqdm's bars (split at their carriage returns)


def refusal(proc: subprocess.CompletedProcess) -> str:
    """The one line a refused command printed besides its log: asserts exit status 1, no
    traceback and no second line; returns the line."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and not LOG_LINE.match(line) and not PROGRESS.match(line)
    ]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def test_an_unknown_config_argument_and_an_unknown_verb_are_one_line(tmp_path):
    line = refusal(launch("--config=configs/default.py:smokey", f"--workdir={tmp_path}"))
    assert line == (
        "error: flag --config=configs/default.py:smokey: configs/default.py: unknown config "
        "argument 'smokey'; expected 'smoke', 'multiclass', 'clasp', 'compare', 'compare_smoke', "
        "'sweep' or none (--help lists the flags)"
    )
    line = refusal(launch("frob", f"--workdir={tmp_path}"))
    assert line.startswith("error: unknown command 'frob'; expected one of ('run', 'sweep'")


READ_ONLY_LOCK = """
import builtins, os
real_open = builtins.open
def open_(path, *args, **kwargs):
    if os.fspath(path).endswith(".lock"):
        raise OSError(30, "Read-only file system", os.fspath(path))
    return real_open(path, *args, **kwargs)
builtins.open = open_
"""


def test_a_read_only_workdir_is_one_line_naming_it(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    line = refusal(launch(f"--config={SMOKE}", f"--workdir={workdir}", wrapper=READ_ONLY_LOCK))
    assert line.startswith(
        f"error: {workdir}: cannot write its lock file .lock (the file system is read-only)"
    )


FULL_DISK_NIFTI = """
import nibabel
def save(*args, **kwargs):
    raise OSError(28, "No space left on device")
nibabel.save = save
"""


def test_a_full_disk_while_writing_the_synthetic_cohort_is_one_line(tmp_path):
    workdir = tmp_path / "run"
    line = refusal(launch(f"--config={SMOKE}", f"--workdir={workdir}", wrapper=FULL_DISK_NIFTI))
    assert line.startswith(
        f"error: {workdir}: cannot write the synthetic cohort synthetic_cohort (the disk is full)"
    )
    assert sorted(os.listdir(workdir)) == [".lock"]  # no cohort, no temporary folder


FULL_DISK_CACHE = """
from selal_jax.data import cache
def append(self, rows):
    raise OSError(28, "No space left on device", self.path)
cache.NpyAppender.append = append
"""


def test_a_full_disk_while_writing_the_slice_cache_is_one_line(tmp_path, cohort_root):
    workdir = tmp_path / "run"
    proc = launch(
        f"--config={SMOKE}",
        f"--workdir={workdir}",
        f"--config.data.root={cohort_root}",
        wrapper=FULL_DISK_CACHE,
    )
    line = refusal(proc)
    assert line.startswith(
        f"error: {workdir}/cache: cannot write the slice cache (the disk is full)"
    )
    assert os.listdir(workdir / "cache") == []  # the temporary folder is gone


FULL_DISK_ROUND_0 = failing_mkdir(
    os.sep + "checkpoints" + os.sep + "0.", 28, "No space left on device"
)


def test_a_full_disk_while_saving_a_checkpoint_is_said_once(tmp_path, cohort_root):
    workdir = tmp_path / "run"
    proc = launch(
        f"--config={SMOKE}",
        f"--workdir={workdir}",
        f"--config.data.root={cohort_root}",
        "--config.al.rounds=0",
        wrapper=FULL_DISK_ROUND_0,
    )
    line = refusal(proc)  # before: 350 lines of orbax's background threads' tracebacks first
    assert line.startswith(
        f"error: {workdir}/checkpoints: saving round 0 failed (the disk is full: OSError:"
    )
    assert not re.search(r"^E\d{4} ", proc.stderr, re.M), proc.stderr[-3000:]


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"round": 0}\n', "line 1: the record lacks the fields ['strategy', 'mode', "),
        (b'["round", 0]\n', "line 1 is not a record (a JSON object), got list"),
        (bytes(range(128, 256)), "not a records file (not UTF-8 text: "),
    ],
    ids=["missing-key", "not-an-object", "garbled"],
)
def test_report_on_a_bad_records_file_is_one_line_naming_it(tmp_path, content, message):
    records = tmp_path / "records.jsonl"
    records.write_bytes(content)
    line = refusal(launch("report", f"--workdir={tmp_path}"))
    assert line.startswith(f"error: {records}: {message}")


BUG = """
from selal_jax.run import loop
def run(config, workdir, round0=None):
    raise ValueError("an internal bug")
loop.run = run
"""


def test_a_plain_value_error_of_a_bug_keeps_its_traceback(tmp_path):
    proc = launch(f"--config={SMOKE}", f"--workdir={tmp_path / 'run'}", wrapper=BUG)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "ValueError: an internal bug"


def bench_cli(*flags) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selal_jax.bench", "--quick", *flags],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )


BENCH_FLAGS = [
    ("--sections=foo", "sections", "expected a non-empty list of ('scoring', "),
    ("--image_size=-5", "image_size", "expected a positive integer, got -5"),
    ("--dtypes=float8", "dtypes", "expected a non-empty list of ('float32', 'bfloat16')"),
    ("--repeats=0", "repeats", "expected a positive integer, got 0"),
    ("--strategies=nope", "strategies", "expected a non-empty list of ('entropy', "),
    ("--pool_size=0", "pool_size", "expected a positive integer, got 0"),
]


@pytest.mark.parametrize("flag, field, message", BENCH_FLAGS, ids=[f[1] for f in BENCH_FLAGS])
def test_a_bad_benchmark_flag_is_one_line_naming_it(flag, field, message):
    proc = bench_cli(flag)
    assert proc.stdout == ""  # no JSON: nothing ran
    line = refusal(proc)
    assert line.startswith(f"error: bench config field {field}: {message}")
    assert line.endswith(f"(--{field})")


def test_a_full_disk_while_writing_records_names_the_folder_and_keeps_the_old_file(
    tmp_path, monkeypatch
):
    from selal_jax.base import errors
    from selal_jax.run import checkpointing

    path = tmp_path / "records.jsonl"
    path.write_text('{"round": 0}\n')

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(errors.UserError) as e:  # before: the OSError, a traceback
        checkpointing.write_json_atomic(str(path), [{"round": 0}, {"round": 1}], lines=True)
    assert str(e.value).startswith(f"{tmp_path}: cannot write records.jsonl (the disk is full)")
    assert path.read_text() == '{"round": 0}\n'
    assert os.listdir(tmp_path) == ["records.jsonl"]
