"""Dataset layouts -> train/val/test SliceSets, split by subject, cached as memory-mapped arrays.

`load_dataset(config.data, folder)` is the only entry point. Cold, it checks every case's
headers (all problems reported at once), draws the subject split, then reads, checks and slices
the cases one by one straight into a new cache; warm, it only stats the source files and
memory-maps the cache (and writes nothing, unless a file was touched since: its digest index).

The checks of config.data and the preprocessing Settings it gives: config_fields.py.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import logging

from selal_jax.base.errors import ConfigError, DataError
from selal_jax.data import cache, checks, digests, layouts, preprocess, splitting, synthetic
from selal_jax.data.cases import CaseFiles, Settings
from selal_jax.data.config_fields import make_settings, validate_data_config
from selal_jax.data.slices import SliceSet, Splits


def resolve_root(data_config, folder: str) -> str:
    """The dataset's folder: data.root, or for the synthetic layout the cohort it writes (once)
    there or, without data.root, under `folder`."""
    if data_config.layout == "synthetic":
        syn = data_config.synthetic
        kind = syn.get("kind", "binary")
        root = data_config.root or os.path.join(folder, synthetic.FOLDERS[kind])
        return synthetic.write_cohort(
            root,
            int(syn.n_subjects),
            tuple(int(s) for s in syn.shape),
            int(syn.seed),
            tuple(syn.spacing),
            kind=kind,
        )
    if not data_config.root:
        raise ConfigError(
            f"config field data.root: required for layout {data_config.layout!r} "
            "(--config.data.root=PATH)"
        )
    if not os.path.isdir(data_config.root):
        raise DataError(f"{data_config.root}: dataset folder not found (config field data.root)")
    return data_config.root


def check_headers(cases: list[CaseFiles]) -> list[tuple[int, int, int]]:
    """Header checks of all cases; one DataError listing every bad case."""
    shapes, problems = [], []
    for case in cases:
        try:
            shapes.append(preprocess.check_header(case))
        except DataError as e:
            problems.append(str(e))
    if problems:
        more = f" ({len(problems)} of {len(cases)} cases)" if len(problems) > 1 else ""
        raise DataError(f"bad input{more}:\n" + "\n".join(problems))
    return shapes


def build_cache(
    source: layouts.Source,
    settings: Settings,
    data_config,
    cache_dir: str,
    key: str,
) -> None:
    """Checks and preprocesses every case into the cache folder <cache_dir>/<key>."""
    start = time.time()
    labelled = np.asarray([c.label is not None for c in source.cases], bool)
    parts = splitting.split_cases(source, data_config)
    order = np.concatenate(parts)
    # Only the cases of the split: one left out of a split file may be the broken one.
    shapes = check_headers([source.cases[i] for i in np.sort(order)])
    max_slices = sum(max(shape) for shape in shapes)  # bounds the slices along any axis
    ranges = {}
    channels = len(settings.channel_normalisation or ("image",))
    tally = checks.Tally(source.cases)
    with cache.Builder(cache_dir, key, settings.size, max_slices, channels) as builder:
        # One case at a time, in split order: a process pool was slower on the 2-core machine
        # this was measured on (benchmarks/load_time.py); its results cross pipes as pickles.
        part_of = np.repeat(np.arange(3), [len(p) for p in parts])
        for n_done, (subject, part) in enumerate(zip(order, part_of, strict=True)):
            slices = preprocess.process_case(source.cases[subject], settings)
            preprocess.check_finite_slices(slices, source.cases[subject])
            name = splitting.SPLIT_NAMES[part]
            tally.add(int(subject), name, slices, bool(labelled[subject]))
            ranges.setdefault(name, [builder.n_slices, builder.n_slices])
            builder.add(
                int(subject),
                slices.images,
                slices.labels,
                slices.slice_index,
                slices.spacing,
                slices.labelled,
            )
            ranges[name][1] = builder.n_slices
            if (n_done + 1) % 10 == 0:
                logging.info("preprocessed %d/%d cases", n_done + 1, len(order))
        if builder.n_slices == 0:
            raise DataError(
                f"{source.root}: no slices left after filtering (data.keep_empty_slices=False "
                "and every image slice is empty?)"
            )
        for name, part in zip(splitting.SPLIT_NAMES, parts, strict=True):
            lo, hi = ranges[name]
            if hi == lo:
                raise DataError(
                    f"{source.root}: the {name} split ({len(part)} subjects) is empty after "
                    "filtering slices"
                )
        tally.check(source.root, settings)
        builder.commit(
            {
                "version": cache.CACHE_VERSION,
                "fingerprint": key,
                "root": os.path.abspath(source.root),
                "cases": [c.case_id for c in source.cases],
                "labelled": labelled.tolist(),
                "n_slices": builder.n_slices,
                "ranges": ranges,
                "split": {
                    name: [source.cases[i].case_id for i in part]
                    for name, part in zip(splitting.SPLIT_NAMES, parts, strict=True)
                },
                "class_names": list(source.class_names),
                "channel_names": list(source.channel_names),
                "image_digests": tally.digests,
                "target_slices": tally.target_slices,
                "settings": {
                    k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()
                },
            }
        )
    logging.info(
        "preprocessed %d cases into %d slices in %.1fs (cache %s)",
        len(order),
        builder.n_slices,
        time.time() - start,
        os.path.join(cache_dir, key),
    )


def load_dataset(data_config, folder: str) -> Splits:
    """Reads the configured dataset and returns its train/val/test slice sets.

    Args:
      data_config: config.data.
      folder: where the loader keeps what it derives from the data unless the config says
        otherwise: the slice cache (<folder>/cache, `cache.cache_dir`) and a synthetic cohort
        (`resolve_root`). A run passes its workdir.

    Arrays are read-only memory maps of the cache <cache_dir>/<fingerprint>; the preprocessing
    Settings come with them (`Splits.settings`). Raises DataError (a ValueError) naming the file
    and the problem for bad input, before any training starts.
    """
    validate_data_config(data_config)
    root = resolve_root(data_config, folder)
    source = layouts.find_cases(data_config, root)
    settings = make_settings(data_config, source)
    # Image files after the first (BraTS modalities) come between image and label: with one
    # file per case the list, and so the cache key, is what it always was.
    files = [p for c in source.cases for p in (*c.image_files, c.label) if p is not None]
    files += list(source.extra_files)
    cache_dir = cache.cache_dir(data_config, folder)
    source_digests = digests.SourceDigests(cache_dir)
    key = cache.fingerprint(files, root, data_config, source_digests)
    legacy_key = cache.legacy_fingerprint(files, root, data_config)
    found = cache.read(cache_dir, key) or cache.adopt(cache_dir, legacy_key, key)
    if found is None:
        build_cache(source, settings, data_config, cache_dir, key)
        found = cache.read(cache_dir, key)
        if found is None:
            raise RuntimeError(f"{os.path.join(cache_dir, key)}: cache missing after building it")
    else:
        logging.info("dataset %s: using cache %s", root, os.path.join(cache_dir, key))
    meta, arrays = found

    # Caches written before unlabelled cases existed have every case labelled; those written
    # before classes and channels hold the binary target of one channel, as the source says.
    case_labelled = np.asarray(meta.get("labelled", [True] * len(meta["cases"])), bool)
    class_names = tuple(meta.get("class_names", source.class_names))
    channel_names = tuple(meta.get("channel_names", source.channel_names))

    def part(name: str) -> SliceSet:
        lo, hi = meta["ranges"][name]
        rows = slice(lo, hi)
        subject = np.asarray(arrays["subject"][rows])
        has_label = case_labelled[subject]
        if arrays.get("slice_labelled") is not None:  # unlabelled slices (the ignore label)
            has_label = has_label & arrays["slice_labelled"][rows]
        if name != "train" and not has_label.all():
            # Validation and test measure the labelled slices alone (a copy, not a memmap).
            rows = np.flatnonzero(has_label) + lo
            if not len(rows):
                raise DataError(
                    f"{root}: the {name} split has no labelled slice (every one is the "
                    "dataset's ignore label); label some of its cases' slices or change the split"
                )
            subject, has_label = subject[rows - lo], has_label[rows - lo]
        return SliceSet(
            images=arrays["images"][rows],
            labels=arrays["labels"][rows],
            subject=subject,
            slice_index=np.asarray(arrays["slice_index"][rows]),
            spacing=np.asarray(arrays["spacing"][rows]),
            cases=list(meta["cases"]),
            has_label=has_label,
            class_names=class_names,
            channel_names=channel_names,
        )

    # Caches built before these were kept have neither: nothing to check or warn about.
    checks.check_digests(meta.get("image_digests", {}), source.cases)
    target_slices = meta.get("target_slices")
    splits = Splits(
        part("train"),
        part("val"),
        part("test"),
        key,
        source,
        meta.get("split"),
        target_slices,
        legacy_key,
        settings,
    )
    test_cases = [splits.test.cases[s] for s in np.unique(splits.test.subject)]
    checks.warn_splits(target_slices, test_cases, root)
    source_digests.save()  # once the data has loaded: a failed build leaves the folder as it was
    logging.info(
        "dataset %s: %d subjects, slices train/val/test = %d/%d/%d of %s",
        root,
        len(source.cases),
        len(splits.train),
        len(splits.val),
        len(splits.test),
        splits.train.shape,
    )
    return splits
