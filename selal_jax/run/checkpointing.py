"""Round checkpoints with orbax (the only module that imports it).

Each completed round r is one orbax step holding two items:

* ``state``: the TrainState pytree (parameters, BatchNorm statistics, optimizer state, step);
* ``loop``: JSON with the labelled set after round r's query, the round index, the root key's
  data, the metrics/selection history of every round, the config snapshot and the dataset
  fingerprint.

Orbax writes each step into a temporary folder and renames it when complete, so a crash mid-save
leaves the previous step intact; `latest_round` only sees finished steps. A `read_only`
Checkpointer creates, probes and writes nothing (a finished run on a read-only mount), and state
is restored into abstract targets (`abstract_target`: jax.eval_shape, nothing allocated).
"""

from __future__ import annotations

import contextlib
import json
import logging as std_logging
import os
import shutil

import jax
import orbax.checkpoint as ocp
from absl import logging

from selal_jax.base import atomic, faults
from selal_jax.base.errors import ConfigError, UserError, disk_problem, write_error


class CheckpointError(UserError):
    """A checkpoint could not be written or read; the message names the directory."""


def summary(error: BaseException, limit: int = 300) -> str:
    """'<type>: <first line>' of an orbax/TensorStore error, without the TensorStore spec that
    its message dumps (60 lines of JSON), cut to `limit` characters."""
    text = str(error).split(" See full TensorStore details", 1)[0].strip()
    text = text.splitlines()[0] if text else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    problem = disk_problem(error)
    return (
        f"{problem}: {type(error).__name__}: {text}"
        if problem
        else f"{type(error).__name__}: {text}"
    )


class _OrbaxErrors(std_logging.Filter):
    """Holds back the errors orbax's background threads log (each with its traceback, 350 lines
    for one failed save): the CheckpointError raised for the failure says it once. Held-back
    messages are logged as one warning line each if the operation succeeds after all."""

    def __init__(self):
        super().__init__()
        self.held: list[str] = []

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= std_logging.ERROR and "orbax" in record.pathname:
            self.held.append(record.getMessage().splitlines()[0][:300])
            return False
        return True


@contextlib.contextmanager
def _quiet_orbax():
    """While orbax works: its error logs are held back (`_OrbaxErrors`); raised errors pass."""
    held = _OrbaxErrors()
    absl_logger = std_logging.getLogger("absl")  # absl.logging's records start there
    absl_logger.addFilter(held)
    try:
        yield
    except BaseException:
        held.held.clear()  # the raised error says it
        raise
    finally:
        absl_logger.removeFilter(held)
        for message in held.held:
            logging.warning("orbax reported: %s", message)


# What orbax logs as a warning whenever it opens a folder read-only.
READ_ONLY_NOTICE = "Given directory is read only"


@contextlib.contextmanager
def _without(prefix: str):
    """Drops the log records that start with `prefix` for the `with` block."""

    def keep(record: std_logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefix)

    absl_logger = std_logging.getLogger("absl")
    absl_logger.addFilter(keep)
    try:
        yield
    finally:
        absl_logger.removeFilter(keep)


