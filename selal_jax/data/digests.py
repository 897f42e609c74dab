"""Content digests (SHA-256) of a dataset's source files, remembered by size and mtime.

The slice cache's key and a run's dataset fingerprint hash what the files hold, so a copy of
the dataset (`cp -r`, which gives every file a new mtime) neither rebuilds the cache nor blocks a
resume, while a changed file does. Hashing every file on every start would read the whole
dataset (tens of GB for BraTS); `SourceDigests` keeps each file's digest in an index,
<cache_dir>/.source_digests.json, with the file's size and mtime: a file whose size and mtime
match its entry is not read again (a stat, as before), only a new, moved, copied or touched one
is hashed, once.
"""

from __future__ import annotations

import hashlib
import json
import os

from absl import logging

from selal_jax.base import atomic

INDEX_FILE = ".source_digests.json"
_CHUNK = 1 << 20


def sha256_file(path: str) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class SourceDigests:
    """`digests(path)` -> the file's SHA-256, from the index when its size and mtime match.

    Entries are keyed by the file's real path: {path: [size, mtime_ns, sha256]}. `save` writes
    the index back (atomically) when a file was hashed; an unreadable index is started afresh, an
    unwritable one is logged (the digests are then computed again at the next start).
    """

    def __init__(self, folder: str):
        self.path = os.path.join(folder, INDEX_FILE)
        self.entries: dict[str, list] = {}
        self.hashed = 0  # files read this time
        try:
            with open(self.path) as f:
                loaded = json.load(f)
            if isinstance(loaded, dict):
                self.entries = loaded
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            logging.warning("%s: unreadable digest index, starting afresh (%s)", self.path, e)

    def __call__(self, path: str) -> str:
        st = os.stat(path)
        key = os.path.realpath(path)
        entry = self.entries.get(key)
        if isinstance(entry, list) and entry[:2] == [st.st_size, st.st_mtime_ns]:
            return entry[2]
        digest = sha256_file(path)
        self.entries[key] = [st.st_size, st.st_mtime_ns, digest]
        self.hashed += 1
        return digest

    def save(self) -> None:
        if not self.hashed:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with atomic.atomic_open(self.path, "w") as f:
                json.dump(self.entries, f)
        except OSError as e:
            logging.warning(
                "%s: cannot write the digest index (%s); the %d files hashed now are hashed "
                "again at the next start",
                self.path,
                e,
                self.hashed,
            )
