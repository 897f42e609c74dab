"""The nnU-Net v2 raw dataset layout (`data.layout = "nnunetv2"`), read and written.

  <root>/dataset.json        channel_names {"0": "T2", ...}, labels {"background": 0, ...},
                             numTraining, file_ending (".nii.gz", ".nrrd", ...)
  <root>/imagesTr/<case>_<XXXX><file_ending>   one file per channel, XXXX = 0000, 0001, ...
  <root>/labelsTr/<case><file_ending>

Channels are chosen with data.modality as for MSD (names from channel_names, indices, lists,
'all'); '' is channel 0 of a one-channel dataset. Classes with data.classes ('all' = every
non-zero value of `labels`, named from it). nnU-Net's `ignore` label is no class: its voxels
are unlabelled, never target (a slice of them alone is an unlabelled slice, as the sparse
datasets of `launch.py export-nnunet` hold them); listed in data.background_values, it reads as
background instead.
Region-based label definitions (a label whose value is a list, with `regions_class_order`) are
refused: their classes overlap, the loader's are exclusive.
"""

from __future__ import annotations

import json
import os
import re

from selal_jax.base.errors import ConfigError, DataError
from selal_jax.data import sources
from selal_jax.data.cases import CaseFiles

IGNORE_LABEL = "ignore"  # nnU-Net v2's name of the label of unannotated voxels
DATASET_JSON = "dataset.json"
FILE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr")  # the file endings the loader reads


