"""A 2-round end-to-end run of the loop on a tiny synthetic cohort."""

import functools
import json
import os

import numpy as np
import pytest

from selal_jax.run import loop, parts
from selal_jax.verbs import report, sweep


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cohort_root):
    from tests.helpers import smoke_config

    workdir = str(tmp_path_factory.mktemp("run"))
    config = smoke_config(**{"data.root": cohort_root})
    history = loop.run(config, workdir)
    return config, workdir, history


def test_labelled_set_grows_by_exactly_k_new_distinct_slices(finished_run):
    config, workdir, history = finished_run
    k = config.al.query_size
    assert [r["round"] for r in history] == [0, 1, 2]
    from selal_jax.data import loading
    from selal_jax.run import checkpointing

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
    target_pixels = (train_set.labels.reshape(len(train_set), -1) > 0).sum(axis=1)
    for rec in history:
        assert not (set(rec["queried"]) & labelled)
        assert rec["n_labelled"] == len(labelled)
        # annotation cost of the set this round trained on
        assert rec["labelled_target_pixels"] == int(target_pixels[sorted(labelled)].sum())
        assert rec["labelled_slices_with_target"] == int(
            (target_pixels[sorted(labelled)] > 0).sum()
        )
        labelled |= set(rec["queried"])
    assert labelled == final


def test_checkpoints_and_records_exist_for_each_round(finished_run):
    config, workdir, history = finished_run
    from selal_jax.run import checkpointing

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


STRATEGY_MODES = [
    (s, "selective")
    for s in ("random", "entropy", "least_confidence", "margin", "mc_dropout", "bald")
] + [
    ("entropy", "all"),
    ("bald", "target"),
    ("least_confidence", "boundary"),
    ("random_predicted", "all"),
]


@pytest.mark.parametrize(
    "strategy,mode", STRATEGY_MODES, ids=[f"{s}-{m}" for s, m in STRATEGY_MODES]
)
def test_every_strategy_and_mode_runs_in_the_loop(strategy, mode, tmp_path, cohort_root):
    from tests.helpers import smoke_config

    config = smoke_config(
        **{
            "data.root": cohort_root,
            "al.strategy": strategy,
            "al.mode": mode,
            "al.rounds": 1,
            "train.max_epochs": 1,
        }
    )
    history = loop.run(config, str(tmp_path))
    queried = history[0]["queried"]
    assert len(queried) == len(set(queried)) == config.al.query_size
    if strategy == "random_predicted":
        streams = history[0]["queried_streams"]
        # slices with predicted target first, then the top-up (if any)
        assert set(streams) <= {"random_predicted", "random"}
        assert streams == sorted(streams, key=lambda s: s != "random_predicted")
        assert all(s is None for s in history[0]["queried_scores"])
    elif strategy != "random":
        expected_streams = {
            "selective": {"target", "boundary"},
            "all": {"all"},
            "target": {"target"},
            "boundary": {"boundary"},
        }[mode]
        assert set(history[0]["queried_streams"]) <= expected_streams
        assert all(s is not None for s in history[0]["queried_scores"])


def test_official_convention_runs_in_the_loop(tmp_path, cohort_root):
    from tests.helpers import smoke_config

    config = smoke_config(
        **{
            "data.root": cohort_root,
            "al.convention": "official",
            "al.rounds": 1,
            "train.max_epochs": 1,
        }
    )
    history = loop.run(config, str(tmp_path))
    queried, streams = history[0]["queried"], history[0]["queried_streams"]
    scores = history[0]["queried_scores"]
    # The published merge alternates target and boundary turns over all U = 64 unlabelled
    # slices (a duplicate wastes its turn); after 2k turns k distinct target picks were seen,
    # so it always returns k here. Each stream ranks ascending (the published sort), not
    # descending as the paper convention does.
    assert len(queried) == len(set(queried)) == config.al.query_size
    assert streams[0] == "target" and set(streams) <= {"target", "boundary"}
    for stream in set(streams):
        mine = [s for s, of in zip(scores, streams, strict=True) if of == stream]
        assert mine == sorted(mine), (stream, mine)


