"""Crash safety: SIGKILL at several moments, resume, and get bit-identical results."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from selal_jax.base import schema
from selal_jax.run import checkpointing, loop
from tests.helpers import REPO, comparable
from tests.helpers import restore_final as final_state

# Minutes of end-to-end runs (SIGKILL and resume): skipped by the README's test command, run by .ci/run.
pytestmark = pytest.mark.slow
ROUNDS = 3  # rounds 0..3: a 4-round experiment


def overrides(cohort_root):
    return {"data.root": cohort_root, "al.rounds": ROUNDS}


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent compilation cache shared by the subprocesses (same programs, same results)."""
    return str(tmp_path_factory.mktemp("jax-cache"))


def launch(workdir, cohort_root, kill_at=None, extra=(), cache=None):
    env = dict(os.environ)
    if cache:
        env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("SELAL_JAX_KILL_AT", None)
    if kill_at:
        env["SELAL_JAX_KILL_AT"] = kill_at
    args = [
        sys.executable,
        os.path.join(REPO, "launch.py"),
        "--config=" + os.path.join(REPO, "configs/default.py:smoke"),
        f"--workdir={workdir}",
    ]
    args += [f"--config.{k}={v}" for k, v in overrides(cohort_root).items()] + list(extra)
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cohort_root):
    from tests.helpers import smoke_config

    config = smoke_config(**overrides(cohort_root))
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    history = loop.run(config, workdir)
    return config, workdir, history


def test_sigkill_at_several_moments_then_resume_is_bit_identical(
    reference, tmp_path, cohort_root, compile_cache
):
    config, ref_workdir, ref_history = reference
    workdir = str(tmp_path / "killed")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    for kill_at, expected_latest in (("train@1", {0}), ("score@2", {1}), ("save@2", {1, 2})):
        proc = launch(workdir, cohort_root, kill_at, cache=compile_cache)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        latest = checkpointing.Checkpointer(ckpt_dir, 2).latest_round()
        assert latest in expected_latest, (kill_at, latest)
    proc = launch(workdir, cohort_root, cache=compile_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]

    with open(os.path.join(workdir, "records.jsonl")) as f:
        history = [json.loads(line) for line in f]
    assert comparable(history) == comparable(json.loads(json.dumps(ref_history)))
    state, record = final_state(config, workdir)
    ref_state, ref_record = final_state(config, ref_workdir)
    assert record["labelled_ids"] == ref_record["labelled_ids"]
    import jax

    for a, b in zip(
        jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(ref_state), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_changed_config_is_refused_naming_the_keys(reference, cohort_root, monkeypatch):
    config, workdir, history = reference
    from tests.helpers import smoke_config

    changed = smoke_config(
        **overrides(cohort_root), **{"al.target_threshold": 0.3, "train.batch_size": 4}
    )
    with pytest.raises(
        ValueError,
        match=r"al\.target_threshold.*train\.batch_size|train\.batch_size.*al\.target_threshold",
    ) as e:
        loop.run(changed, workdir)
    assert "allow_config_change" in str(e.value)
    # Neutral keys are accepted: the finished run is resumed as it is, nothing trained again.
    neutral = smoke_config(
        **overrides(cohort_root), **{"checkpoint.keep": 3, "train.eval_batch_size": 16}
    )
    assert {"checkpoint.keep", "train.eval_batch_size"} <= set(schema.RESUME_NEUTRAL_KEYS)

    def no_training(*args, **kwargs):
        raise AssertionError("a neutral change trained again")

    monkeypatch.setattr(loop.fit_lib, "fit", no_training)
    assert loop.run(neutral, workdir) == history


def test_changed_dataset_is_refused(tmp_path, cohort_root):
    import shutil

    from tests.helpers import smoke_config

    root = str(tmp_path / "cohort")
    shutil.copytree(cohort_root, root)
    config = smoke_config(**{"data.root": root, "al.rounds": 0})
    workdir = str(tmp_path / "run")
    loop.run(config, workdir)
    image = os.path.join(root, "imagesTr", sorted(os.listdir(os.path.join(root, "imagesTr")))[0])
    with open(image, "ab") as f:  # a changed file: size and mtime differ
        f.write(b"\0")
    with pytest.raises(ValueError, match="dataset changed"):
        loop.run(config, workdir)


def test_resume_false_refuses_a_workdir_with_checkpoints(reference, cohort_root):
    config, workdir, _ = reference
    from tests.helpers import smoke_config

    with pytest.raises(ValueError, match="empty workdir"):
        loop.run(smoke_config(**overrides(cohort_root), resume=False), workdir)


def test_failed_save_is_a_clear_error_and_keeps_the_previous_checkpoint(
    tmp_path, cohort_root, monkeypatch
):
    from tests.helpers import smoke_config

    config = smoke_config(**{"data.root": cohort_root, "al.rounds": 1})
    workdir = str(tmp_path / "run")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    original_save = checkpointing.Checkpointer.save

    def save_then_lock(self, round_index, state, record):
        original_save(self, round_index, state, record)
        if round_index == 0:  # make the checkpoint directory read-only after round 0
            if os.geteuid() == 0:  # root ignores permissions: refuse writes the way EROFS would

                def refuse(*args, **kwargs):
                    raise OSError(30, "Read-only file system", ckpt_dir)

                monkeypatch.setattr(self.manager, "save", refuse)
            else:
                os.chmod(ckpt_dir, 0o555)

    monkeypatch.setattr(checkpointing.Checkpointer, "save", save_then_lock)
    try:
        with pytest.raises(
            checkpointing.CheckpointError,
            match=r"checkpoints: saving round 1 failed.*round 0\) is intact",
        ):
            loop.run(config, workdir)
    finally:
        os.chmod(ckpt_dir, 0o755)
    monkeypatch.undo()
    ckpt = checkpointing.Checkpointer(ckpt_dir, 2)
    assert ckpt.latest_round() == 0
    record = ckpt.restore_loop(0)
    assert (
        record["round"] == 0
        and len(record["labelled_ids"]) == config.al.initial_size + config.al.query_size
    )
    # and the run resumes from it
    history = loop.run(config, workdir)
    assert [r["round"] for r in history] == [0, 1]


def test_extending_a_finished_run_equals_the_longer_run(reference, tmp_path, cohort_root):
    from tests.helpers import smoke_config

    config, ref_workdir, ref_history = reference
    workdir = str(tmp_path / "extended")
    short = loop.run(smoke_config(**{**overrides(cohort_root), "al.rounds": 1}), workdir)
    assert [r["round"] for r in short] == [0, 1] and short[-1]["queried"] == []
    extended = loop.run(config, workdir)  # al.rounds 1 -> 3: a neutral change
    assert comparable(extended) == comparable(json.loads(json.dumps(ref_history)))
    state, _ = final_state(config, workdir)
    ref_state, _ = final_state(config, ref_workdir)
    import jax

    for a, b in zip(
        jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(ref_state), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_loop_of_a_damaged_checkpoint_is_a_checkpoint_error(tmp_path):
    from selal_jax.run import checkpointing

    ckpt = checkpointing.Checkpointer(str(tmp_path / "c"))
    ckpt.save(0, {"w": np.zeros(3)}, {"round": 0})
    ckpt.close()
    for path in (tmp_path / "c" / "0" / "loop").iterdir():
        path.write_text("{ not json")
    ckpt = checkpointing.Checkpointer(str(tmp_path / "c"))
    try:
        with pytest.raises(checkpointing.CheckpointError, match=r"cannot restore round 0"):
            ckpt.restore_loop(0)
    finally:
        ckpt.close()
