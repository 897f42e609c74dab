"""Issue 18: nothing lost, nothing silently wrong. Each test failed before its fix."""

import os
import socket
import subprocess
import sys
import time

import pytest

from selal_jax.run import checkpointing, lock, loop
from selal_jax.verbs import report, sweep
from tests.helpers import REPO, comparable, failing_mkdir, launch, read_records

SMOKE = os.path.join(REPO, "configs/default.py:smoke")


# ------------------------------------------------------------------ 1. the workdir lock


@pytest.fixture
def held_workdir(tmp_path):
    """A workdir whose lock another (real) process holds; yields (workdir, holder pid)."""
    workdir = str(tmp_path / "held")
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {REPO!r})\n"
        "from selal_jax.run import lock\n"
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
    from tests.helpers import smoke_config

    workdir, holder = held_workdir
    config = smoke_config(**{"data.root": cohort_root})
    pattern = rf"{workdir}: in use by another process \(pid {holder.pid} on host "
    with pytest.raises(lock.LockedError, match=pattern) as e:
        loop.run(config, workdir)
    assert socket.gethostname() in str(e.value)
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))  # nothing touched
    # every verb that writes the workdir takes the lock
    from selal_jax.verbs import annotate

    for call in (
        lambda: sweep.run(config, workdir),
        lambda: sweep.train_supervised(config, workdir),
        lambda: sweep.train_shared_round0(config, workdir),
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
READ_ONLY_ROUND_1 = failing_mkdir(
    os.sep + "checkpoints" + os.sep + "1.", 30, "Read-only file system"
)


def test_a_failed_save_ends_the_process_at_once_with_the_error_last(tmp_path, cohort_root):
    from tests.helpers import smoke_config

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
    from tests.helpers import smoke_config

    config = smoke_config(**{"data.root": cohort_root, "al.rounds": 0})
    workdir = str(tmp_path / "run")
    loop.run(config, workdir)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    def no_training(*args, **kwargs):
        raise AssertionError("trained before finding out it cannot save")

    monkeypatch.setattr(os, "fsync", disk_full)
    monkeypatch.setattr(loop.fit_lib, "fit", no_training)
    with pytest.raises(
        checkpointing.CheckpointError,
        match=rf"{workdir}/checkpoints: the checkpoint folder is not writable .*No space left",
    ):
        loop.run(smoke_config(**{"data.root": cohort_root, "al.rounds": 1}), workdir)


def test_an_error_of_close_does_not_mask_the_error_that_ended_the_run(
    tmp_path, cohort_root, monkeypatch
):
    from tests.helpers import smoke_config

    def disk_full(*args):
        raise checkpointing.CheckpointError("disk full while saving")

    def close_fails(self):
        raise RuntimeError("close failed too")

    monkeypatch.setattr(loop, "run_rounds", disk_full)
    monkeypatch.setattr(checkpointing.Checkpointer, "close", close_fails)
    with pytest.raises(checkpointing.CheckpointError, match="disk full while saving"):
        loop.run(smoke_config(**{"data.root": cohort_root}), str(tmp_path / "run"))


# --------------------------------------------------------------------------- 4. divergence


def test_a_diverging_round_stops_naming_the_round_and_both_losses(tmp_path, cohort_root):
    from selal_jax.run import fit
    from tests.helpers import smoke_config

    config = smoke_config(**{"data.root": cohort_root, "train.learning_rate": 1e3})
    with pytest.raises(
        fit.TrainingDivergedError,
        match=r"round 0: training diverged: best validation loss \S+ exceeds 10 x the untrained "
        r"model's validation loss \S+; lower train.learning_rate",
    ):
        loop.run(config, str(tmp_path / "run"))


def test_the_untrained_loss_is_recorded_once_and_checked_on_resume(tmp_path, cohort_root):
    from selal_jax.run import fit
    from tests.helpers import smoke_config

    workdir = str(tmp_path / "run")
    history = loop.run(smoke_config(**{"data.root": cohort_root, "al.rounds": 0}), workdir)
    untrained = history[0]["untrained_val_loss"]
    assert untrained > history[0]["val_loss"] > 0
    # a resumed run's round 1 is held to round 0's number (a changed rate diverges there)
    config = smoke_config(
        **{
            "data.root": cohort_root,
            "al.rounds": 1,
            "train.learning_rate": 1e3,
            "allow_config_change": True,
        }
    )
    with pytest.raises(fit.TrainingDivergedError, match=f"round 1: .*{untrained:.6g}"):
        loop.run(config, workdir)


# ------------------------------------------------------------------- 2, 3, 6: input data


def _msd(root, **fields):
    from tests.test_data import data_config

    return data_config("msd", root, split=(1 / 3, 1 / 3, 1 / 3), **fields)


def _three(tmp_path):
    from tests import helpers
    from tests.test_data import volumes

    return helpers.write_msd(str(tmp_path / "msd"), volumes(3))


def _edit_dataset_json(root, edit):
    import json

    path = os.path.join(root, "dataset.json")
    with open(path) as f:
        meta = json.load(f)
    meta = edit(meta)
    with open(path, "w") as f:
        json.dump(meta, f)
    return path


@pytest.mark.parametrize(
    "second",
    ["./imagesTr/case_000.nii.gz", "./imagesTr/../imagesTr/case_000.nii.gz", "other/case_000"],
)
def test_a_case_listed_twice_is_refused_naming_both(tmp_path, second):
    import shutil

    from selal_jax.base.errors import DataError
    from tests.test_data import load

    root = _three(tmp_path)
    image, label = "./imagesTr/case_000.nii.gz", "./labelsTr/case_000.nii.gz"
    if second == "other/case_000":  # another file of the same case name
        os.makedirs(os.path.join(root, "other"))
        for sub in ("imagesTr", "labelsTr"):
            shutil.copy(os.path.join(root, sub, "case_000.nii.gz"), os.path.join(root, "other"))
        second, label = "./other/case_000.nii.gz", "./other/case_000.nii.gz"

    def add(meta):
        meta["training"].append({"image": second, "label": label})
        return meta

    _edit_dataset_json(root, add)
    with pytest.raises(DataError, match="are the same case") as e:
        load(_msd(root), tmp_path)
    for listed in (image, second):  # both entries
        assert os.path.normpath(os.path.join(root, listed)) in str(e.value)


def test_a_brats_case_in_both_grades_is_refused(tmp_path):
    import shutil

    from selal_jax.base.errors import DataError
    from tests import helpers
    from tests.test_data import data_config, load, volumes

    root = str(tmp_path / "brats")
    helpers.write_brats(root, {"HGG": volumes(2, kind="brats"), "LGG": volumes(2, kind="brats")})
    case = "BraTS19_HGG_000_1"
    shutil.copytree(os.path.join(root, "HGG", case), os.path.join(root, "LGG", case))
    with pytest.raises(DataError, match=f"same case name '{case}'"):
        load(data_config("brats", root, split=(1 / 3, 1 / 3, 1 / 3)), tmp_path)


def test_extreme_finite_voxels_are_refused_naming_the_file_and_range(tmp_path):
    from tests.test_data import replace_file, volumes

    root = _three(tmp_path)
    path = os.path.join(root, "imagesTr", "case_001.nii.gz")
    image = volumes(2)[1][0].copy()
    image[3, 4, 5] = 3e38  # finite: passes the NaN/Inf check, then the z-score is NaN
    replace_file(path, image)
    from selal_jax.base.errors import DataError
    from tests.test_data import load

    with pytest.raises(DataError, match=rf"{path}: voxel values range from 0 to 3e\+38"):
        load(_msd(root), tmp_path)


def test_a_non_finite_slice_after_preprocessing_names_its_case(tmp_path, monkeypatch):
    import numpy as np

    from selal_jax.data import preprocess
    from tests.test_data import load

    root = _three(tmp_path)
    original = preprocess.process_case

    def with_nan(case, settings):
        slices = original(case, settings)
        if case.case_id == "case_002":
            slices.images[1, 0, 0] = np.nan
        return slices

    monkeypatch.setattr(preprocess, "process_case", with_nan)
    with pytest.raises(preprocess.DataError, match=r"case case_002: 1 slices are not finite"):
        load(_msd(root), tmp_path)


def test_a_gzip_stream_whose_crc_does_not_match_is_refused(tmp_path):
    from selal_jax.data import preprocess, reading
    from tests.test_data import load

    root = _three(tmp_path)
    path = os.path.join(root, "imagesTr", "case_001.nii.gz")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[-8] ^= 0xFF  # the stored CRC-32 (the content is intact: nibabel alone reads it)
    with open(path, "wb") as f:
        f.write(bytes(data))
    import nibabel as nib

    nib.load(path).get_fdata()  # what the loader did before: no error
    with pytest.raises(
        preprocess.DataError, match=rf"{path}: unreadable NIfTI image, truncated or corrupt"
    ):
        load(_msd(root), tmp_path)
    with pytest.raises(preprocess.DataError, match="CRC"):
        reading.load_nifti(path)


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda meta: meta["training"],
            "expected a JSON object with a 'training' list, got a list",
        ),
        (
            lambda meta: {**meta, "training": [{"image": 7, "label": "./labelsTr/x.nii.gz"}]},
            "field 'training[0].image' must be a path (a string), got 7",
        ),
    ],
)
def test_malformed_dataset_json_is_a_data_error(tmp_path, edit, message):
    from selal_jax.base.errors import DataError
    from tests.test_data import load

    root = _three(tmp_path)
    path = _edit_dataset_json(root, edit)
    import re

    with pytest.raises(DataError, match=re.escape(f"{path}: {message}")):
        load(_msd(root), tmp_path)


