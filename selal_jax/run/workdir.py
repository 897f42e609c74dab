"""The run folder: every file and folder name, the checkpointed loop record, the stored config,
and the one compatibility check used by resuming a run and by sharing a round-0 model.

A run folder (`loop.run`, `launch.py run`):
  checkpoints/<r>/          orbax, one per round: the model state and the LoopRecord (JSON)
  discarded/<time>-rounds-<a>[-<b>]/<r>/  resume_from: the later rounds' checkpoints, moved
                            aside and deleted once the first of them is saved again
  records.jsonl             one JSON record per round (rebuilt from the checkpoint if missing)
  metrics.jsonl             per round and epoch: train and validation loss (`run.fit.fit`)
  evaluation/round_<r>.csv  per-case metrics of round r's model (eval.cases)
  annotations/round_<r>.npz al.annotator = human: the imported labels, at data.size and at the
                            source resolution (`label_store`)
  queries/round_<r>/        `launch.py query`: the export for the annotator (query.csv/.json,
                            labels/<case>.nii.gz)
  cache/<fingerprint>/      the slice cache (unless data.cache_dir)
  report/                   `launch.py report`
  .lock                     held while a verb uses the folder (`selal_jax.run.lock`)

A sweep folder (`sweep.run`):
  supervised/supervised.json            the supervised baseline
  seed-<s>/round0/model/                round 0 of seed s (orbax), trained once, shared by its runs
  seed-<s>/round0/pool_embeddings.npz   round 0's pool embeddings (t-SNE maps)
  seed-<s>/<strategy>-<mode>/           one run folder, starting from round 0's model
  config.json                           the sweep's config, flattened (`write_sweep_config`)
  report/, cache/, the synthetic cohort

Which config fields may differ between a run and its resumption (or a shared round 0), and the
values of fields added since a run was stored: `selal_jax.base.schema`.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from absl import logging
from ml_collections import config_dict

from selal_jax.base import schema
from selal_jax.base.errors import UserError
from selal_jax.data import cache
from selal_jax.run import checkpointing, lock

CHECKPOINTS_DIR = "checkpoints"
DISCARDED_DIR = "discarded"  # resume_from: later rounds' checkpoints, until they are redone
RECORDS_FILE = "records.jsonl"
METRICS_FILE = "metrics.jsonl"
SUPERVISED_FILE = "supervised.json"
EMBEDDINGS_FILE = "pool_embeddings.npz"
EVALUATION_DIR = "evaluation"
ANNOTATIONS_DIR = "annotations"
QUERIES_DIR = "queries"
CACHE_DIR = cache.CACHE_DIR  # the slice cache (`data.cache.cache_dir`)
REPORT_DIR = "report"
SWEEP_CONFIG_FILE = "config.json"  # a sweep folder's config (`write_sweep_config`)
SUPERVISED_DIR = "supervised"
ROUND0_DIR = "round0"
ROUND0_MODEL_DIR = "model"  # seed-<s>/round0/model/: the shared round 0's orbax checkpoint
# Sweeps written before kept round 0's checkpoint in seed-<s>/round0/round0/.
ROUND0_LEGACY_CHECKPOINTS = "round0"


def seed_dir(sweep_dir: str, seed) -> str:
    """seed-<seed> in a sweep folder (seed "*": the glob of all of them)."""
    return os.path.join(sweep_dir, f"seed-{seed}")


def round0_checkpoints(round0_dir: str) -> str:
    """Round 0's checkpoint folder of a sweep seed (the older name where it exists). Not
    checkpoints/: round0/ is no run folder, and a run started there must not find it."""
    legacy = os.path.join(round0_dir, ROUND0_LEGACY_CHECKPOINTS)
    return legacy if os.path.isdir(legacy) else os.path.join(round0_dir, ROUND0_MODEL_DIR)


@dataclasses.dataclass
class LoopRecord:
    """What a round's checkpoint stores beside the model state (as JSON).

    `history` holds the records of rounds 0..round; `config` the flattened config the run was
    started with; `fingerprint` the dataset's. A human-annotator run adds the round whose query
    awaits labels and the SHA-256 of each imported round's annotation file.
    """

    round: int
    labelled_ids: list[int]
    history: list[dict]
    config: dict
    fingerprint: str
    root_key: list[int]
    pool_size: int
    awaiting_labels: int | None = None
    annotations: dict[str, str] | None = None

    @classmethod
    def from_json(cls, loop: dict, where: str = "loop record") -> LoopRecord:
        """The record of a checkpoint's JSON; `where` (the checkpoint) names it in the error
        when a field is missing."""
        fields = dataclasses.fields(cls)
        missing = [
            f.name for f in fields if f.default is dataclasses.MISSING and f.name not in loop
        ]
        if missing:
            raise checkpointing.CheckpointError(
                f"{where}: the checkpoint's loop record lacks the fields {missing}"
            )
        names = {f.name for f in fields}
        return cls(**{k: v for k, v in loop.items() if k in names})

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        if self.annotations is None:  # a simulated run: the fields it has always stored
            del out["awaiting_labels"], out["annotations"]
        return out


def key_data(key) -> list[int]:
    """A typed JAX key as the JSON list of its words (the root key in the LoopRecord)."""
    return [int(x) for x in np.asarray(jax.random.key_data(key)).ravel()]


def check_compatible(
    stored_config: dict,
    stored_fingerprint: str,
    config: dict,
    fingerprint: str,
    *,
    where: str,
    neutral: tuple[str, ...] = (),
    allow_change: bool = False,
    legacy_fingerprint: str | None = None,
) -> None:
    """Refuses to continue from a checkpoint written with another config or dataset.

    `where` names the folder in the message; `neutral` lists further fields that may differ
    (schema.ROUND0_NEUTRAL_KEYS for a shared round 0). The dataset is the same when the stored
    fingerprint is today's (its files' contents) or, for runs stored before contents were
    hashed, `legacy_fingerprint` (sizes and mtimes). A moved or copied dataset (the same
    contents at a new data.root, whatever their mtimes) is accepted. With `allow_change`
    nothing is refused.
    """
    same_data = stored_fingerprint in (fingerprint, legacy_fingerprint)
    roots = stored_config.get("data.root"), config.get("data.root")
    changed = [
        k
        for k in schema.differences(stored_config, config)
        if k not in neutral and k != "data.root"
    ]
    if roots[0] != roots[1] and same_data:
        logging.info("dataset moved from %s to %s (same files)", *roots)
    if allow_change:
        return
    if changed:
        details = ", ".join(f"{k}: {stored_config.get(k)!r} -> {config.get(k)!r}" for k in changed)
        raise UserError(
            f"{where}: the config differs from the one this run was started with ({details}); "
            "use a new workdir or pass --config.allow_config_change=True"
        )
    if not same_data:
        moved = (
            f" (and data.root moved from {roots[0]} to {roots[1]})" if roots[0] != roots[1] else ""
        )
        raise UserError(
            f"{where}: the dataset changed since this run was started{moved}: fingerprint "
            f"{stored_fingerprint} -> {fingerprint}, its files' names, sizes or contents, or "
            "the preprocessing, differ; use a new workdir or pass "
            "--config.allow_config_change=True"
        )


def has_checkpoint(workdir: str) -> bool:
    """Whether the run in `workdir` has a finished checkpoint (orbax's view: an interrupted
    save's temporary folder is none)."""
    directory = os.path.join(workdir, CHECKPOINTS_DIR)
    if not os.path.isdir(directory):
        return False
    ckpt = checkpointing.Checkpointer(directory, read_only=True)
    try:
        return ckpt.latest_round() is not None
    finally:
        ckpt.close()


def stored_config(workdir: str, required: bool = True) -> config_dict.ConfigDict | None:
    """The config the run or sweep in `workdir` was last started with: a run's from its latest
    checkpoint, a sweep's from its config.json (`write_sweep_config`). The one-shot fields
    (schema.ONE_SHOT_KEYS) are at their defaults: they act on the command that gives them.

    A folder with neither: None, or (`required`) a UserError; a mistyped --workdir is never
    created.
    """
    if not required and not os.path.isdir(workdir):
        return None
    lock.check_workdir(workdir, create=False)
    sweep_file = os.path.join(workdir, SWEEP_CONFIG_FILE)
    if has_checkpoint(workdir):
        ckpt = checkpointing.Checkpointer(os.path.join(workdir, CHECKPOINTS_DIR), read_only=True)
        try:
            flat = ckpt.restore_loop(ckpt.latest_round())["config"]
        finally:
            ckpt.close()
    elif os.path.isfile(sweep_file):
        with open(sweep_file) as f:
            flat = json.load(f)
    elif required:
        raise UserError(f"{workdir}: no checkpoint (run the experiment first)")
    else:
        return None
    return schema.unflatten({**flat, **schema.ONE_SHOT_KEYS})


def write_sweep_config(workdir: str, config) -> None:
    """<workdir>/config.json: the config a sweep was started with (flattened), atomically."""
    checkpointing.write_json_atomic(
        os.path.join(workdir, SWEEP_CONFIG_FILE), schema.flatten(config)
    )


# The record fields a report reads from every round (others are optional).
RECORD_FIELDS = ("round", "strategy", "mode", "n_labelled", "pct_labelled", "dice", "dice_global")


def read_records(path: str) -> list[dict]:
    """The records of a records.jsonl file, one JSON object per line; a line that is not one
    (garbled, truncated, not text), then one that lacks a field of RECORD_FIELDS, is a
    UserError naming the file and the line."""
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a records file (not UTF-8 text: {e})") from e
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e})") from e
    numbered = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            numbered.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {number} is not valid JSON ({e})") from e
    for number, record in numbered:
        if not isinstance(record, dict):
            raise UserError(
                f"{path}: line {number} is not a record (a JSON object), got "
                f"{type(record).__name__}"
            )
        missing = [k for k in RECORD_FIELDS if k not in record]
        if missing:
            raise UserError(f"{path}: line {number}: the record lacks the fields {missing}")
        records.append(record)
    return records


