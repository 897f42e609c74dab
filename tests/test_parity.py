"""The 'official' convention reproduces every selection of the published code exactly.

The reference vectors live in the repository (tests/data/reference/, copied from the project's
shared ../shared/reference/, whose README.md says how they were made), so a plain clone runs every
case; where the shared folder exists beside the repository, the copies are checked against it.
"""

import filecmp
import json
import os

import numpy as np
import pytest

from selal_jax import select_from_probs
from tests.helpers import REPO

REFERENCE = os.path.join(REPO, "tests", "data", "reference")
SHARED = os.path.join(REPO, "..", "shared", "reference")
FILES = ("official_parity.json", "official_parity.npz", "README.md")
N_CASES = 23  # the cases official_parity.json lists: 8 strategy variants, 2-4 pools each
STRATEGY = {
    "entropy": "entropy",
    "least_confidence": "least_confidence",
    "mc_entropy": "mc_dropout",
    "bald": "bald",
}


def load_cases():
    with open(os.path.join(REFERENCE, "official_parity.json")) as f:
        meta = json.load(f)
    return np.load(os.path.join(REFERENCE, "official_parity.npz")), meta["cases"]


DATA, CASES = load_cases()


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_official_convention_reproduces_published_selection(case):
    name, family = case["strategy"].rsplit("_", 1)
    x = DATA[case["input_key"]]
    probs = x[:, :, 0] if x.ndim == 5 else x[:, 0]  # drop the channel axis
    kwargs = {}
    if case["T"] is not None:
        kwargs = {"target_threshold": case["T"], "boundary_width": case["B"]}
    got = select_from_probs(
        probs,
        case["n"],
        strategy=STRATEGY[name],
        mode="all" if family == "plain" else "selective",
        convention="official",
        labelled=DATA[case["labeled_key"]],
        **kwargs,
    )
    expected = DATA[case["selected_key"]]
    assert got.tolist() == expected.tolist()
    assert len(got) == case["n_returned"]


def test_every_case_and_its_arrays_are_in_the_repository():
    assert len(CASES) == N_CASES == len({c["name"] for c in CASES})
    keys = {k for c in CASES for k in (c["input_key"], c["labeled_key"], c["selected_key"])}
    assert keys <= set(DATA.files)
    variants = {c["strategy"] for c in CASES}  # plain and selective of each strategy
    assert variants == {f"{s}_{family}" for s in STRATEGY for family in ("plain", "selective")}


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="no ../shared/reference beside the clone")
def test_the_copies_are_the_shared_reference_byte_for_byte():
    for name in FILES:
        assert filecmp.cmp(
            os.path.join(REFERENCE, name), os.path.join(SHARED, name), shallow=False
        ), name
