"""The run folder's stored config, the checkpointed loop record and the compatibility check."""

import jax
import numpy as np
import pytest

from configs import default
from selal_jax.base import schema
from selal_jax.run import checkpointing
from selal_jax.run import workdir as workdir_lib
from tests.helpers import smoke_config


def _flat(**fields):
    return schema.flatten(smoke_config(**fields))


def test_unread_layout_fields_are_not_differences():
    """data.brats.* on an MSD run (and data.synthetic.* on a real-data run) are not read: editing
    them does not block a resume, as they do not change the slice cache's key either."""
    msd = {"data.layout": "msd", "data.root": "/data/Task09"}
    stored = _flat(**msd)
    edited = _flat(**msd, **{"data.brats.modality": "t2", "data.synthetic.n_subjects": 5})
    assert stored["data.brats.modality"] != edited["data.brats.modality"]
    assert schema.differences(stored, edited) == []
    # Read by the layout: a difference.
    synthetic = _flat(**{"data.synthetic.n_subjects": 5})
    assert schema.differences(_flat(), synthetic) == ["data.synthetic.n_subjects"]
    # A changed layout: everything that differs counts.
    assert "data.brats.modality" in schema.differences(
        _flat(), _flat(**msd, **{"data.brats.modality": "t2"})
    )


def test_stored_config_round_trip_fills_added_keys():
    config = default.get_config("smoke")
    flat = schema.flatten(config)
    old = {k: v for k, v in flat.items() if k not in schema.ADDED_KEYS}
    restored = schema.flatten(schema.unflatten(old))
    assert schema.differences(restored, flat) == []
    assert restored["train.loss"] == "ce" and restored["al.annotator"] == "simulated"


def test_loop_record_json_keeps_the_stored_fields():
    key = jax.random.key(7)
    fields = dict(
        round=2,
        labelled_ids=[1, 4],
        history=[{"round": 0}],
        config={"seed": 7},
        fingerprint="ab",
        root_key=workdir_lib.key_data(key),
        pool_size=10,
    )
    simulated = workdir_lib.LoopRecord(**fields).to_json()
    assert simulated == fields  # what a simulated run has always stored, nothing more
    words = np.asarray(jax.random.key_data(key)).ravel().tolist()
    assert simulated["root_key"] == words
    human = workdir_lib.LoopRecord(**fields, awaiting_labels=2, annotations={}).to_json()
    assert human == {**fields, "awaiting_labels": 2, "annotations": {}}
    broken = {k: v for k, v in human.items() if k not in ("history", "fingerprint")}
    with pytest.raises(
        checkpointing.CheckpointError,
        match=r"ckpt/3: the checkpoint's loop record lacks the fields \['history', 'fingerprint'\]",
    ):
        workdir_lib.LoopRecord.from_json(broken, "ckpt/3")
    assert workdir_lib.LoopRecord.from_json({**human, "unknown": 1}) == workdir_lib.LoopRecord(
        **fields, awaiting_labels=2, annotations={}
    )


def test_check_compatible_names_the_field_and_accepts_a_moved_dataset():
    stored = _flat()
    workdir_lib.check_compatible(stored, "f1", _flat(**{"data.root": "/moved"}), "f1", where="w")
    with pytest.raises(ValueError, match=r"w: the config differs .*train.learning_rate"):
        workdir_lib.check_compatible(
            stored, "f1", _flat(**{"train.learning_rate": 0.5}), "f1", where="w"
        )
    with pytest.raises(ValueError, match="dataset changed"):
        workdir_lib.check_compatible(stored, "f1", stored, "f2", where="w")
    workdir_lib.check_compatible(stored, "f1", stored, "f2", where="w", allow_change=True)
    shared = _flat(**{"al.strategy": "bald"})
    with pytest.raises(ValueError, match="al.strategy"):
        workdir_lib.check_compatible(stored, "f1", shared, "f1", where="w")
    workdir_lib.check_compatible(
        stored, "f1", shared, "f1", where="w", neutral=schema.ROUND0_NEUTRAL_KEYS
    )


def test_a_continued_config_is_the_stored_one_with_the_given_fields_and_no_one_shot_ones(
    tmp_path,
):
    """`launch.py --workdir=W` on an existing folder: the config stored there (a sweep's
    config.json here; a run's checkpoint alike), resume_from and allow_config_change back at
    their defaults (they acted on the command that gave them: a later query must not discard
    checkpoints again), --config.X=... set on top."""
    assert workdir_lib.stored_config(str(tmp_path / "new"), required=False) is None
    with pytest.raises(ValueError, match="no such run folder"):
        workdir_lib.stored_config(str(tmp_path / "new"))
    assert workdir_lib.stored_config(str(tmp_path), required=False) is None
    with pytest.raises(ValueError, match="no checkpoint"):
        workdir_lib.stored_config(str(tmp_path))
    config = smoke_config(
        **{
            "train.patience": 7,
            "data.size": (16, 24),
            "resume_from": 2,
            "allow_config_change": True,
        }
    )
    workdir_lib.write_sweep_config(str(tmp_path), config)
    stored = workdir_lib.stored_config(str(tmp_path))
    assert stored.resume_from == -1 and stored.allow_config_change is False
    assert stored.train.patience == 7 and list(stored.data.size) == [16, 24]
    expected = schema.flatten(config)
    expected.update(resume_from=-1, allow_config_change=False)
    assert schema.flatten(stored) == expected
    given = schema.with_overrides(stored, {"train.patience": 9, "data.spacing": (1.0, 1.0)})
    assert schema.differences(schema.flatten(stored), schema.flatten(given)) == [
        "data.spacing",
        "train.patience",
    ]
    assert given.train.patience == 9 and stored.train.patience == 7  # a copy
    with pytest.raises(ValueError, match="unknown config field train.patiense"):
        schema.with_overrides(stored, {"train.patiense": 1})
