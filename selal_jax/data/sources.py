"""What a layout reports about a dataset (`Source`, built by `make_source`), and what the config
fields that choose channels and classes mean against the dataset's own channel and label maps.

Classes and channels. `data.classes` = '' keeps the binary target (`data.label_values`, or any
label > 0); otherwise C foreground classes, e.g. '1,2,4' or '1+4,2' ('+' joins the label values
of one class) or 'all' (every non-zero value of the dataset's label map); one class is the binary
target. `data.modality` (MSD, paired) and `data.brats.modality` pick one input channel as before,
or K >= 2 of them: a comma-separated list of names or indices, or 'all'.
"""

from __future__ import annotations

import dataclasses

from selal_jax.base.errors import ConfigError, DataError
from selal_jax.data.cases import CaseFiles

# data.synthetic.kind = 'multiclass' reads its 2-channel, 2-class cohort with these defaults.
SYNTHETIC_MULTICLASS_DEFAULTS = {"modality": "all", "classes": "all"}


@dataclasses.dataclass
class Source:
    """The cases of a dataset and what its layout says about them.

    Attributes:
      root: the dataset folder.
      cases: one entry per subject, in a deterministic order (the split is drawn over it).
      normalisation: what 'auto' normalisation means here: 'zscore' or 'ct_window'.
      target_values: label values forming the target; None = any label > 0. With C >= 2
        classes, the union of their values.
      allowed_labels: label values the files may contain; None = any non-negative integer.
      extra_files: metadata files (dataset.json) whose change must invalidate the cache.
      class_values: per foreground class (C >= 2) its label values, class k (1-based) in
        position k - 1; None = the binary target of `target_values` (C = 1).
      class_names: the C foreground class names (('target',) for the binary target of
        data.label_values; dataset names, or 'label_<v>', for data.classes).
      channel_names: the K input channel names (dataset modality names where known, else
        'channel_<i>' for a 4D file's index i, or 'image' for a 3D image).
      channel_normalisation: per input channel (K >= 2) what 'auto' normalisation means;
        None for one channel (then `normalisation`).
      background_values: label values mapped to background (data.background_values).
      ignore_value: the label value of unlabelled voxels (nnU-Net's `ignore` label), or None:
        such voxels are never target, and a slice of them alone is unlabelled.
    """

    root: str
    cases: list[CaseFiles]
    normalisation: str
    target_values: tuple[int, ...] | None
    allowed_labels: tuple[int, ...] | None
    extra_files: tuple[str, ...] = ()
    class_values: tuple[tuple[int, ...], ...] | None = None
    class_names: tuple[str, ...] = ("target",)
    channel_names: tuple[str, ...] = ("image",)
    channel_normalisation: tuple[str, ...] | None = None
    background_values: tuple[int, ...] = ()
    ignore_value: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return len(self.channel_names)

    def class_label_values(self) -> tuple[tuple[int, ...], ...] | None:
        """Per foreground class the label values it stands for (what an exported mask of class
        k writes: the first of them); None for the binary target of 'any label > 0'."""
        if self.class_values is not None:
            return self.class_values
        return None if self.target_values is None else (tuple(self.target_values),)


def make_source(
    root: str,
    cases: list[CaseFiles],
    classes: _Classes,
    channel_names: tuple[str, ...],
    channel_normalisation: tuple[str, ...],
    normalisation: str | None = None,
    extra_files: tuple[str, ...] = (),
    ignore_value: int | None = None,
) -> Source:
    """The Source of a layout's cases: one constructor for every layout.

    Args:
      classes: what data.classes / data.background_values mean there (`resolve_classes`).
      channel_names: the K input channel names.
      channel_normalisation: per input channel what 'auto' normalisation means ('zscore' or
        'ct_window'); kept as Source.channel_normalisation with K >= 2 channels only.
      normalisation: what 'auto' means for the image as a whole; None = that of the first
        channel (MSD derives it from its modality map instead).
      extra_files: metadata files whose change must invalidate the cache.
      ignore_value: the label value of unlabelled voxels (its files may hold it), or None.
    """
    allowed = classes.allowed_labels
    if ignore_value is not None and allowed is not None:
        allowed = tuple(sorted({*allowed, ignore_value}))
    return Source(
        root,
        cases,
        channel_normalisation[0] if normalisation is None else normalisation,
        classes.target_values,
        allowed,
        extra_files,
        class_values=classes.class_values,
        class_names=classes.class_names,
        channel_names=channel_names,
        channel_normalisation=channel_normalisation if len(channel_names) > 1 else None,
        background_values=classes.background_values,
        ignore_value=ignore_value,
    )


def effective(data_config, field: str) -> str:
    """data.<field> as a string; the multiclass synthetic cohort reads '' as its default."""
    value = str(data_config.get(field, "") or "").strip()
    if (
        not value
        and data_config.layout == "synthetic"
        and data_config.synthetic.get("kind", "binary") == "multiclass"
    ):
        return SYNTHETIC_MULTICLASS_DEFAULTS[field]
    return value


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
    raise ConfigError(
        f"config field data.modality: {modality!r} is not among the modalities of {where} "
        f"({names or 'none listed'}); give a name from that list or a channel index"
    )