class Checkpointer:
    """The round checkpoints in `directory` (created unless `read_only`: then nothing there is
    created or written, and `save` is refused by orbax)."""

    def __init__(self, directory: str, keep: int = 2, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        if keep < 1:
            raise ConfigError(f"config field checkpoint.keep: must be >= 1, got {keep}")
        if read_only:  # (orbax warns about any other max_to_keep and save interval)
            options = ocp.CheckpointManagerOptions(
                max_to_keep=None, save_interval_steps=0, create=False, read_only=True
            )
        else:
            options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        try:
            with _without(READ_ONLY_NOTICE):
                self.manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as e:
            raise CheckpointError(
                f"{self.directory}: cannot create the checkpoint directory ({e})"
            ) from e

    def check_writable(self) -> None:
        """Writes and removes a probe file, so that a read-only or full disk is found before a
        round is trained rather than when it is saved."""
        probe = os.path.join(self.directory, f".probe-{os.getpid()}")
        try:
            with open(probe, "wb") as f:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
            os.remove(probe)
        except OSError as e:
            raise CheckpointError(
                f"{self.directory}: the checkpoint folder is not writable ({e}); nothing was "
                "trained. Free space or fix permissions, then run again"
            ) from e

    def latest_round(self) -> int | None:
        return self.manager.latest_step()

    def all_rounds(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def set_aside_after(self, round_index: int, folder: str) -> list[int]:
        """Moves the checkpoints of rounds after `round_index` into `folder` (created; under the
        workdir, on the same file system) and returns those rounds. Moved, not deleted: they
        are deleted (`delete_set_aside`) once the redone round's checkpoint is saved."""
        later = [r for r in self.all_rounds() if r > round_index]
        if not later:
            return []
        try:
            os.makedirs(folder)
            for r in later:
                os.rename(os.path.join(self.directory, str(r)), os.path.join(folder, str(r)))
        except OSError as e:
            raise CheckpointError(
                f"{self.directory}: cannot move the checkpoints of rounds {later} to {folder} ({e})"
            ) from e
        self.manager.reload()  # orbax forgets the moved steps
        return later

    @staticmethod
    def delete_set_aside(root: str, saved_round: int) -> None:
        """After round `saved_round` is saved: deletes each folder of `set_aside_after` under
        `root` whose first round is <= it (those rounds have been redone; a later one came from
        them); `root` goes when empty."""
        if not os.path.isdir(root):
            return
        for name in sorted(os.listdir(root)):
            folder = os.path.join(root, name)
            held = [int(r) for r in os.listdir(folder) if r.isdigit()]
            if not held or min(held) <= saved_round:
                shutil.rmtree(folder, ignore_errors=True)
                logging.info("deleted the discarded checkpoints in %s", folder)
        if not os.listdir(root):
            os.rmdir(root)

    def save(self, round_index: int, state, loop: dict) -> None:
        """Saves round `round_index` and waits until it is on disk."""
        try:
            with _quiet_orbax():
                self.manager.save(
                    round_index,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop)
                    ),
                )
                faults.maybe_kill("save", round_index)  # the write is in flight in the background
                self.manager.wait_until_finished()
        except Exception as e:  # orbax wraps OSError in several types
            raise CheckpointError(
                f"{self.directory}: saving round {round_index} failed ({summary(e)}); "
                f"the previous checkpoint (round {self.latest_round()}) is intact"
            ) from e
        logging.info("saved checkpoint of round %d to %s", round_index, self.directory)

    def restore(self, round_index: int, abstract_state) -> tuple[object, dict]:
        """Restores round `round_index` into the structure of `abstract_state` (from eval_shape)."""
        try:
            restored = self.manager.restore(
                round_index,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:
            raise CheckpointError(
                f"{self.directory}: cannot restore round {round_index} ({summary(e)})"
            ) from e
        return restored["state"], dict(restored["loop"])

    def restore_loop(self, round_index: int) -> dict:
        """Only the JSON loop record of a round (no model state)."""
        try:
            restored = self.manager.restore(
                round_index, args=ocp.args.Composite(loop=ocp.args.JsonRestore())
            )
        except Exception as e:
            raise CheckpointError(
                f"{self.directory}: cannot restore round {round_index}'s record ({summary(e)})"
            ) from e
        return dict(restored["loop"])

    def resume_round(self, wanted: int) -> int:
        """The round a resumed run restores: the latest, or `wanted` (config.resume_from, >= 0).
        Nothing is moved or deleted here: the caller sets the later rounds aside
        (`set_aside_after`) once every check of the resumed run has passed."""
        latest = self.latest_round()
        if wanted < 0 or wanted == latest:
            return latest
        rounds = self.all_rounds()
        if wanted not in rounds:
            raise ConfigError(
                f"config field resume_from: {self.directory} holds no checkpoint of round "
                f"{wanted} (rounds {rounds})"
            )
        return wanted

    def restore_latest(self, round_index: int, abstract_state=None) -> tuple[object, dict]:
        """(state, loop record) of round `round_index`, the newest kept (state None without
        `abstract_state`: the record alone); a damaged checkpoint's error says how to resume
        from the round before it."""
        try:
            if abstract_state is None:
                return None, self.restore_loop(round_index)
            return self.restore(round_index, abstract_state)
        except CheckpointError as e:
            earlier = [r for r in self.all_rounds() if r < round_index]
            how = (
                f"to resume from round {earlier[-1]}, the previous checkpoint, run again with "
                f"--config.resume_from={earlier[-1]} (the later rounds are discarded and redone)"
                if earlier
                else "no earlier checkpoint is kept: start afresh in a new workdir"
            )
            raise CheckpointError(
                f"{e} -- the newest checkpoint, round {round_index}, is damaged; {how}"
            ) from e

    def close(self) -> None:
        with _quiet_orbax():
            self.manager.wait_until_finished()
            self.manager.close()


def close_quietly(closeable, error: BaseException) -> None:
    """Closes after `error` (already propagating): a second error from close() (a full disk
    fails both the save and the wait in close) is logged, not raised, so it cannot mask it."""
    try:
        closeable.close()
    except Exception as e:
        logging.error(
            "closing after %s failed too: %s: %s", type(error).__name__, type(e).__name__, e
        )


def abstract_target(make, sharding: jax.sharding.Sharding):
    """The restore target orbax needs: ShapeDtypeStructs of the pytree `make()` returns, from
    `jax.eval_shape` (nothing is computed or allocated), each leaf placed with `sharding`.

    The sharding is the run's (one device, or replicated over its mesh: see
    `core.parallel.state_sharding`), so orbax restores onto the run's devices whatever devices
    wrote the checkpoint (a run saved on 8 devices or several hosts resumes on 1).
    """
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
        jax.eval_shape(make),
    )


def write_json_atomic(path: str, obj, lines: bool = False) -> None:
    """Writes JSON (or JSON lines from a list) atomically (see `selal_jax.base.atomic`); a failed
    write is a UserError naming the folder, the old file intact.

    In a multi-host run only process 0 writes (all processes hold the same records); the others
    return without writing.
    """
    if jax.process_index() != 0:
        return
    try:
        with atomic.atomic_open(path, "w") as f:
            if lines:
                for item in obj:
                    f.write(json.dumps(item) + "\n")
            else:
                json.dump(obj, f, indent=2)
    except OSError as e:  # a full or read-only disk: the old file is intact
        raise write_error(e, os.path.dirname(os.path.abspath(path)), os.path.basename(path)) from e
