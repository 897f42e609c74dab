"""Dataset layouts on disk -> the list of cases to load, with what each layout implies.

  msd     Medical Segmentation Decathlon task folder: dataset.json lists the training pairs.
  brats   BraTS 2019: <grade>/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz, grades HGG and LGG.
  paired  any images folder and labels folder whose NIfTI files match by name.
  nnunetv2  nnU-Net v2 raw dataset: dataset.json, imagesTr/<case>_<XXXX>, labelsTr (nnunet.py).
Volumes may be NIfTI or NRRD (.nrrd, .nhdr: 3D Slicer's format), see volumes.py.
With data.allow_unlabelled, a case may lack its label (MSD entry without "label", BraTS case
without seg, paired image without a label file): it joins the training pool unlabelled.
Listing reads no voxels, so a cached dataset only costs a directory walk and some stats.

Classes and channels, and the `Source` record every layout returns: sources.py.
"""

from __future__ import annotations

import dataclasses
import json
import os

from selal_jax.base.errors import ConfigError, DataError
from selal_jax.data import nnunet, volumes
from selal_jax.data.cases import CaseFiles
from selal_jax.data.reading import NIFTI_EXTENSIONS, load_nifti
from selal_jax.data.sources import (  # noqa: F401  (re-exported: callers use layouts.X)
    SYNTHETIC_MULTICLASS_DEFAULTS,
    Source,
    channel_indices,
    effective,
    make_source,
    normalisation_of,
    parse_classes,
    parse_values,
    resolve_classes,
)

# What a layout's folders may hold: NIfTI, and NRRD (3D Slicer) volumes and label maps.
VOLUME_EXTENSIONS = (*NIFTI_EXTENSIONS, ".nrrd", ".nhdr")

BRATS_MODALITIES = ("flair", "t1", "t1ce", "t2")
BRATS_LABELS = (0, 1, 2, 4)  # background, necrotic/non-enhancing core, oedema, enhancing
BRATS_TARGETS = {
    "whole": (1, 2, 4),  # whole tumour: seg > 0
    "core": (1, 4),  # tumour core
    "enhancing": (4,),  # enhancing tumour
}
# data.brats.target = 'classes': the label map that data.classes picks from ('' = all three).
BRATS_CLASS_NAMES = {1: "necrotic_core", 2: "edema", 4: "enhancing"}


def is_nifti(name: str) -> bool:
    """A volume file the loader reads (NIfTI or NRRD), not a hidden one."""
    # macOS resource forks (._x.nii.gz) and other hidden files ship inside real archives.
    return name.endswith(VOLUME_EXTENSIONS) and not name.startswith(".")


def strip_nifti(name: str) -> str:
    """The case name of a volume file: without .nii.gz, .nii, .seg.nrrd, .nrrd or .nhdr."""
    return volumes.strip_extension(name)


def _label_values(data_config) -> tuple[int, ...] | None:
    values = tuple(int(v) for v in data_config.label_values)
    return values or None


