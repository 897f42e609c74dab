"""Cache of preprocessed slices: memory-mapped .npy files under <cache_dir>/<fingerprint>/.

The fingerprint hashes the source files' relative paths, sizes and contents and the
preprocessing config (the config.data fields the configured layout reads); the contents' digests
are remembered by size and mtime (`digests.SourceDigests`), so reading a cache costs a few stats
and no voxel reads, and a copy of the dataset with new mtimes is hashed once and finds its
cache. A cache is built in a temporary
sibling folder and renamed into place once complete: an interrupted build leaves no cache behind
(a killed process can leave a `.tmp-*` folder, which is never read and is removed by the next
build once its process is gone: `atomic.remove_stale`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil

import numpy as np
from absl import logging

from selal_jax.base import atomic, schema
from selal_jax.base.errors import DataError, write_error
from selal_jax.data import digests

# Bump when the cached content or format changes: old caches are then ignored.
CACHE_VERSION = 1
# config.data fields that do not change the preprocessed slices. (A dataset that loads both with
# and without allow_unlabelled has every case labelled: the same slices either way.)
NEUTRAL_FIELDS = ("root", "cache_dir", "allow_unlabelled")
# config.data fields added after caches were written, with their default value (the project's
# one table, schema.ADDED_KEYS): at that value they are left out of the hash, so that existing
# caches (and resumable runs) keep their key; any other value is hashed like every other field.
# Dotted names reach into sub-sections.
ADDED_FIELDS = {k[len("data.") :]: v for k, v in schema.ADDED_KEYS.items() if k.startswith("data.")}
ARRAYS = ("images", "labels", "subject", "slice_index", "spacing")
# Arrays that caches written before them lack: read when present, else None.
OPTIONAL_ARRAYS = ("slice_labelled",)  # [N] bool, False: an unlabelled slice (ignore label)
META_FILE = "meta.json"
CACHE_DIR = "cache"  # the cache's folder under the folder a loader is given, unless data.cache_dir


def cache_dir(data_config, folder: str) -> str:
    """Where the slice cache of `data_config` lives: data.cache_dir, else <folder>/cache (folder:
    the one `loading.load_dataset` is given, a run's workdir)."""
    return data_config.cache_dir or os.path.join(folder, CACHE_DIR)


def fingerprint(source_files: list[str], root: str, data_config, digest=None) -> str:
    """Hash of the files' paths (relative to root), sizes and contents and of the data config
    fields the configured layout reads (`schema.LAYOUT_FIELDS`: another layout's field is hashed
    at its default).

    Args:
      digest: path -> the file's SHA-256 (`digests.SourceDigests`, which reads a file only when
        its size or mtime changed); default: read every file.
    """
    digest = digest or digests.sha256_file
    return _key(
        [f"{_rel(p, root)}:{os.path.getsize(p)}:{digest(p)};" for p in source_files], data_config
    )


def legacy_fingerprint(source_files: list[str], root: str, data_config) -> str:
    """The key caches and runs had before it hashed contents: sizes and mtimes instead. A cache
    under it is adopted (`adopt`), a run that stored it resumes (`workdir.check_compatible`)."""
    files = []
    for path in source_files:
        st = os.stat(path)
        files.append(f"{_rel(path, root)}:{st.st_size}:{st.st_mtime_ns};")
    return _key(files, data_config)


def _rel(path: str, root: str) -> str:
    return os.path.relpath(path, root)


def _key(files: list[str], data_config) -> str:
    h = hashlib.sha256(f"selal-jax slice cache v{CACHE_VERSION};".encode())
    for entry in files:
        h.update(entry.encode())
    settings = {k: v for k, v in data_config.to_dict().items() if k not in NEUTRAL_FIELDS}
    for name, (default, readers) in schema.LAYOUT_FIELDS.items():
        if settings.get("layout") in readers:
            continue
        *parents, leaf = name.split(".")
        node = settings
        for p in parents:
            node = node.get(p, {})
        if leaf in node:
            node[leaf] = default
    for name, default in ADDED_FIELDS.items():
        *parents, leaf = name.split(".")
        node = settings
        for p in parents:
            node = node.get(p, {})
        if leaf in node and _plain(node[leaf]) == _plain(default):
            del node[leaf]
    if settings.get("split_file") is not None:
        # By content: editing the split file invalidates the cache, moving it does not.
        settings["split_file"] = "sha256:" + file_digest(settings["split_file"], "data.split_file")
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def file_digest(path: str, field: str) -> str:
    """SHA-256 of a file's bytes; a missing or unreadable file is a DataError naming the field."""
    try:
        return digests.sha256_file(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read it (config field {field}): {e}") from e


def _plain(value):
    """Tuples as lists: a config read back from JSON holds lists where get_config had tuples."""
    return list(value) if isinstance(value, tuple) else value


class NpyAppender:
    """Writes an .npy file of [n, *row_shape] rows appended in order, n unknown in advance.

    The header is reserved for `max_rows` and rewritten with the final row count on close, padded
    to the same length, so the file is written once, sequentially.
    """

    def __init__(self, path: str, row_shape: tuple[int, ...], dtype, max_rows: int):
        self.path, self.row_shape, self.dtype = path, tuple(row_shape), np.dtype(dtype)
        self.rows = 0
        self.header_len = len(self._header(max_rows))
        self.file = open(path, "wb")
        self.file.write(b"\0" * self.header_len)

    def _header(self, rows: int, pad_to: int | None = None) -> bytes:
        d = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (rows, *self.row_shape),
        }
        text = repr(d).encode("latin1")
        # magic (6) + version (2) + header length (2) + text + padding + '\n', 64-byte aligned
        total = pad_to or -(-(10 + len(text) + 1) // 64) * 64
        text = text + b" " * (total - 10 - len(text) - 1) + b"\n"
        return np.lib.format.magic(1, 0) + np.uint16(len(text)).tobytes() + text

    def append(self, rows: np.ndarray) -> None:
        if rows.shape[1:] != self.row_shape:
            raise ValueError(
                f"{self.path}: rows of shape {rows.shape[1:]}, expected {self.row_shape}"
            )
        self.file.write(np.ascontiguousarray(rows, self.dtype).data)  # no copy if contiguous
        self.rows += len(rows)

    def close(self) -> None:
        self.file.seek(0)
        self.file.write(self._header(self.rows, pad_to=self.header_len))
        self.file.close()


class Builder:
    """Writes a cache folder atomically: use as a context manager, then `commit(meta)`.

    Cases are appended in order; on an exception the temporary folder is removed.
    """

    def __init__(
        self, cache_dir: str, key: str, size: tuple[int, int], max_slices: int, channels: int = 1
    ):
        self.cache_dir, self.final = cache_dir, os.path.join(cache_dir, key)
        self.tmp = None
        with self._writing():
            os.makedirs(cache_dir, exist_ok=True)
            atomic.remove_stale(cache_dir)  # what killed builds and writes left behind
            self.tmp = atomic.temporary_folder(cache_dir, f".tmp-{key}-{atomic.owner_tag()}")
            H, W = size
            # One channel: [N, H, W] images as always; K >= 2: [N, H, W, K].
            row = (H, W) if channels == 1 else (H, W, channels)
            self.images = NpyAppender(
                os.path.join(self.tmp, "images.npy"), row, np.float32, max_slices
            )
            self.labels = NpyAppender(
                os.path.join(self.tmp, "labels.npy"), (H, W), np.uint8, max_slices
            )
        self.subject, self.slice_index, self.spacing, self.slice_labelled = [], [], [], []

    @contextlib.contextmanager
    def _writing(self):
        """A failed write (a full disk, a read-only folder) is a UserError naming the cache
        folder; the temporary folder is removed."""
        try:
            yield
        except OSError as e:
            self._remove_tmp()
            raise write_error(e, self.cache_dir, "the slice cache") from e

    def _remove_tmp(self) -> None:
        for appender in (getattr(self, "images", None), getattr(self, "labels", None)):
            if appender is not None and not appender.file.closed:
                appender.file.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def add(self, subject: int, images, labels, slice_index, spacing, labelled=None) -> None:
        """Appends one case's n slices; `labelled`: [n] bool, None = all labelled."""
        with self._writing():
            self.images.append(images)
            self.labels.append(labels)
        self.slice_labelled.append(np.ones(len(images), bool) if labelled is None else labelled)
        self.subject.append(np.full(len(images), subject, np.int32))
        self.slice_index.append(np.asarray(slice_index, np.int32))
        self.spacing.append(np.tile(np.asarray(spacing, np.float32), (len(images), 1)))

    @property
    def n_slices(self) -> int:
        return self.images.rows

    def commit(self, meta: dict) -> str:
        with self._writing():
            return self._commit(meta)

    def _commit(self, meta: dict) -> str:
        self.images.close()
        self.labels.close()
        for name, parts, empty in (
            ("subject", self.subject, (0,)),
            ("slice_index", self.slice_index, (0,)),
            ("spacing", self.spacing, (0, 3)),
            ("slice_labelled", self.slice_labelled, (0,)),
        ):
            array = np.concatenate(parts) if parts else np.zeros(empty)
            np.save(os.path.join(self.tmp, f"{name}.npy"), array)
        with open(os.path.join(self.tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)
        for name in os.listdir(self.tmp):
            with open(os.path.join(self.tmp, name), "rb") as f:
                os.fsync(f.fileno())
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            # Another process built the same cache meanwhile; its copy is as good as ours.
            if not os.path.isfile(os.path.join(self.final, META_FILE)):
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.final

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._remove_tmp()
        return False


def adopt(cache_dir: str, legacy_key: str, key: str) -> tuple[dict, dict] | None:
    """A cache built under the `legacy_fingerprint` of the same files (sizes and mtimes as
    they are now), renamed to `key` and read; None if there is none."""
    legacy = os.path.join(cache_dir, legacy_key)
    if legacy_key == key or not os.path.isfile(os.path.join(legacy, META_FILE)):
        return None
    try:
        os.rename(legacy, os.path.join(cache_dir, key))
    except OSError as e:  # another process adopted it meanwhile, or a read-only cache
        logging.info("%s: not renamed to %s (%s)", legacy, key, e)
        return read(cache_dir, key) or read(cache_dir, legacy_key)
    logging.info("%s: renamed to %s (the key now hashes the files' contents)", legacy, key)
    return read(cache_dir, key)


def read(cache_dir: str, key: str) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(meta, arrays memory-mapped read-only) of a complete cache, or None if there is none."""
    folder = os.path.join(cache_dir, key)
    meta_path = os.path.join(folder, META_FILE)
    if not os.path.isfile(meta_path):
        return None
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        arrays = {
            name: np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r") for name in ARRAYS
        }
        for name in OPTIONAL_ARRAYS:
            path = os.path.join(folder, f"{name}.npy")
            arrays[name] = np.load(path) if os.path.isfile(path) else None
        n = meta["n_slices"]
        lengths = [len(a) for a in arrays.values() if a is not None]
        if meta.get("version") != CACHE_VERSION or any(length != n for length in lengths):
            raise ValueError(f"inconsistent cache (meta says {n} slices)")
    except (OSError, ValueError, KeyError) as e:
        logging.warning("%s: unreadable cache, rebuilding it (%s)", folder, e)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return meta, arrays