def test_launch_rejects_unknown_options_with_the_field_name(tmp_path, cohort_root):
    from tests.helpers import smoke_config

    with pytest.raises(ValueError, match="al.strategy"):
        loop.run(
            smoke_config(**{"data.root": cohort_root, "al.strategy": "entropyy"}), str(tmp_path)
        )
    with pytest.raises(ValueError, match="al.strategy.*margin"):
        loop.run(
            smoke_config(
                **{"data.root": cohort_root, "al.strategy": "margin", "al.convention": "official"}
            ),
            str(tmp_path),
        )
    with pytest.raises(ValueError, match="data.size"):
        loop.run(smoke_config(**{"data.root": cohort_root, "data.size": (30, 30)}), str(tmp_path))


# ---------------------------------------------- bugs found in review (issue 12), each refused


def test_run_returns_and_prints_nothing(capsys, finished_run, cohort_root):
    config, workdir, history = finished_run
    again = loop.run(config, workdir)  # resumes the finished run: nothing to do
    assert capsys.readouterr().out == ""
    assert again == history
    assert report.summary_text(history, workdir).startswith("| round | labelled |")


def test_shared_round0_that_exists_loads_no_data(finished_run, tmp_path, monkeypatch):
    config, _, _ = finished_run
    round0 = str(tmp_path / "round0")
    first = sweep.train_shared_round0(config, round0)

    def refuse(*args, **kwargs):
        raise AssertionError("an existing round 0 must not build a run's parts")

    monkeypatch.setattr(parts, "build", refuse)
    assert sweep.train_shared_round0(config, round0) == first


def test_metrics_jsonl_holds_each_rounds_epochs(finished_run):
    """<workdir>/metrics.jsonl: per round and epoch, the training and validation loss; each
    round's best validation loss is its record's val_loss, its line count the record's epochs."""
    config, workdir, history = finished_run
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    for rec in history:
        mine = [m for m in rows if m["round"] == rec["round"]]
        assert [m["epoch"] for m in mine] == list(range(rec["epochs"]))
        assert min(m["val_loss"] for m in mine) == rec["val_loss"]
        assert mine[rec["best_epoch"]]["val_loss"] == rec["val_loss"]
        assert all(np.isfinite(m["train_loss"]) for m in mine)
    assert [m["round"] for m in rows] == sorted(m["round"] for m in rows)


def test_epoch_metrics_of_a_redone_round_replace_its_lines(tmp_path):
    from selal_jax.run import workdir as workdir_lib

    w = str(tmp_path)
    epoch = {"epoch": 0, "train_loss": 1.0, "val_loss": 2.0}
    for r in range(3):
        workdir_lib.write_epoch_metrics(w, r, [epoch, {**epoch, "epoch": 1}])
    workdir_lib.write_epoch_metrics(w, 1, [{**epoch, "val_loss": 0.5}])  # round 1 redone
    with open(os.path.join(w, workdir_lib.METRICS_FILE)) as f:
        rows = [json.loads(line) for line in f]
    assert [(m["round"], m["epoch"], m["val_loss"]) for m in rows] == [
        (0, 0, 2.0),
        (0, 1, 2.0),
        (1, 0, 0.5),
    ]


def test_a_sweep_written_with_the_nested_round0_folder_is_still_read(finished_run, tmp_path):
    """Sweeps written before the flattening keep round 0's checkpoint in round0/round0/: it is
    found there (and a run sharing it starts from the same model)."""
    config, _, _ = finished_run
    round0 = str(tmp_path / "round0")
    first = sweep.train_shared_round0(config, round0)
    assert os.path.isdir(os.path.join(round0, "model"))
    os.rename(os.path.join(round0, "model"), os.path.join(round0, "round0"))
    assert sweep.train_shared_round0(config, round0) == first  # found, not retrained
    history = loop.run(
        config, str(tmp_path / "run"), round0=functools.partial(sweep.take_round0, round0)
    )
    assert {k: v for k, v in history[0].items() if k in first} == first