# ------------------------------------------------------------------- resuming what is there


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cohort_root):
    """A finished 3-round smoke run on its own copy of the cohort; (config, workdir, history)."""
    import shutil

    from tests.helpers import smoke_config

    base = tmp_path_factory.mktemp("finished")
    root = str(base / "cohort")
    shutil.copytree(cohort_root, root)
    config = smoke_config(**{"data.root": root, "data.cache_dir": str(base / "cache")})
    workdir = str(base / "run")
    return config, workdir, loop.run(config, workdir)


def test_records_are_rebuilt_when_missing_or_behind(finished):
    import json

    config, workdir, history = finished
    expected = json.loads(json.dumps(history))
    path = os.path.join(workdir, "records.jsonl")
    os.remove(path)
    assert loop.run(config, workdir) == history  # a finished run: nothing trained
    assert read_records(workdir) == expected
    with open(path) as f:
        first = f.readline()
    with open(path, "w") as f:
        f.write(first)  # behind the newest checkpoint
    loop.run(config, workdir)
    assert read_records(workdir) == expected


def test_a_moved_dataset_with_the_same_files_resumes(finished, tmp_path):
    import shutil

    config, workdir, history = finished
    moved = str(tmp_path / "moved")
    shutil.copytree(config.data.root, moved)  # copy2: sizes and mtimes kept
    import copy

    from tests.helpers import set_fields

    again = set_fields(copy.deepcopy(config), {"data.root": moved})
    assert loop.run(again, workdir) == history
    with open(
        os.path.join(moved, "imagesTr", sorted(os.listdir(f"{moved}/imagesTr"))[0]), "ab"
    ) as f:
        f.write(b"\0")  # now a different dataset: still refused
    with pytest.raises(ValueError, match="data.root"):
        loop.run(again, workdir)


