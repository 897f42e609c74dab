"""Checks of what the cases hold, made while the slice cache is built (and the dataset-wide
ones again from its meta on every cached load): a blank scan with target, the same scan under
two names (a digest of each case's voxels), no target anywhere, a validation or test split
without target, a test split too thin to judge a model by (`thin_test_notes`).
"""

from __future__ import annotations

import hashlib

import numpy as np
from absl import logging

from selal_jax.base.errors import DataError
from selal_jax.data.cases import CaseFiles, CaseSlices


def voxel_digest(image: np.ndarray) -> str:
    """A digest of a volume's voxels (shape and float32 values; SHA-256, the first 128 bits):
    equal for the same scan saved under another name or in another format, so a duplicate case
    is found whatever its file's bytes (`Tally`). The voxels are hashed in Fortran order, NIfTI's
    own: a volume read from NIfTI is hashed without a copy (about 5 ms for 256x256x60)."""
    h = hashlib.sha256(repr(image.shape).encode())
    h.update(np.ascontiguousarray(image.T, np.float32).data)
    return h.hexdigest()[:32]


def is_constant(image: np.ndarray) -> bool:
    """Whether every voxel (of every channel) holds the same value: a blank scan."""
    return image.size == 0 or bool(np.all(image == image.flat[0]))


def check_informative(image: np.ndarray, target: np.ndarray, case: CaseFiles) -> None:
    """A constant image (every voxel of every channel the same: a blank or zeroed scan) whose
    label marks target is a DataError naming the file: training would learn that target sits
    on nothing. A constant image without target (a blank scan, correctly empty) passes.

    Args:
      image: [X, Y, Z] or [K, X, Y, Z] voxels as read (before normalisation).
      target: [X, Y, Z] class indices (0 = background).
    """
    if target.any() and is_constant(image):
        first = float(image.flat[0])
        raise DataError(
            f"{case.image}: the image is constant ({first:g} everywhere) while its label "
            f"{case.label} marks {int(np.count_nonzero(target))} target voxels (case "
            f"{case.case_id}); a blank scan cannot teach where the target is: fix or remove "
            "the case"
        )


SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}
# What a split without target costs, by split (logged at every load).
NO_TARGET_EFFECT = {
    "val": "its loss, the early-stopping criterion, sees background alone",
    "test": "its Dice reads 1.0 for a model that predicts nothing",
}


class Tally:
    """What the cases of a cache build hold: each case's image digest and the labelled slices
    with target per split. `add` refuses a case whose image repeats an earlier case's."""

    def __init__(self, cases: list[CaseFiles]):
        self.cases = cases
        self.digests: dict[str, str] = {}  # case id -> voxel digest
        self.target_slices: dict[str, int] = {}
        self._first: dict[str, int] = {}  # digest -> subject

    def add(self, subject: int, split: str, slices: CaseSlices, labelled: bool) -> None:
        case = self.cases[subject]
        if slices.digest is not None:
            earlier = self._first.setdefault(slices.digest, subject)
            if earlier != subject:
                raise duplicate_error(self.cases[earlier], case)
            self.digests[case.case_id] = slices.digest
        with_target = labelled and len(slices.labels) > 0
        n = (
            int(slices.labels.reshape(len(slices.labels), -1).any(axis=1).sum())
            if with_target
            else 0
        )
        self.target_slices[split] = self.target_slices.get(split, 0) + n

    def check(self, root: str, settings) -> None:
        """Refuses a dataset whose labelled cases hold no target at all."""
        if sum(self.target_slices.values()) == 0:
            values = settings.class_values or settings.target_values or "any value > 0"
            raise DataError(
                f"{root}: no labelled case holds any target (label values {values}): there "
                "is nothing to learn, and every Dice would read 1.0; check the label files, "
                "data.label_values or data.classes"
            )


def duplicate_error(first: CaseFiles, second: CaseFiles) -> DataError:
    return DataError(
        f"{second.image}: identical image voxels to {first.image} (cases {first.case_id} and "
        f"{second.case_id}): the same scan under two names would leak between the splits; "
        "remove one of them"
    )


def check_digests(digests: dict[str, str], cases: list[CaseFiles]) -> None:
    """A cached load's check of the digests its meta recorded (caches built before digests
    have none: nothing to check)."""
    by_id = {c.case_id: c for c in cases}
    seen: dict[str, str] = {}
    for case_id, digest in digests.items():
        earlier = seen.setdefault(digest, case_id)
        if earlier != case_id and earlier in by_id and case_id in by_id:
            raise duplicate_error(by_id[earlier], by_id[case_id])


# Below these, a test split's metrics say more about its cases than about the model: one case is
# no sample of the patients, and a Dice over a few lesion slices swings with each of them.
MIN_TEST_CASES = 2
MIN_TEST_TARGET_SLICES = 10


def thin_test_notes(
    n_cases: int, target_slices: int | None, names: list[str] | None = None
) -> list[str]:
    """What a reviewer would say of a test split of `n_cases` cases (`names`, where known)
    holding `target_slices` labelled slices with target (None: not counted): [] when it has at
    least MIN_TEST_CASES cases and MIN_TEST_TARGET_SLICES such slices (a split without target is
    `split_notes`'s)."""
    notes = []
    if n_cases < MIN_TEST_CASES:  # an empty split is refused when the cache is built: one case
        named = f" ({', '.join(names)})" if names else ""
        notes.append(
            f"the test metrics rest on one case{named}; give data.split a larger test fraction "
            "or list the test cases in data.split_file"
        )
    if target_slices is not None and 0 < target_slices < MIN_TEST_TARGET_SLICES:
        notes.append(
            f"the test split has {target_slices} slices with target (fewer than "
            f"{MIN_TEST_TARGET_SLICES}): its Dice rests on a few lesion slices"
        )
    return notes


def split_notes(target_slices: dict[str, int] | None, test_cases: list[str]) -> list[str]:
    """What a reviewer would say of the splits: a validation or test split without target
    (`target_slices`: labelled slices with target per split; None: a cache built before the
    counts were kept), and `thin_test_notes` of the test split of `test_cases` (names)."""
    notes = []
    for split, effect in NO_TARGET_EFFECT.items():
        if target_slices is not None and target_slices.get(split) == 0:
            notes.append(f"no target in the {SPLIT_WORDS[split]} split: {effect}")
    test_target = None if target_slices is None else target_slices.get("test")
    return notes + thin_test_notes(len(test_cases), test_target, test_cases)


def warn_splits(target_slices: dict[str, int] | None, test_cases: list[str], root: str) -> None:
    """Logs `split_notes` (at every load of the dataset at `root`)."""
    for note in split_notes(target_slices, test_cases):
        logging.warning("%s: %s", root, note)