def channel_indices(
    modality: str, names: dict | None, where: str, count: int | None = None
) -> tuple[int, ...] | None:
    """data.modality -> the chosen channel indices, in the order listed; '' -> None.

    Args:
      modality: '', one name or index, a comma-separated list of them, or 'all'.
      names: the dataset's modality map {"0": "FLAIR", ...}, or None.
      where: the file or folder named in errors.
      count: channels of the images, for 'all' without a modality map.
    """
    modality = str(modality or "").strip()
    if not modality:
        return None
    if modality.lower() == "all":
        if names:
            try:
                return tuple(sorted(int(k) for k in names))
            except ValueError as e:
                raise DataError(
                    f"{where}: field 'modality' keys must be integers, got {names}"
                ) from e
        if count is None:
            raise ConfigError(
                f"config field data.modality: 'all' needs the modality map of {where}, which "
                f"lists none; give channel indices, got {modality!r}"
            )
        return tuple(range(count))
    tokens = [t.strip() for t in modality.split(",")]
    if any(not t for t in tokens):
        raise ConfigError(
            f"config field data.modality: expected names or indices separated by commas, got "
            f"{modality!r}"
        )
    chosen = tuple(_channel_index(t, names, where) for t in tokens)
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"config field data.modality: a channel is listed twice in {modality!r}")
    return chosen


def parse_values(text: str, field: str) -> tuple[int, ...]:
    """'3,5' -> (3, 5): comma-separated non-negative integers ('' -> ())."""
    text = str(text or "").strip()
    if not text:
        return ()
    out = []
    for token in text.split(","):
        token = token.strip()
        if not token.isdigit():
            raise ConfigError(
                f"config field {field}: expected comma-separated label values (integers >= 0), "
                f"got {text!r}"
            )
        out.append(int(token))
    if len(set(out)) != len(out):
        raise ConfigError(f"config field {field}: a value is listed twice in {text!r}")
    return tuple(out)


def parse_classes(
    text: str, label_map: dict[int, str] | None = None, where: str = "the dataset"
) -> tuple[tuple[tuple[int, ...], ...], tuple[str, ...]] | None:
    """data.classes -> (per class its label values, class names); '' -> None.

    '1,2,4' is three classes of one value each, '1+4,2' class 1 = {1, 4} and class 2 = {2},
    'all' every non-zero value of `label_map` in ascending order. Names come from `label_map`
    (a class of several values joins their names with '+'), else 'label_<v>'.
    """
    field = "config field data.classes"
    text = str(text or "").strip()
    if not text:
        return None
    if text.lower() == "all":
        if label_map is None:
            raise ConfigError(
                f"{field}: 'all' needs the dataset's label map and {where} has none; list the "
                f"classes' label values (e.g. 1,2), got {text!r}"
            )
        groups = tuple((v,) for v in sorted(label_map) if v != 0)
        if not groups:
            raise ConfigError(f"{field}: the label map of {where} has no non-zero value, got 'all'")
    else:
        groups = []
        for token in text.split(","):
            parts = [p.strip() for p in token.split("+")]
            if not all(p.isdigit() for p in parts):
                raise ConfigError(
                    f"{field}: expected comma-separated classes, each one label value or several "
                    f"joined by '+' (e.g. 1+4,2), or 'all'; got {text!r}"
                )
            groups.append(tuple(int(p) for p in parts))
        groups = tuple(groups)
    seen: set[int] = set()
    for group in groups:
        for v in group:
            if v == 0:
                raise ConfigError(
                    f"{field}: 0 is the background and cannot be a class, got {text!r}"
                )
            if v in seen:
                raise ConfigError(f"{field}: label value {v} is in two classes, got {text!r}")
            if label_map is not None and v not in label_map:
                raise ConfigError(
                    f"{field}: label value {v} is not among the labels of {where} "
                    f"({dict(sorted(label_map.items()))}), got {text!r}"
                )
            seen.add(v)
    names = tuple(
        "+".join(str(label_map[v]) if label_map else f"label_{v}" for v in group)
        for group in groups
    )
    return groups, names


@dataclasses.dataclass(frozen=True)
class _Classes:
    """What data.classes / data.background_values mean for one layout (fields of Source)."""

    target_values: tuple[int, ...] | None
    allowed_labels: tuple[int, ...] | None
    class_values: tuple[tuple[int, ...], ...] | None
    class_names: tuple[str, ...]
    background_values: tuple[int, ...]


def resolve_classes(
    data_config,
    classes: str,
    label_map: dict[int, str] | None,
    target: tuple[int, ...] | None,
    allowed: tuple[int, ...] | None,
    where: str,
) -> _Classes:
    """The layout's target/allowed values, with data.classes and data.background_values applied.

    `classes` '' keeps the binary target `target` and `allowed` of the layout. Otherwise the
    files may hold only 0, the classes' values and the background values (anything else is a
    DataError naming the file); one class is the binary target of its values.
    """
    background = parse_values(data_config.get("background_values", ""), "data.background_values")
    parsed = parse_classes(classes, label_map, where)
    if parsed is None:
        if background:
            raise ConfigError(
                "config field data.background_values: only used with data.classes (the binary "
                f"target treats every value outside it as background), got {background}"
            )
        return _Classes(target, allowed, None, ("target",), ())
    if tuple(data_config.label_values):
        raise ConfigError(
            "config field data.label_values: must be () when data.classes is set (the classes "
            f"name their label values), got {tuple(data_config.label_values)}"
        )
    groups, names = parsed
    values = sorted(v for group in groups for v in group)
    clash = sorted(set(values) & set(background))
    if clash:
        raise ConfigError(
            f"config field data.background_values: {clash} also in data.classes {classes!r}"
        )
    allowed = tuple(sorted({0, *values, *background}))
    if len(groups) == 1:
        return _Classes(groups[0], allowed, None, names, background)
    return _Classes(tuple(values), allowed, groups, names, background)


def normalisation_of(name: str) -> str:
    return "ct_window" if str(name).strip().upper() == "CT" else "zscore"
