"""Dataset layouts on disk -> the list of cases to load, with what each layout implies.

  msd     Medical Segmentation Decathlon task folder: dataset.json lists the training pairs.
  brats   BraTS 2019: <grade>/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz, grades HGG and LGG.
  paired  any images folder and labels folder whose NIfTI files match by name.
With data.allow_unlabelled, a case may lack its label (MSD entry without "label", BraTS case
without seg, paired image without a label file): it joins the training pool unlabelled.
Listing reads no voxels, so a cached dataset only costs a directory walk and some stats.
"""

from __future__ import annotations

import dataclasses
import json
import os

from selal_jax.data.preprocess import NIFTI_EXTENSIONS, CaseFiles, DataError

BRATS_MODALITIES = ("flair", "t1", "t1ce", "t2")
BRATS_LABELS = (0, 1, 2, 4)  # background, necrotic/non-enhancing core, oedema, enhancing
BRATS_TARGETS = {
    "whole": (1, 2, 4),  # whole tumour: seg > 0
    "core": (1, 4),  # tumour core
    "enhancing": (4,),  # enhancing tumour
}


@dataclasses.dataclass
class Source:
    """The cases of a dataset and what its layout says about them.

    Attributes:
      root: the dataset folder.
      cases: one entry per subject, in a deterministic order (the split is drawn over it).
      normalisation: what 'auto' normalisation means here: 'zscore' or 'ct_window'.
      target_values: label values forming the target; None = any label > 0.
      allowed_labels: label values the files may contain; None = any non-negative integer.
      extra_files: metadata files (dataset.json) whose change must invalidate the cache.
    """

    root: str
    cases: list[CaseFiles]
    normalisation: str
    target_values: tuple[int, ...] | None
    allowed_labels: tuple[int, ...] | None
    extra_files: tuple[str, ...] = ()


def is_nifti(name: str) -> bool:
    # macOS resource forks (._x.nii.gz) and other hidden files ship inside real archives.
    return name.endswith(NIFTI_EXTENSIONS) and not name.startswith(".")


def strip_nifti(name: str) -> str:
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _label_values(data_config) -> tuple[int, ...] | None:
    values = tuple(int(v) for v in data_config.label_values)
    return values or None


def _channel_index(modality: str, names: dict | None, where: str) -> int | None:
    """A modality choice (a name from `names` or an index) -> channel index; '' -> None."""
    modality = str(modality or "").strip()
    if not modality:
        return None
    if modality.isdigit():
        return int(modality)
    for key, name in (names or {}).items():
        if str(name).lower() == modality.lower():
            return int(key)
    raise ValueError(
        f"config field data.modality: {modality!r} is not among the modalities of {where} "
        f"({names or 'none listed'}); give a name from that list or a channel index"
    )


def msd_source(root: str, data_config) -> Source:
    """Reads an MSD task folder's dataset.json."""
    meta_path = os.path.join(root, "dataset.json")
    if not os.path.isfile(meta_path):
        raise DataError(f"{meta_path}: missing dataset.json (MSD layout expected at {root})")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{meta_path}: not valid JSON ({e})") from e
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        raise DataError(
            f"{meta_path}: field 'training' must be a non-empty list of image/label pairs"
        )
    modalities = meta.get("modality") or {}
    channel = _channel_index(data_config.modality, modalities, meta_path)
    allowed = None
    if meta.get("labels"):
        try:
            allowed = tuple(sorted(int(k) for k in meta["labels"]))
        except (TypeError, ValueError) as e:
            raise DataError(
                f"{meta_path}: field 'labels' must map integer values to names, got "
                f"{meta['labels']!r}"
            ) from e
    target = _label_values(data_config)
    if target and allowed and not set(target) <= set(allowed):
        raise ValueError(
            f"config field data.label_values: {target} not among the labels of {meta_path} "
            f"({meta['labels']})"
        )
    unlabelled_ok = bool(data_config.allow_unlabelled)
    cases = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DataError(f"{meta_path}: field 'training[{i}]' must have 'image' and 'label'")
        if not entry.get("label") and not unlabelled_ok:
            raise DataError(
                f"{meta_path}: field 'training[{i}]' must have 'image' and 'label' (cases "
                "without labels need --config.data.allow_unlabelled=True and al.annotator=human)"
            )
        image = os.path.normpath(os.path.join(root, entry["image"]))
        label = os.path.normpath(os.path.join(root, entry["label"])) if entry.get("label") else None
        if os.path.basename(image).startswith("._"):
            continue  # a resource fork listed by mistake
        for path, what in ((image, "image"), (label, "label")):
            if path is not None and not os.path.isfile(path):
                raise DataError(
                    f"{meta_path}: field 'training[{i}].{what}' lists {path}, which does not exist"
                )
        cases.append(CaseFiles(strip_nifti(os.path.basename(image)), image, label, channel))
    # The modality of the chosen channel decides 'auto' normalisation.
    names = [str(v) for v in modalities.values()]
    if channel is not None and str(channel) in modalities:
        names = [str(modalities[str(channel)])]
    is_ct = any(name.strip().upper() == "CT" for name in names)
    return Source(root, cases, "ct_window" if is_ct else "zscore", target, allowed, (meta_path,))