def write_records(workdir: str, history: list[dict]) -> None:
    """<workdir>/records.jsonl: one JSON line per round, written atomically."""
    checkpointing.write_json_atomic(os.path.join(workdir, RECORDS_FILE), history, lines=True)


def write_epoch_metrics(workdir: str, round_index: int, history: list[dict]) -> None:
    """Round `round_index`'s per-epoch losses into <workdir>/metrics.jsonl (atomically), in place
    of any lines of this or later rounds (a round redone after an interruption)."""
    path = os.path.join(workdir, METRICS_FILE)
    kept = []
    if os.path.exists(path):
        with open(path) as f:
            kept = [json.loads(line) for line in f if line.strip()]
        kept = [m for m in kept if m["round"] < round_index]
    rows = kept + [{"round": round_index, **epoch} for epoch in history]
    checkpointing.write_json_atomic(path, rows, lines=True)


def sync_records(workdir: str, history: list[dict]) -> None:
    """records.jsonl from the checkpoint's history when it is missing or out of step (a
    deleted file, or one behind or ahead of the restored round)."""
    path = os.path.join(workdir, RECORDS_FILE)
    if os.path.exists(path):
        with open(path) as f:
            if sum(1 for line in f if line.strip()) == len(history):
                return
    logging.warning("%s: rebuilt from the checkpoint's %d rounds", path, len(history))
    write_records(workdir, history)
