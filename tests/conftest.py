"""Shared fixtures: tiny configs and a tiny synthetic cohort."""

import pytest

from tests.helpers import smoke_config


@pytest.fixture(scope="session")
def cohort_root(tmp_path_factory):
    """One tiny synthetic cohort for the whole session (the smoke config's)."""
    from selal_jax.data import synthetic

    config = smoke_config()
    syn = config.data.synthetic
    root = str(tmp_path_factory.mktemp("cohort") / "synthetic")
    return synthetic.write_cohort(
        root, syn.n_subjects, tuple(syn.shape), syn.seed, tuple(syn.spacing)
    )


@pytest.fixture(autouse=True, scope="session")
def _classic_threefry():
    """Tests run under the same random-number setting as selal_jax's entry points."""
    from selal_jax.core import rng

    with rng.classic_threefry():
        yield
