"""The paper configs carry the paper's protocol (values from the paper's text, not the code)."""

import pytest

from configs import brats_lgg_flair, default, msd_spleen


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
    from selal_jax import loop

    for arg in (None, "smoke", "sweep"):
        loop.validate_config(default.get_config(arg))
    with pytest.raises(ValueError, match="unknown config argument"):
        default.get_config("nope")
