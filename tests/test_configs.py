"""The paper configs carry the paper's protocol (values from the paper's text, not the code)."""

import pytest

from configs import brats_lgg_flair, default, msd_spleen
from selal_jax import validation


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

    for arg in (None, "smoke", "sweep"):
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
