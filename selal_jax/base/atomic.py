"""Atomic file writes: a temporary file in the same folder, fsync, then rename into place.

A crash or an error leaves either the old file or the new one, never a half-written one (and no
temporary file behind, except after a hard kill, where a `.tmp-*` file is left and never read).

Temporary names carry their owner (`owner_tag`: the process id and a hash of the host name), so
that a later process can tell a dead writer's leftovers from a live one's: `remove_stale`
removes those of processes gone from this host, and any older than STALE_AGE_S (other hosts,
names without an owner).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time

STALE_AGE_S = 24 * 3600  # a temporary entry this old is stale whoever made it
_OWNER = re.compile(r"pid(\d+)h([0-9a-f]{8})")


def _host() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def owner_tag() -> str:
    """'pid<pid>h<host hash>-': what a temporary name holds after its prefix."""
    return f"pid{os.getpid()}h{_host()}-"


def umask() -> int:
    """The process's file-creation mask (read, not changed: /proc/self/status on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it
    os.umask(mask)
    return mask


def temporary_folder(parent: str, prefix: str) -> str:
    """`tempfile.mkdtemp` with the mode `os.mkdir` would give (mkdtemp's is 0700 whatever the
    umask: a folder renamed into place must be as readable as any other the run writes)."""
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def remove_stale(parent: str, prefix: str = ".tmp-") -> list[str]:
    """Removes the entries of `parent` named `prefix`... whose owner process is gone from this
    host, or that are older than STALE_AGE_S; returns their names. Live owners' entries (a
    concurrent build) are kept; a missing `parent` is nothing to do."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return []
    removed, host, now = [], _host(), time.time()
    for name in names:
        path = os.path.join(parent, name)
        owner = _OWNER.match(name, len(prefix)) or _OWNER.search(name)
        try:
            old = now - os.lstat(path).st_mtime > STALE_AGE_S
        except OSError:
            continue
        dead = owner is not None and owner.group(2) == host and _gone(int(owner.group(1)))
        if not (dead or old):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
        removed.append(name)
    return removed


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w"):
    """`with atomic_open(path, "wb") as f: ...` writes `path` atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]  # np.save/np.savez keep a name's own extension
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + owner_tag(), suffix=suffix, dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # open()'s mode, not mkstemp's 0600
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_folder(path: str, prefix: str = ".tmp-", replace: bool = False):
    """`with atomic_folder(path) as tmp: ...` fills a temporary sibling folder and renames it to
    `path` when the block succeeds; on an error the temporary folder is removed and `path` is
    left as it was. Stale temporary folders of the same prefix (`remove_stale`) go first. An existing empty `path` is replaced; a non-empty one only with `replace`
    (an incomplete earlier attempt), else os.rmdir refuses it."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    remove_stale(parent, prefix)  # a killed earlier attempt's
    tmp = temporary_folder(parent, prefix + owner_tag())
    try:
        yield tmp
        if os.path.isdir(path):
            shutil.rmtree(path) if replace else os.rmdir(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
