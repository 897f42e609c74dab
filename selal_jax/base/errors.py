"""Expected failures: the one exception type the entry points print as a single line.

`UserError` is what a run raises for bad input, config, data, a workdir or checkpoint it cannot
use, a held lock, a full or read-only disk, or bad flags: the message names the file, the folder
or the field and says what to do. `launch.py` and `python -m selal_jax.bench` print it as
`error: <message>` and exit with status 1, without a traceback (`--verbose` or
SELAL_JAX_TRACEBACK=1 brings it back). Every other exception, a plain ValueError included, is a
bug and keeps its traceback.

UserError is a ValueError, so callers that caught ValueError for a bad config still do. The
package's other expected types derive from it: `ConfigError` and `DataError` here,
`CheckpointError`, `LockedError`/`WorkdirError`, `ExportError`,
`AnnotationError`, `LabelStoreError` and `TrainingDivergedError`.

This module imports nothing of the package: every layer can raise these.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback


class UserError(ValueError):
    """An expected failure; the message names the file, folder or field and the problem."""


class ConfigError(UserError):
    """A config field (or a flag) holds a value that cannot work; the message names it."""


class DataError(UserError):
    """Bad input data; the message names the file and the problem (raised by every data
    module; data/volumes.py re-exports it, where callers have always found it)."""


# errno -> what a person reads, for the failures of writing to a disk.
_DISK_PROBLEMS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def disk_problem(error: BaseException) -> str | None:
    """'the disk is full', 'the file system is read-only', ... for an OSError of a write (also
    found as the cause or context of a wrapping exception, as orbax raises them); else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_PROBLEMS:
            return _DISK_PROBLEMS[error.errno]
        error = error.__cause__ or error.__context__
    return None


def write_error(error: BaseException, folder: str, what: str) -> UserError:
    """The UserError of a failed write of `what` into `folder`: names the folder and, where the
    OSError says so, the cause (a full disk, a read-only file system, permissions)."""
    problem = disk_problem(error) or f"{type(error).__name__}: {error}"
    return UserError(
        f"{os.path.abspath(folder)}: cannot write {what} ({problem}); free space or fix "
        "permissions, or use another folder"
    )


def traceback_wanted(verbose: bool) -> bool:
    """Whether an expected failure prints its traceback too (--verbose, SELAL_JAX_TRACEBACK=1)."""
    return bool(verbose) or os.environ.get("SELAL_JAX_TRACEBACK") == "1"


def exit_with_message(error: BaseException, verbose: bool = False, flush=()) -> None:
    """Prints `error: <message>` (after its traceback with `verbose`) and ends the process now.

    os._exit skips atexit and the interpreter's wait for non-daemon threads: after a failed save,
    orbax's background threads would otherwise keep the process alive for their 300 s timeout.
    Whatever those threads print or log from here on is dropped, so the message stays the last
    line. `flush`: callables run first (the absl log handler), as os._exit flushes nothing.
    """
    import logging

    for f in flush:
        f()
    sys.stdout.flush()
    stderr = sys.stderr
    logging.disable(logging.CRITICAL)
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (open until os._exit)
    if traceback_wanted(verbose):
        traceback.print_exception(error, file=stderr)
    print(f"error: {error}", file=stderr, flush=True)
    os._exit(1)
