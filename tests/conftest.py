"""Shared fixtures: tiny configs and a tiny synthetic cohort."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(**overrides):
    """configs/default.py:smoke with dotted-key overrides, e.g. {'al.strategy': 'bald'}."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "default_config", os.path.join(REPO, "configs", "default.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture
def tiny_config():
    return smoke_config


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
    from selal_jax import rng

    with rng.classic_threefry():
        yield
