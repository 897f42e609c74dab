"""How a dataset's cases are split into train, val and test: a seeded split by subject (or by
patient, data.group_regex), or the one a split file lists (data.split_file). Val and test get
labelled cases only.
"""

from __future__ import annotations

import json
import re

import numpy as np
from absl import logging

from selal_jax.base.errors import DataError
from selal_jax.data import layouts
from selal_jax.data.config_fields import group_pattern, split_fractions

SPLIT_NAMES = ("train", "val", "test")


def split_subjects(
    n_subjects: int, fractions, seed: int, labelled: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded split of subject indices into train/val/test (each sorted).

    val and test get round(fraction * n) of the n labelled subjects, taken from the end of one
    seeded permutation of all subjects, skipping unlabelled ones; train gets the rest, so every
    unlabelled subject. With every subject labelled (`labelled` None) this is the plain split of
    the permutation. A part left without a labelled subject is an error.
    """
    fractions = split_fractions(fractions)
    labelled = np.ones(n_subjects, bool) if labelled is None else np.asarray(labelled, bool)
    n_labelled = int(labelled.sum())
    fractions = fractions / fractions.sum()
    n_val = int(round(fractions[1] * n_labelled))
    n_test = int(round(fractions[2] * n_labelled))
    n_train = n_labelled - n_val - n_test  # labelled training subjects
    for name, n in (("val", n_val), ("test", n_test), ("train", n_train)):
        if n < 1:
            of = f"{n_subjects}" if n_labelled == n_subjects else f"{n_labelled} labelled"
            raise DataError(
                f"the split {tuple(np.round(fractions, 3).tolist())} of {of} subjects "
                f"leaves {name} empty (train/val/test = {n_train}/{n_val}/{n_test}); "
                "use more subjects or change data.split"
            )
    order = np.random.default_rng(seed).permutation(n_subjects)
    held_out = order[labelled[order]][n_train:]  # the last n_val + n_test labelled subjects
    val, test = held_out[:n_val], held_out[n_val:]
    return np.setdiff1d(order, held_out), np.sort(val), np.sort(test)


def case_groups(case_ids: list[str], pattern: re.Pattern) -> list[str]:
    """Each case's group (patient): the first group of `pattern` searched in its name.

    A case the pattern does not match (or whose group takes no part in the match) is a DataError
    naming every such case and the pattern.
    """
    groups, unmatched = [], []
    for case_id in case_ids:
        match = pattern.search(case_id)
        if match is None or match.group(1) is None:
            unmatched.append(case_id)
        else:
            groups.append(match.group(1))
    if unmatched:
        raise DataError(
            f"config field data.group_regex {pattern.pattern!r} does not match "
            f"{len(unmatched)} case names: {', '.join(unmatched)}"
        )
    return groups


def split_groups(
    case_ids: list[str], fractions, seed: int, labelled: np.ndarray, pattern: re.Pattern
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`split_subjects` over the groups of `pattern` (sorted by name), expanded to case indices:
    a patient's cases all land in one part. A group is labelled when all its cases are; as in
    `split_subjects`, val and test get only labelled groups."""
    groups = case_groups(case_ids, pattern)
    names = sorted(set(groups))
    group_of = np.searchsorted(names, groups)
    group_labelled = np.ones(len(names), bool)
    np.logical_and.at(group_labelled, group_of, np.asarray(labelled, bool))
    parts = split_subjects(len(names), fractions, seed, group_labelled)
    return tuple(np.flatnonzero(np.isin(group_of, part)) for part in parts)


def split_from_file(
    path: str, case_ids: list[str], labelled: np.ndarray, pattern: re.Pattern | None = None
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], list[str]]:
    """The split listed in a JSON file {"train": [...], "val": [...], "test": [...]}.

    Returns ((train, val, test) sorted case indices, names of the cases in no list). Unknown
    names, names listed twice, unlabelled cases in val or test, an empty part and (with
    `pattern`) a patient split over two parts are DataErrors naming the file and the cases.
    """
    where = f"{path} (config field data.split_file)"
    try:
        with open(path) as f:
            listed = json.load(f)
    except FileNotFoundError as e:
        raise DataError(f"{where}: split file not found") from e
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: not a readable JSON file ({e})") from e
    if not isinstance(listed, dict) or set(listed) != set(SPLIT_NAMES):
        got = sorted(listed) if isinstance(listed, dict) else type(listed).__name__
        raise DataError(
            f"{where}: expected an object with exactly the keys {list(SPLIT_NAMES)}, got {got}"
        )
    index: dict[str, int] = {}
    for i, case_id in enumerate(case_ids):
        if case_id in index:
            raise DataError(f"{where}: two cases of the dataset are named {case_id!r}")
        index[case_id] = i
    part_of: dict[str, str] = {}
    problems = []
    for name in SPLIT_NAMES:
        names = listed[name]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{where}: field '{name}' must be a list of case names, got {names!r}")
        if not names:
            problems.append(f"field '{name}' lists no case")
        for case_id in names:
            if case_id not in index:
                problems.append(f"unknown case {case_id!r} in '{name}'")
            elif case_id in part_of:
                problems.append(f"case {case_id!r} is in both '{part_of[case_id]}' and '{name}'")
            else:
                part_of[case_id] = name
                if name != "train" and not labelled[index[case_id]]:
                    problems.append(f"case {case_id!r} in '{name}' has no label")
    if pattern is not None and not problems:
        listed_ids = list(part_of)
        parts_of_group: dict[str, set[str]] = {}
        for case_id, group in zip(listed_ids, case_groups(listed_ids, pattern), strict=True):
            parts_of_group.setdefault(group, set()).add(part_of[case_id])
        for group, parts in sorted(parts_of_group.items()):
            if len(parts) > 1:
                problems.append(
                    f"patient {group!r} (data.group_regex) has cases in {sorted(parts)}"
                )
    if problems:
        raise DataError(f"{where}: " + "; ".join(problems))
    parts = tuple(
        np.sort(np.asarray([index[c] for c in listed[name]], np.int64)) for name in SPLIT_NAMES
    )
    left_out = [c for c in case_ids if c not in part_of]
    return parts, left_out


def split_cases(source: layouts.Source, data_config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (train, val, test) case indices of source.cases: the split file's, else the seeded
    split (by patient with data.group_regex). Cases in no part are left out (one warning)."""
    labelled = np.asarray([c.label is not None for c in source.cases], bool)
    case_ids = [c.case_id for c in source.cases]
    fractions, seed = tuple(data_config.split), int(data_config.split_seed)
    pattern = group_pattern(data_config)
    split_file = data_config.get("split_file", None)
    if split_file is not None:
        parts, left_out = split_from_file(split_file, case_ids, labelled, pattern)
        if left_out:
            logging.warning(
                "%s: %d cases in no list of the split file are left out: %s",
                split_file,
                len(left_out),
                ", ".join(left_out),
            )
        return parts
    if pattern is not None:
        return split_groups(case_ids, fractions, seed, labelled, pattern)
    return split_subjects(len(case_ids), fractions, seed, labelled)