def read_dataset_json(root: str) -> tuple[str, dict]:
    """(path, contents) of an nnU-Net v2 dataset.json, its fields checked."""
    meta_path = os.path.join(root, DATASET_JSON)
    if not os.path.isfile(meta_path):
        raise DataError(
            f"{meta_path}: missing dataset.json (nnU-Net v2 raw dataset expected at {root})"
        )
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{meta_path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    names = meta.get("channel_names", meta.get("modality"))  # 'modality': nnU-Net v1's name
    if not isinstance(names, dict) or not names:
        raise DataError(
            f"{meta_path}: field 'channel_names' must map channel indices to names, e.g. "
            f'{{"0": "T2"}}, got {names!r}'
        )
    if any(not str(k).isdigit() for k in names):
        raise DataError(f"{meta_path}: field 'channel_names' keys must be integers, got {names}")
    ending = meta.get("file_ending")
    if ending not in FILE_ENDINGS:
        raise DataError(
            f"{meta_path}: field 'file_ending' must be one of {FILE_ENDINGS} (the formats this "
            f"loader reads), got {ending!r}"
        )
    return meta_path, meta


def label_map(meta: dict, meta_path: str) -> tuple[dict[int, str], int | None]:
    """({value: name} of the dataset's labels without `ignore`, the ignore value or None)."""
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DataError(
            f"{meta_path}: field 'labels' must map label names to integer values, e.g. "
            f'{{"background": 0, "tumour": 1}}, got {labels!r}'
        )
    regions = {k: v for k, v in labels.items() if isinstance(v, (list, tuple))}
    if regions or "regions_class_order" in meta:
        example = next(iter(regions.items()), None)
        raise DataError(
            f"{meta_path}: field 'labels' defines regions (e.g. {example}; with "
            "'regions_class_order'): region-based training is not supported, its classes "
            "overlap and this loader's are exclusive; give each label one integer value"
        )
    out, ignore = {}, None
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(
                f"{meta_path}: field 'labels': {name!r} must be an integer value >= 0, got "
                f"{value!r}"
            )
        if value in out or value == ignore:
            raise DataError(f"{meta_path}: field 'labels': value {value} is given twice")
        if name == IGNORE_LABEL:
            ignore = value
        else:
            out[value] = str(name)
    if 0 not in out:
        raise DataError(f"{meta_path}: field 'labels' must name the background, value 0")
    return out, ignore


def _files_by_case(folder: str, ending: str, with_channel: bool) -> dict:
    """{case: path} of labelsTr, or {case: {channel: path}} of imagesTr."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: missing folder (layout nnunetv2)")
    pattern = re.compile(
        r"(.+)_(\d{4})" + re.escape(ending) if with_channel else r"(.+)" + re.escape(ending)
    )
    out: dict = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith(".") or not name.endswith(ending):
            continue
        match = pattern.fullmatch(name)
        if match is None:
            raise DataError(
                f"{os.path.join(folder, name)}: not named <case>_<XXXX>{ending} (nnU-Net v2: "
                "XXXX is the 4-digit channel index)"
            )
        path = os.path.join(folder, name)
        if with_channel:
            out.setdefault(match.group(1), {})[int(match.group(2))] = path
        else:
            out[match.group(1)] = path
    return out


def _check_file_ending(folder: str, ending: str, meta_path: str) -> None:
    """imagesTr holds no file of `ending`: if it holds volumes of another ending, the field
    file_ending is what is wrong, and the error says so."""
    found: dict[str, int] = {}
    for name in os.listdir(folder):
        other = next((e for e in FILE_ENDINGS if name.endswith(e)), None)
        if other is not None and not name.startswith("."):
            found[other] = found.get(other, 0) + 1
    if found:
        common = max(found, key=found.get)
        raise DataError(
            f"{meta_path}: field 'file_ending' is {ending!r}, but no file of {folder} ends in "
            f"it; its {found[common]} volume files end in {common!r} (set file_ending to "
            f"{common!r})"
        )


def nnunetv2_source(root: str, data_config) -> sources.Source:
    """Reads an nnU-Net v2 raw dataset folder (dataset.json, imagesTr/, labelsTr/)."""
    meta_path, meta = read_dataset_json(root)
    names = {str(k): str(v) for k, v in meta.get("channel_names", meta.get("modality")).items()}
    values, ignore = label_map(meta, meta_path)
    modality = str(data_config.modality or "").strip()
    if not modality:
        if len(names) > 1:
            raise ConfigError(
                f"config field data.modality: {meta_path} lists {len(names)} channels "
                f"({names}); choose one or several by name or index, or 'all', got ''"
            )
        modality = next(iter(names))
    channels = sources.channel_indices(modality, names, meta_path)
    unknown = [c for c in channels if str(c) not in names]
    if unknown:
        raise ConfigError(
            f"config field data.modality: channel {unknown[0]} is not in field 'channel_names' "
            f"of {meta_path} ({names}), got {modality!r}"
        )
    target = tuple(int(v) for v in data_config.label_values) or None
    if target and not set(target) <= set(values):
        raise ConfigError(
            f"config field data.label_values: {target} not among the labels of {meta_path} "
            f"({values})"
        )
    classes = sources.resolve_classes(
        data_config,
        str(data_config.get("classes", "") or ""),
        values,
        target,
        tuple(sorted(values)),
        meta_path,
    )
    ending = meta["file_ending"]
    images_dir, labels_dir = os.path.join(root, "imagesTr"), os.path.join(root, "labelsTr")
    images = _files_by_case(images_dir, ending, with_channel=True)
    if not images:
        _check_file_ending(images_dir, ending, meta_path)
    labels = _files_by_case(labels_dir, ending, with_channel=False)
    problems = [
        f"{labels[c]}: a label without images (expected {os.path.join(images_dir, c)}_0000{ending})"
        for c in sorted(set(labels) - set(images))
    ]
    cases = []
    for case in sorted(images):
        paths = []
        for c in channels:
            path = images[case].get(c)
            if path is None:
                problems.append(
                    f"{os.path.join(images_dir, f'{case}_{c:04d}{ending}')}: missing channel {c} "
                    f"({names[str(c)]}) of case {case}"
                )
            paths.append(path)
        label = labels.get(case)
        if label is None and not data_config.allow_unlabelled:
            problems.append(
                f"{os.path.join(labels_dir, case + ending)}: missing label of case {case} "
                "(data.allow_unlabelled=True admits unlabelled cases)"
            )
        if all(paths):
            extra = tuple((p, None) for p in paths[1:])
            cases.append(CaseFiles(case, paths[0], label, extra_channels=extra))
    if problems:
        more = f" ({len(problems)} problems)" if len(problems) > 1 else ""
        raise DataError(f"bad nnU-Net v2 dataset {root}{more}:\n" + "\n".join(problems))
    n_training = meta.get("numTraining")
    if n_training is not None and n_training != len(cases):
        raise DataError(
            f"{meta_path}: field 'numTraining' is {n_training!r} but imagesTr holds "
            f"{len(cases)} cases"
        )
    channel_names = tuple(names[str(c)] for c in channels)
    normalisation = tuple(sources.normalisation_of(n) for n in channel_names)
    if ignore is not None and ignore in classes.background_values:
        ignore = None  # listed in data.background_values: read as background, as asked
    return sources.make_source(
        root,
        cases,
        classes,
        channel_names,
        normalisation,
        extra_files=(meta_path,),
        ignore_value=ignore,
    )