def test_report_names_the_file_and_line_of_a_bad_record(tmp_path):
    from selal_jax.verbs import report

    path = tmp_path / "records.jsonl"
    path.write_text('{"round": 0}\n{"round": 1, oops\n')
    with pytest.raises(ValueError, match=rf"{path}: line 2 is not valid JSON"):
        report.read_records(str(path))


def test_a_damaged_newest_checkpoint_says_how_to_resume_from_the_previous_round(finished, tmp_path):
    import copy
    import shutil

    from tests.helpers import set_fields

    config, workdir_done, history = finished
    workdir = str(tmp_path / "run")
    shutil.copytree(workdir_done, workdir)
    os.remove(os.path.join(workdir, lock.LOCK_FILE))
    state = os.path.join(workdir, "checkpoints", "2", "state")
    files = [os.path.join(d, f) for d, _, fs in os.walk(state) for f in fs if "/d/" in f"{d}/"]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    with pytest.raises(checkpointing.CheckpointError) as e:
        loop.run(config, workdir)
    message = str(e.value)
    assert (
        "cannot restore round 2" in message
        and "the newest checkpoint, round 2, is damaged" in message
    )
    assert "--config.resume_from=1" in message
    # the advice without TensorStore's 60-line spec of the array it could not read (issue 24)
    assert "TensorStore" not in message and "\n" not in message and len(message) < 800, message
    resumed = loop.run(set_fields(copy.deepcopy(config), {"resume_from": 1}), workdir)
    assert [r["round"] for r in resumed] == [0, 1, 2]
    # round 2 redone from round 1: the same numbers
    assert comparable(resumed) == comparable(history)
    assert checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).all_rounds() == [1, 2]


# ------------------------------------- issue 24: nothing destroyed by a refused command


def _copy_run(workdir_done, workdir):
    import shutil

    shutil.copytree(workdir_done, workdir)
    os.remove(os.path.join(workdir, lock.LOCK_FILE))