def brats_source(root: str, data_config) -> Source:
    """Lists BraTS 2019 cases of the configured grades."""
    grades = [g.strip() for g in str(data_config.brats.grades).split(",") if g.strip()]
    if not grades or any(g not in ("HGG", "LGG") for g in grades):
        raise ValueError(
            f"config field data.brats.grades: expected HGG, LGG or HGG,LGG, got "
            f"{data_config.brats.grades!r}"
        )
    modality = str(data_config.brats.modality).lower()
    if modality not in BRATS_MODALITIES:
        raise ValueError(
            f"config field data.brats.modality: expected one of {BRATS_MODALITIES}, "
            f"got {data_config.brats.modality!r}"
        )
    target_name = str(data_config.brats.target)
    if target_name not in BRATS_TARGETS:
        raise ValueError(
            f"config field data.brats.target: expected one of {tuple(BRATS_TARGETS)}, "
            f"got {target_name!r}"
        )
    if tuple(data_config.label_values):
        raise ValueError(
            "config field data.label_values: must be () for BraTS; choose the target with "
            "data.brats.target (whole | core | enhancing)"
        )
    cases = []
    for grade in grades:
        folder = os.path.join(root, grade)
        if not os.path.isdir(folder):
            raise DataError(f"{folder}: missing BraTS grade folder (layout brats, grade {grade})")
        for case in sorted(os.listdir(folder)):
            case_dir = os.path.join(folder, case)
            if case.startswith(".") or not os.path.isdir(case_dir):
                continue  # ._ files, .DS_Store, csv files
            paths = []
            for kind in (modality, "seg"):
                candidates = [os.path.join(case_dir, f"{case}_{kind}{e}") for e in NIFTI_EXTENSIONS]
                found = [p for p in candidates if os.path.isfile(p)]
                if not found and kind == "seg" and data_config.allow_unlabelled:
                    found = [None]  # an unlabelled case of the pool
                if not found:
                    raise DataError(f"{candidates[0]}: missing BraTS {kind} file of case {case}")
                paths.append(found[0])
            cases.append(CaseFiles(case, paths[0], paths[1]))
    return Source(root, cases, "zscore", BRATS_TARGETS[target_name], BRATS_LABELS)


def _nifti_by_stem(folder: str, suffix: str, what: str) -> dict[str, str]:
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: missing {what} folder (layout paired)")
    out = {}
    for name in sorted(os.listdir(folder)):
        if not is_nifti(name):
            continue
        stem = strip_nifti(name)
        if suffix and stem.endswith(suffix):
            stem = stem[: -len(suffix)]
        if stem in out:
            raise DataError(
                f"{os.path.join(folder, name)}: same name as {out[stem]} (two {what} files for "
                f"case {stem})"
            )
        out[stem] = os.path.join(folder, name)
    return out


def paired_source(root: str, data_config) -> Source:
    """Pairs the NIfTI files of an images folder and a labels folder by name."""
    paired = data_config.paired
    images_dir = os.path.join(root, paired.images)
    labels_dir = os.path.join(root, paired.labels)
    images = _nifti_by_stem(images_dir, str(paired.image_suffix), "images")
    labels = _nifti_by_stem(labels_dir, str(paired.label_suffix), "labels")
    no_label = sorted(set(images) - set(labels))
    no_image = sorted(set(labels) - set(images))
    if data_config.allow_unlabelled:
        no_label = []  # images without a label join the training pool unlabelled
    if no_label or no_image:
        problems = []
        if no_label:
            problems.append(
                f"images without a label in {labels_dir}: "
                + ", ".join(images[s] for s in no_label[:5])
            )
        if no_image:
            problems.append(
                f"labels without an image in {images_dir}: "
                + ", ".join(labels[s] for s in no_image[:5])
            )
        raise DataError(
            "; ".join(problems) + " (files pair by name; see data.paired.image_suffix and "
            "data.paired.label_suffix; data.allow_unlabelled=True admits unlabelled images)"
        )
    channel = _channel_index(data_config.modality, None, images_dir)
    target = _label_values(data_config)
    allowed = None
    if paired.strict_labels:
        allowed = tuple(sorted({0, *(target or (1,))}))
    cases = [CaseFiles(stem, images[stem], labels.get(stem), channel) for stem in sorted(images)]
    return Source(root, cases, "zscore", target, allowed)


def find_cases(data_config, root: str) -> Source:
    """The cases of the dataset at `root` in the configured layout."""
    layout = data_config.layout
    if layout in ("synthetic", "msd"):
        source = msd_source(root, data_config)
    elif layout == "brats":
        source = brats_source(root, data_config)
    elif layout == "paired":
        source = paired_source(root, data_config)
    else:
        raise ValueError(
            f"config field data.layout: unknown layout {layout!r}; expected synthetic, msd, "
            "brats or paired"
        )
    if not source.cases:
        raise DataError(f"{root}: no cases found (layout {layout})")
    return source
