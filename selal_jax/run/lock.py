"""One process at a time per workdir: an exclusive advisory lock on <workdir>/.lock.

`hold(workdir)` takes `fcntl.flock(LOCK_EX | LOCK_NB)` on the lock file for the life of a run,
a sweep, a query export or a label import, and writes the holder's pid and host into it (text,
for the message a second process gets). A second process is refused at once (`LockedError`).
The kernel releases a flock when its holder dies, however it dies, so a stale lock file (left by
a killed run) never blocks: the next process simply takes the lock.

Re-entrant within a process: a verb that calls another verb on the same workdir (an import that
opens the run) counts up instead of locking twice (two flocks of one process on two
open descriptions of one file would refuse each other). Nested workdirs (a sweep's runs) are
other folders with their own lock: the sweep holds its folder's lock, each run its own.

Multi-host: only process 0 takes the lock (the others follow it in lockstep and write nothing
of their own); the workdir is one shared folder, and flock across hosts is only as good as the
shared file system's support for it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket

from absl import logging

from selal_jax.base import atomic
from selal_jax.base.errors import UserError, write_error

LOCK_FILE = ".lock"


class LockedError(UserError):
    """Another process holds the workdir; the message names the workdir and the holder."""


class WorkdirError(UserError):
    """The workdir is a file, or a verb that needs an existing run found no folder."""


_held: dict[str, list] = {}  # realpath of workdir -> [open lock file, depth]


def _is_primary() -> bool:
    import jax  # the lock module itself stays importable without initialising a backend

    return jax.process_index() == 0


def check_workdir(workdir: str, create: bool) -> None:
    """Refuses a workdir that is a file, or (create=False) one that does not exist."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"{workdir}: is a file, not a folder (--workdir)")
    if not create and not os.path.isdir(workdir):
        raise WorkdirError(f"{workdir}: no such run folder (--workdir); nothing was created")


# What opening the lock file of a folder that cannot be written raises.
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _acquire(workdir: str, read_only: bool = False):
    """The open, locked lock file; None for a `read_only` verb in a folder it cannot write."""
    path = os.path.join(workdir, LOCK_FILE)
    try:
        f = open(path, "a+")  # never truncate: the holder's pid/host stay readable
    except OSError as e:  # a read-only mount, permissions, a full disk
        if read_only and e.errno in _NOT_WRITABLE:
            logging.info("%s: not writable (%s); read without its lock", workdir, e.strerror)
            return None
        raise write_error(e, workdir, f"its lock file {LOCK_FILE}") from e
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown holder"
        f.close()
        raise LockedError(
            f"{workdir}: in use by another process ({holder}); wait for it to finish or use "
            "another workdir"
        ) from None
    except BaseException:
        f.close()
        raise
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
    f.flush()
    return f


@contextlib.contextmanager
def hold(workdir: str, create: bool = True, read_only: bool = False):
    """Holds the workdir's lock for the `with` block (creating the folder if `create`; else a
    missing folder is left missing and not locked). A `read_only` verb (it writes nothing
    there: `query`) reads a folder it cannot write, a read-only mount, without the lock."""
    check_workdir(workdir, create=True)  # a file is refused here; a missing folder ...
    if not _is_primary() or not (create or os.path.isdir(workdir)):
        yield  # ... is not created: the verb finds no run there and says so
        return
    if create:
        try:
            os.makedirs(workdir, exist_ok=True)
        except OSError as e:
            raise write_error(e, os.path.dirname(os.path.abspath(workdir)), "the workdir") from e
    key = os.path.realpath(workdir)
    if key in _held:
        _held[key][1] += 1
    else:
        f = _acquire(workdir, read_only)
        if f is None:
            yield
            return
        _held[key] = [f, 1]
        atomic.remove_stale(workdir)  # the holder owns the folder: a killed write's leftovers
    try:
        yield
    finally:
        entry = _held[key]
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            entry[0].close()  # closing the last descriptor releases the flock
