"""The slice-cache key hashes the config.data fields the configured layout reads, and only those."""

from __future__ import annotations

import os

import numpy as np
import pytest

from configs import brats_lgg_flair, default, msd_spleen
from selal_jax.base import schema
from selal_jax.data import cache, loading, writers
from tests.helpers import set_fields

LAYOUTS = ("synthetic", "msd", "brats", "paired", "nnunetv2")
SECTIONS = ("brats", "paired", "synthetic")  # the sub-configs of single layouts


def config_with(layout: str, **fields):
    """configs/default.py's data config with `layout` and dotted fields set."""
    config = default.get_config().data
    config.layout = layout
    return set_fields(config, fields)


def key(config) -> str:
    return cache.fingerprint([], "/data", config)


@pytest.mark.parametrize(
    "layout, field, value",
    [
        ("msd", "brats.grades", "LGG"),
        ("msd", "synthetic.n_subjects", 5),
        ("msd", "paired.images", "imgs"),
        ("paired", "brats.target", "core"),
        ("paired", "synthetic.kind", "multiclass"),
        ("brats", "modality", "1"),
        ("brats", "paired.strict_labels", True),
        ("brats", "synthetic.shape", (8, 8, 8)),
        ("nnunetv2", "brats.modality", "t2"),
        ("nnunetv2", "paired.label_suffix", "_seg"),
        ("synthetic", "brats.grades", "HGG"),
        ("synthetic", "paired.labels", "masks"),
    ],
)
def test_a_field_the_layout_does_not_read_leaves_the_key(layout, field, value):
    assert key(config_with(layout, **{field: value})) == key(config_with(layout))


@pytest.mark.parametrize(
    "layout, field, value",
    [
        ("brats", "brats.grades", "LGG"),
        ("brats", "brats.modality", "t1"),
        ("paired", "paired.images", "imgs"),
        ("paired", "paired.strict_labels", True),
        ("paired", "modality", "all"),
        ("synthetic", "synthetic.n_subjects", 5),
        ("synthetic", "synthetic.kind", "multiclass"),
        ("msd", "modality", "1"),
        ("nnunetv2", "modality", "1"),
        ("msd", "size", (32, 32)),
        ("brats", "normalisation", "zscore"),
    ],
)
def test_a_field_the_layout_reads_changes_the_key(layout, field, value):
    assert key(config_with(layout, **{field: value})) != key(config_with(layout))


def test_layout_fields_are_the_default_configs_fields_at_their_values():
    data = default.get_config().data
    listed = set(schema.LAYOUT_FIELDS)
    for section in SECTIONS:  # a new field of a layout's sub-config is listed too
        assert {f"{section}.{k}" for k in data[section]} <= listed
    for name, (value, readers) in schema.LAYOUT_FIELDS.items():
        node = data
        for part in name.split("."):
            node = node[part]
        assert cache._plain(node) == cache._plain(value), name
        assert readers and set(readers) <= set(LAYOUTS), name


# The keys (no source files, root /data) the shipped configs had when every field was hashed:
# their caches and resumable runs keep them.
KEYS_BEFORE = {
    ("default", None): "f6e5ce273bf295cd",
    ("default", "smoke"): "5fbacffd9b910243",
    ("default", "multiclass"): "d17b56b098953937",
    ("msd_spleen", None): "6f38077ab8abfd42",
    ("msd_spleen", "cpu"): "7f2827c55fc07c87",
    ("brats_lgg_flair", None): "c4ff2310d378d271",
    ("brats_lgg_flair", "cpu"): "922d7bf8162e4f52",
}


@pytest.mark.parametrize("name, arg", sorted(KEYS_BEFORE, key=str))
def test_shipped_configs_keep_their_key(name, arg):
    module = {"default": default, "msd_spleen": msd_spleen, "brats_lgg_flair": brats_lgg_flair}
    assert key(module[name].get_config(arg).data) == KEYS_BEFORE[name, arg]


@pytest.mark.parametrize("layout", ["msd", "paired", "brats", "nnunetv2"])
def test_default_config_keys_per_layout_are_unchanged(layout):
    before = {
        "msd": "7bfea80f67a391c3",
        "brats": "3abca85eb5f30ef5",
        "paired": "d281aa41edb54d9a",
        "nnunetv2": "85fdae52563beeeb",
    }
    assert key(config_with(layout)) == before[layout]


def test_editing_an_unused_layout_field_reuses_the_cache(tmp_path):
    volumes = [writers.make_volume(np.random.default_rng([3, i]), (16, 16, 6)) for i in range(4)]
    root = writers.write_msd(str(tmp_path / "msd"), volumes)
    config = config_with("msd", root=root, size=(16, 16), split=(0.5, 0.25, 0.25))
    first = loading.load_dataset(config, str(tmp_path / "work"))
    config.brats.grades = "LGG"
    config.synthetic.n_subjects = 3
    config.paired.image_suffix = "_0000"
    second = loading.load_dataset(config, str(tmp_path / "work"))
    assert second.fingerprint == first.fingerprint
    caches = [n for n in os.listdir(tmp_path / "work" / "cache") if not n.startswith(".")]
    assert caches == [first.fingerprint]  # (beside it: the digest index, .source_digests.json)
    np.testing.assert_array_equal(second.train.images, first.train.images)