def _channel_cases(cases: list[CaseFiles], channels: tuple[int, ...] | None) -> list[CaseFiles]:
    """Cases of single-file images with the chosen channel(s) of their 4D file."""
    if not channels or len(channels) == 1:
        return cases
    return [
        dataclasses.replace(
            case, channel=channels[0], extra_channels=tuple((case.image, c) for c in channels[1:])
        )
        for case in cases
    ]


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
    if not isinstance(meta, dict):
        raise DataError(
            f"{meta_path}: expected a JSON object with a 'training' list, got a "
            f"{type(meta).__name__}"
        )
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        raise DataError(
            f"{meta_path}: field 'training' must be a non-empty list of image/label pairs"
        )
    modalities = meta.get("modality") or {}
    channels = channel_indices(effective(data_config, "modality"), modalities, meta_path)
    channel = channels[0] if channels else None
    allowed = label_map = None
    if meta.get("labels"):
        try:
            allowed = tuple(sorted(int(k) for k in meta["labels"]))
            label_map = {int(k): str(v) for k, v in meta["labels"].items()}
        except (TypeError, ValueError, AttributeError) as e:
            raise DataError(
                f"{meta_path}: field 'labels' must map integer values to names, got "
                f"{meta['labels']!r}"
            ) from e
    target = _label_values(data_config)
    if target and allowed and not set(target) <= set(allowed):
        raise ConfigError(
            f"config field data.label_values: {target} not among the labels of {meta_path} "
            f"({meta['labels']})"
        )
    classes = resolve_classes(
        data_config, effective(data_config, "classes"), label_map, target, allowed, meta_path
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
        for what in ("image", "label"):
            if entry.get(what) is not None and not isinstance(entry[what], str):
                raise DataError(
                    f"{meta_path}: field 'training[{i}].{what}' must be a path (a string), got "
                    f"{entry[what]!r}"
                )
        image = os.path.normpath(os.path.join(root, entry["image"]))
        label = os.path.normpath(os.path.join(root, entry["label"])) if entry.get("label") else None
        if os.path.basename(image).startswith("._"):
            continue  # a resource fork listed by mistake
        for path, what in ((image, "image"), (label, "label")):
            if path is not None and not os.path.isfile(path):
                state = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
                raise DataError(
                    f"{meta_path}: field 'training[{i}].{what}' lists {path}, which {state}"
                )
        cases.append(CaseFiles(strip_nifti(os.path.basename(image)), image, label, channel))
    # The modality of the chosen channel decides 'auto' normalisation.
    names = [str(v) for v in modalities.values()]
    if channel is not None and str(channel) in modalities:
        names = [str(modalities[str(channel)])]
    is_ct = any(name.strip().upper() == "CT" for name in names)
    if channels:
        channel_names = tuple(str(modalities.get(str(c), f"channel_{c}")) for c in channels)
    else:  # a 3D image: its one modality, where the map has only one
        channel_names = (str(names[0]),) if len(names) == 1 else ("image",)
    return make_source(
        root,
        _channel_cases(cases, channels),
        classes,
        channel_names,
        tuple(normalisation_of(n) for n in channel_names),
        normalisation="ct_window" if is_ct else "zscore",
        extra_files=(meta_path,),
    )


def brats_source(root: str, data_config) -> Source:
    """Lists BraTS 2019 cases of the configured grades."""
    grades = [g.strip() for g in str(data_config.brats.grades).split(",") if g.strip()]
    if not grades or any(g not in ("HGG", "LGG") for g in grades):
        raise ConfigError(
            f"config field data.brats.grades: expected HGG, LGG or HGG,LGG, got "
            f"{data_config.brats.grades!r}"
        )
    text = str(data_config.brats.modality).strip().lower()
    modalities = BRATS_MODALITIES if text == "all" else tuple(m.strip() for m in text.split(","))
    if not modalities or any(m not in BRATS_MODALITIES for m in modalities):
        raise ConfigError(
            f"config field data.brats.modality: expected one of {BRATS_MODALITIES}, a "
            f"comma-separated list of them or 'all', got {data_config.brats.modality!r}"
        )
    if len(set(modalities)) != len(modalities):
        raise ConfigError(
            f"config field data.brats.modality: a modality is listed twice, got "
            f"{data_config.brats.modality!r}"
        )
    target_name = str(data_config.brats.target)
    if target_name not in (*BRATS_TARGETS, "classes"):
        raise ConfigError(
            f"config field data.brats.target: expected one of {(*BRATS_TARGETS, 'classes')}, "
            f"got {target_name!r}"
        )
    if tuple(data_config.label_values):
        raise ConfigError(
            "config field data.label_values: must be () for BraTS; choose the target with "
            "data.brats.target (whole | core | enhancing | classes)"
        )
    classes_text = str(data_config.get("classes", "") or "").strip()
    if target_name != "classes" and classes_text:
        raise ConfigError(
            f"config field data.classes: BraTS classes need data.brats.target=classes (got "
            f"target {target_name!r}), got {classes_text!r}"
        )
    if target_name == "classes":
        classes = resolve_classes(
            data_config, classes_text or "1,2,4", BRATS_CLASS_NAMES, None, BRATS_LABELS, root
        )
    else:
        classes = resolve_classes(
            data_config, "", None, BRATS_TARGETS[target_name], BRATS_LABELS, root
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
            for kind in (*modalities, "seg"):
                candidates = [
                    os.path.join(case_dir, f"{case}_{kind}{e}") for e in VOLUME_EXTENSIONS
                ]
                found = [p for p in candidates if os.path.isfile(p)]
                if not found and kind == "seg" and data_config.allow_unlabelled:
                    found = [None]  # an unlabelled case of the pool
                if not found:
                    raise DataError(f"{candidates[0]}: missing BraTS {kind} file of case {case}")
                paths.append(found[0])
            extra = tuple((p, None) for p in paths[1:-1])
            cases.append(CaseFiles(case, paths[0], paths[-1], extra_channels=extra))
    return make_source(root, cases, classes, modalities, ("zscore",) * len(modalities))


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
    modality = str(data_config.modality or "").strip()
    count = None
    if modality.lower() == "all" and images:  # no modality map: the first image's channels
        shape = load_nifti(images[sorted(images)[0]], "image", header_only=True).shape
        count = int(shape[3]) if len(shape) == 4 else 1
    channels = channel_indices(modality, None, images_dir, count)
    channel = channels[0] if channels else None
    target = _label_values(data_config)
    allowed = None
    if paired.strict_labels:
        allowed = tuple(sorted({0, *(target or (1,))}))
    classes = resolve_classes(
        data_config, str(data_config.get("classes", "")), None, target, allowed, labels_dir
    )
    cases = [CaseFiles(stem, images[stem], labels.get(stem), channel) for stem in sorted(images)]
    channel_names = tuple(f"channel_{c}" for c in channels) if channels else ("image",)
    return make_source(
        root,
        _channel_cases(cases, channels),
        classes,
        channel_names,
        ("zscore",) * len(channel_names),
    )


def find_cases(data_config, root: str) -> Source:
    """The cases of the dataset at `root` in the configured layout."""
    layout = data_config.layout
    if layout in ("synthetic", "msd"):
        source = msd_source(root, data_config)
    elif layout == "brats":
        source = brats_source(root, data_config)
    elif layout == "paired":
        source = paired_source(root, data_config)
    elif layout == "nnunetv2":
        source = nnunet.nnunetv2_source(root, data_config)
    else:
        raise ConfigError(
            f"config field data.layout: unknown layout {layout!r}; expected synthetic, msd, "
            "brats, paired or nnunetv2"
        )
    if not source.cases:
        raise DataError(f"{root}: no cases found (layout {layout})")
    refuse_duplicate_cases(source.cases, root)
    return source


def refuse_duplicate_cases(cases: list[CaseFiles], where: str) -> None:
    """A case listed twice (the same file under two spellings, os.path.realpath, or two files
    of one case name) would become two subjects and could fall into two splits: a DataError
    naming both entries."""
    seen: dict[str, CaseFiles] = {}
    for case in cases:
        keys = [("name", case.case_id)]
        keys += [("file", os.path.realpath(p)) for p in (*case.image_files, case.label) if p]
        for kind, key in keys:
            first = seen.setdefault(f"{kind}:{key}", case)
            if first is not case:
                why = f"same case name {key!r}" if kind == "name" else f"same file {key}"
                raise DataError(
                    f"{where}: the cases {first.case_id!r} ({first.image}) and {case.case_id!r} "
                    f"({case.image}) are the same case ({why}); listed twice it would be two "
                    "subjects, possibly in two splits: remove one entry"
                )