def _rounds(workdir):
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        return ckpt.all_rounds()
    finally:
        ckpt.close()


def test_a_refused_resume_from_destroys_nothing(finished, tmp_path, monkeypatch):
    import copy

    from tests.helpers import set_fields

    config, workdir_done, history = finished
    workdir = str(tmp_path / "run")
    _copy_run(workdir_done, workdir)
    assert _rounds(workdir) == [1, 2]
    changed = set_fields(copy.deepcopy(config), {"resume_from": 1, "train.learning_rate": 0.02})
    with pytest.raises(ValueError, match=r"train\.learning_rate: 0\.01 -> 0\.02"):
        loop.run(changed, workdir)
    assert _rounds(workdir) == [1, 2]  # before: round 2's checkpoint was deleted first
    assert not os.path.exists(os.path.join(workdir, "discarded"))

    def no_training(*args, **kwargs):
        raise AssertionError("the finished run's round 2 was lost and is trained again")

    monkeypatch.setattr(loop.fit_lib, "fit", no_training)
    assert loop.run(config, workdir) == history


def test_resume_from_keeps_the_discarded_rounds_until_the_new_round_is_saved(
    finished, tmp_path, monkeypatch
):
    import copy

    from tests.helpers import set_fields

    config, workdir_done, history = finished
    workdir = str(tmp_path / "run")
    _copy_run(workdir_done, workdir)
    again = set_fields(copy.deepcopy(config), {"resume_from": 1})

    def full_disk(self, round_index, state, loop_record):
        raise checkpointing.CheckpointError(f"{self.directory}: saving round {round_index} failed")

    with monkeypatch.context() as patch:
        patch.setattr(checkpointing.Checkpointer, "save", full_disk)
        with pytest.raises(checkpointing.CheckpointError, match="saving round 2 failed"):
            loop.run(again, workdir)
    assert _rounds(workdir) == [1]  # round 2 set aside, not deleted: the new one is not saved
    (kept,) = os.listdir(os.path.join(workdir, "discarded"))
    assert kept.endswith("-rounds-2")
    assert os.listdir(os.path.join(workdir, "discarded", kept)) == ["2"]
    resumed = loop.run(again, workdir)  # round 2 redone from round 1: the same numbers
    assert comparable(resumed) == comparable(history)
    assert _rounds(workdir) == [1, 2]
    assert not os.path.exists(os.path.join(workdir, "discarded"))  # gone once round 2 is saved


def test_no_target_in_the_test_or_validation_split_is_flagged(tmp_path, caplog):
    import json

    import numpy as np

    from tests import helpers
    from tests.helpers import smoke_config
    from tests.test_data import volumes

    vols = volumes(3, shape=(16, 16, 8))
    vols = [vols[0]] + [(image, np.zeros_like(label)) for image, label in vols[1:]]
    root = helpers.write_msd(str(tmp_path / "msd"), vols)
    split = tmp_path / "split.json"  # the cases without target held out
    split.write_text(json.dumps({"train": ["case_000"], "val": ["case_001"], "test": ["case_002"]}))
    config = smoke_config(
        **{
            "data.layout": "msd",
            "data.root": root,
            "data.size": (16, 16),
            "data.split_file": str(split),
            "al.rounds": 0,
            "al.initial_size": 4,
            "train.max_epochs": 1,
        }
    )
    history = loop.run(config, str(tmp_path / "run"))
    assert history[0]["test_slices_with_target"] == 0
    assert history[0]["val_slices_with_target"] == 0
    table = report.summary_text(history, str(tmp_path / "run")).splitlines()
    assert table[-2:] == [
        "warning: no target in the test split: Dice is not meaningful",
        "warning: no target in the validation split: early stopping sees background alone",
    ]
    assert "no target in the test split" in caplog.text
    assert "no target in the validation split" in caplog.text


def test_the_smoke_config_learns_enough_to_rank_its_queries(finished):
    _, _, history = finished
    for record in history[:-1]:  # rounds with a query
        scores, streams = record["queried_scores"], record["queried_streams"]
        assert any(s > 0 for s in scores), (record["round"], scores)
        assert set(streams) <= {"target", "boundary"} and "target" in streams, streams
        for stream in set(streams):  # each stream in its own ranking's order: best first
            mine = [s for s, of in zip(scores, streams, strict=True) if of == stream]
            assert mine == sorted(mine, reverse=True), (record["round"], stream, mine)
    assert history[-1]["dice_global"] > 0  # it predicts target where there is some
