"""Configs: the paper configs carry the paper's protocol (values from the paper's text, not the
code), the command line overrides their fields, and validation names the field it refuses."""

import os

import pytest

from configs import brats_lgg_flair, default, msd_spleen
from selal_jax.run import validation
from tests.helpers import REPO, config_from_flags, smoke_config


@pytest.mark.parametrize(
    "module,initial,per_round,batch,size",
    [(brats_lgg_flair, 500, 100, 32, (240, 240)), (msd_spleen, 150, 50, 16, (512, 512))],
)
def test_paper_configs(module, initial, per_round, batch, size):
    c = module.get_config()
    assert (c.al.initial_size, c.al.query_size, c.train.batch_size) == (initial, per_round, batch)
    assert tuple(c.data.size) == size
    assert (c.model.base_width, c.model.depth) == (32, 4)
    assert c.train.learning_rate == 1e-4 and c.train.reset_optimizer
    assert (c.train.patience, c.train.max_epochs, c.train.min_steps_per_epoch) == (5, 100, 1)
    assert c.data.root is None  # placeholder: the user points it at the data


def test_demo_and_smoke_configs_validate():

    for arg in (None, "smoke", "sweep", "compare", "compare_smoke"):
        validation.validate_config(default.get_config(arg))
    with pytest.raises(ValueError, match="unknown config argument"):
        default.get_config("nope")


@pytest.mark.parametrize("arg", [None, "cpu"])
def test_msd_multiclass_configs_validate(arg):
    from configs import msd_brain_tumour, msd_hippocampus

    for module in (msd_brain_tumour, msd_hippocampus):
        c = module.get_config(arg)
        validation.validate_config(c)
        assert c.data.classes == "all" and c.data.layout == "msd" and c.data.root is None
        assert c.train.learning_rate == 1e-4 and c.train.reset_optimizer
    assert msd_brain_tumour.get_config(arg).data.modality == "all"
    with pytest.raises(ValueError, match="unknown config argument"):
        msd_hippocampus.get_config("gpu")


def test_brain_tumour_config_reads_an_msd_task01_folder(tmp_path):
    """A tiny Task01-like folder (4D images of 4 channels, labels 0-3 named as the MSD's) loads
    with the config's data section as 4 channels and 3 named classes."""
    import numpy as np

    from configs import msd_brain_tumour
    from selal_jax.data import loading
    from tests import helpers

    vols = []
    for i in range(7):
        image, label = helpers.make_classes_volume(np.random.default_rng(i), (16, 16, 6), 4)
        vols.append((image, np.searchsorted([0, 1, 2, 4], label).astype(np.uint8)))  # 0-3
    names = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    labels = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
    root = helpers.write_msd(str(tmp_path / "Task01"), vols, modality=names, labels=labels)
    c = msd_brain_tumour.get_config("cpu")
    c.data.root, c.data.size, c.data.split = root, (16, 16), (0.6, 0.2, 0.2)
    splits = loading.load_dataset(c.data, str(tmp_path / "w"))
    train = splits.train
    assert train.channels == 4 and train.channel_names == ("FLAIR", "T1w", "t1gd", "T2w")
    assert train.class_names == ("edema", "non-enhancing tumor", "enhancing tumour")
    assert train.images.shape[1:] == (16, 16, 4)
    parts = (splits.train, splits.val, splits.test)
    present = set(np.unique(np.concatenate([np.ravel(s.labels) for s in parts])).tolist())
    assert present == {0, 1, 2, 3}


# --------------------------------------------- from the command line, as launch.py parses them


@pytest.mark.parametrize("name", ["brats_lgg_flair", "msd_spleen"])
def test_configs_parse_size_root_and_layout_from_the_command_line(name, tmp_path):
    path = os.path.join(REPO, "configs", f"{name}.py")
    config = config_from_flags([f"--config={path}"])
    assert config.data.root is None
    validation.validate_config(config)
    config = config_from_flags(
        [
            f"--config={path}:cpu",
            "--config.data.size=96,128",
            "--config.data.layout=paired",
            f"--config.data.root={tmp_path}",
        ]
    )
    assert tuple(config.data.size) == (96, 128)
    assert (config.data.layout, config.data.root) == ("paired", str(tmp_path))
    validation.validate_config(config)


def test_paper_settings_of_the_configs():
    brats = brats_lgg_flair.get_config()
    assert (brats.data.layout, brats.data.brats.grades, brats.data.brats.modality) == (
        "brats",
        "LGG",
        "flair",
    )
    assert (brats.data.brats.target, tuple(brats.data.size)) == ("whole", (240, 240))
    assert (brats.al.initial_size, brats.al.query_size, brats.train.batch_size) == (500, 100, 32)
    assert (brats.model.base_width, brats.model.depth) == (32, 4)
    spleen = msd_spleen.get_config()
    assert (spleen.data.layout, tuple(spleen.data.size)) == ("msd", (512, 512))
    assert tuple(spleen.data.ct_window) == (-160.0, 240.0)
    assert (spleen.al.initial_size, spleen.al.query_size, spleen.train.batch_size) == (150, 50, 16)
    for config in (brats, spleen, brats_lgg_flair.get_config("cpu"), msd_spleen.get_config("cpu")):
        validation.validate_config(config)
        assert config.train.augment
    assert tuple(msd_spleen.get_config("cpu").data.size) == (128, 128)


# ----------------------- validation: bugs found in review (issue 12) and issue 18, each refused


@pytest.mark.parametrize(
    "field,value",
    [
        ("train.max_epochs", 0),
        ("train.patience", 0),
        ("train.min_steps_per_epoch", 0),
        ("train.learning_rate", 0.0),
        ("train.learning_rate", -0.01),
        ("train.learning_rate", float("nan")),
        ("model.dropout_rate", 1.5),
        ("model.head_bias_prior", 1.0),
        ("model.dtype", "float16"),
        ("checkpoint.keep", 0),
        ("train.loss", "dice"),
    ],
)
def test_validate_config_names_the_bad_field(field, value):

    with pytest.raises(ValueError, match=f"config field {field.replace('.', '[.]')}"):
        validation.validate_config(smoke_config(**{field: value}))


def test_synthetic_cohort_of_no_subjects_is_a_config_error():

    with pytest.raises(ValueError, match=r"config field data\.synthetic\.n_subjects: must be >= 1"):
        validation.validate_config(smoke_config(**{"data.synthetic.n_subjects": 0}))


@pytest.mark.parametrize("field,value", [("train.patience", -1), ("resume_from", -2)])
def test_validate_config_refuses(field, value):

    with pytest.raises(ValueError, match=f"config field {field.replace('.', '[.]')}"):
        validation.validate_config(smoke_config(**{field: value}))


def test_clasp_variant_is_class_balanced_power_sampled_selective_entropy():
    c = default.get_config("clasp")
    validation.validate_config(c)
    assert (c.al.strategy, c.al.mode, c.al.class_balanced) == ("entropy", "selective", True)
    assert (c.al.sampling, c.al.sampling_beta) == ("power", 1.0)
    assert c.data.classes == "all" and c.data.synthetic.kind == "multiclass"
