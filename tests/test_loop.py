"""A 2-round end-to-end run of the loop on a tiny synthetic cohort."""

import json
import os

import numpy as np
import pytest

from selal_jax import loop


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cohort_root):
    from conftest import smoke_config

    workdir = str(tmp_path_factory.mktemp("run"))
    config = smoke_config(**{"data.root": cohort_root})
    history = loop.run(config, workdir)
    return config, workdir, history


def test_labelled_set_grows_by_exactly_k_new_distinct_slices(finished_run):
    config, workdir, history = finished_run
    k = config.al.query_size
    assert [r["round"] for r in history] == [0, 1, 2]
    from selal_jax import checkpointing
    from selal_jax.data import loading

    train_set = loading.load_dataset(config.data, workdir).train
    positive = set(np.flatnonzero(train_set.labels.reshape(len(train_set), -1).any(1)).tolist())
    for i, rec in enumerate(history):
        assert rec["n_labelled"] == config.al.initial_size + i * k
        if i < len(history) - 1:
            assert len(rec["queried"]) == len(set(rec["queried"])) == k
        else:
            assert rec["queried"] == []
    # Rebuild the labelled sets from the checkpointed final set and the queries.

    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), 10)
    final = set(ckpt.restore_loop(ckpt.latest_round())["labelled_ids"])
    all_queried = [i for rec in history for i in rec["queried"]]
    assert len(all_queried) == len(set(all_queried))
    initial = final - set(all_queried)
    assert len(initial) == config.al.initial_size
    assert initial <= positive  # drawn only from slices with target (initial_from_positive)
    labelled = set(initial)
    for rec in history:
        assert not (set(rec["queried"]) & labelled)
        assert rec["n_labelled"] == len(labelled)
        labelled |= set(rec["queried"])
    assert labelled == final


def test_checkpoints_and_records_exist_for_each_round(finished_run):
    config, workdir, history = finished_run
    from selal_jax import checkpointing

    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), config.checkpoint.keep)
    # the last `keep` model checkpoints are kept; each holds every round's record
    assert ckpt.all_rounds() == [1, 2]
    stored = ckpt.restore_loop(2)
    assert [r["round"] for r in stored["history"]] == [0, 1, 2]
    with open(os.path.join(workdir, "records.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert records == json.loads(json.dumps(history))
    for rec in records:
        for field in (
            "round",
            "n_labelled",
            "pct_labelled",
            "dice",
            "dice_global",
            "val_loss",
            "train_seconds",
            "score_seconds",
            "queried",
        ):
            assert field in rec
        assert 0.0 <= rec["dice"] <= 1.0


def test_rerunning_the_same_command_resumes_without_recomputing(finished_run):
    config, workdir, history = finished_run
    again = loop.run(config, workdir)
    assert again == history  # already finished: nothing recomputed, same records
