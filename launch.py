"""Entry point: flags -> config -> selal_jax.<verb>.run(config, workdir).

  python launch.py --config=configs/default.py --workdir=runs/demo          # run (default verb)
  python launch.py sweep --config=configs/default.py --workdir=runs/sweep    # strategies x seeds
  python launch.py supervised --config=configs/default.py --workdir=runs/sup # baseline only
  python launch.py report --workdir=runs/sweep [--baseline=0.77] [--reference=random:all]
      [--gallery_round=R] [--out=DIR]
  python launch.py inspect --config=... [--workdir=DIR] [--json]              # data dry run

An existing run or sweep continues with the config it was started with: --workdir alone is
enough, and --config.X=... given without --config changes that stored config (checked as any
change is: resume-neutral fields only, unless --config.allow_config_change=True).
  python launch.py --workdir=runs/demo                                       # continue a run
  python launch.py sweep --workdir=runs/sweep                                # continue a sweep

With --config.al.annotator=human, each round stops after its query; then
  python launch.py query --workdir=runs/mine [--out=DIR]
  python launch.py import-labels --workdir=runs/mine --labels=DIR
  python launch.py --workdir=runs/mine                                      # the next round

The labelled set as an nnU-Net v2 raw dataset (the labelled slices at the source resolution,
classes 1..C, the rest nnU-Net's ignore label C + 1):
  python launch.py export-nnunet --workdir=runs/mine --out=Dataset501_Mine

Several processes (hosts), each started with the same flags but its own --process_id:
  python launch.py --config=... --workdir=... --coordinator_address=host0:12355 \
      --num_processes=2 --process_id=0        # under SLURM: `srun python launch.py ...` (detected)
"""

import json
import logging as std_logging
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

DEFAULT_CONFIG = "configs/default.py"


def _unknown_field_message(argv) -> str | None:
    """'unknown config field X; did you mean Y?' for the first --config.X not in the config."""
    import difflib
    import runpy

    given = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    path, _, arg = (given or DEFAULT_CONFIG).partition(":")
    try:  # the flag holds no value after a failed override: load the file again
        config = runpy.run_path(path)["get_config"](arg or None)
    except Exception:
        return None
    keys = []

    def walk(prefix, node):
        for key, value in node.items():
            keys.append(prefix + key)
            if hasattr(value, "items"):
                walk(f"{prefix}{key}.", value)

    walk("", config)
    for arg in argv[1:]:
        if arg.startswith("--config."):
            name = arg[len("--config.") :].partition("=")[0]
            if name not in keys:
                close = difflib.get_close_matches(name, keys, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                return f"unknown config field {name}{hint}"
    return None


try:  # the default config is loaded here, with any --config.X overrides of the command line
    _CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file.")
except (AttributeError, KeyError) as e:
    sys.exit(f"error: {_unknown_field_message(sys.argv) or e}")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run folder (checkpoints, records). Default: runs/<verb or strategy>-<time>."
)
_BASELINE = flags.DEFINE_float(
    "baseline",
    None,
    "report: the supervised baseline's case Dice (slice Dice where the runs lack case Dice; "
    "default: read supervised.json).",
)
_REFERENCE = flags.DEFINE_string(
    "reference", None, "report: strategy:mode the comparison pairs against (default random:all)."
)
_OUT = flags.DEFINE_string(
    "out",
    None,
    "query: output folder (default <workdir>/queries/round_R); export-nnunet: the dataset folder; "
    "report: the report folder (default <workdir>/report).",
)
_GALLERY_ROUND = flags.DEFINE_integer(
    "gallery_round",
    None,
    "report: the round whose query the gallery shows (default the last round with a query).",
)
_LABELS = flags.DEFINE_string("labels", None, "import-labels: folder of corrected label volumes.")
_ALLOW_OUTSIDE = flags.DEFINE_bool(
    "allow_changes_outside_query",
    False,
    "import-labels: ignore voxels outside the queried slices instead of rejecting the file.",
)
_JSON = flags.DEFINE_bool("json", False, "inspect: print the summary as one JSON object on stdout.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: host:port of process 0 (jax.distributed)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes",
    None,
    "Multi-host: number of processes; > 1 starts jax.distributed. Default: 1, or detected "
    "under SLURM (srun with several tasks).",
)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Print the traceback of expected failures too (or SELAL_JAX_TRACEBACK=1)."
)

VERBS = (
    "run",
    "sweep",
    "supervised",
    "report",
    "query",
    "import-labels",
    "inspect",
    "export-nnunet",
)
NEEDS_WORKDIR = ("report", "query", "import-labels", "export-nnunet")


def main(argv):
    try:
        _main(argv)
    except Exception as e:
        from selal_jax.base import errors

        if not isinstance(e, errors.UserError):
            raise  # a bug: keep its traceback
        # Ends the process at once (orbax's threads would keep it alive after a failed save).
        errors.exit_with_message(e, _VERBOSE.value, flush=(logging.flush,))


def _flag_error_message(e: Exception) -> str:
    """absl's message of a bad flag; a config file whose get_config raised (an unknown config
    argument, `default.py:smokey`) is reduced from ml_collections' embedded traceback to the
    flag and the file's own message."""
    text = str(e)
    if "Traceback (most recent call last)" not in text:
        return text
    flag = text.split(": Error whilst parsing config file", 1)[0]
    last = [line for line in text.splitlines() if line.strip()][-1]
    return f"{flag}: {last.split(': ', 1)[-1]}"


def _parse_flags(argv):
    """absl's flag parsing, with a typo in a --config.X override or a missing --config file
    reported in one line instead of ml_collections' traceback."""
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {_flag_error_message(e)} (--help lists the flags)", file=sys.stderr)
        sys.exit(1)
    except (AttributeError, KeyError) as e:
        print(f"error: {_unknown_field_message(argv) or e}", file=sys.stderr)
        sys.exit(1)
    try:
        _CONFIG.value.keys()
    except OSError:  # ml_collections defers the load error to the first use of the config
        given = config_flags.get_config_filename(flags.FLAGS["config"])
        print(f"error: config file {given} not found or not loadable (--config)", file=sys.stderr)
        sys.exit(1)
    return rest


def _usage(message: str):
    """A wrong verb or a missing flag: one `error:` line (absl's UsageError prints every flag's
    help first)."""
    from selal_jax.base import errors

    return errors.UserError(f"{message} (--help lists the flags)")


def _main(argv):
    verbs = argv[1:] or ["run"]
    if len(verbs) > 1 or verbs[0] not in VERBS:
        raise _usage(f"unknown command {' '.join(verbs)!r}; expected one of {VERBS}")
    verb, config, workdir = verbs[0], _CONFIG.value, _WORKDIR.value
    if workdir is None and (_NUM_PROCESSES.value or 1) > 1:
        raise _usage("several processes need one shared --workdir")
    if workdir is None:
        if verb in NEEDS_WORKDIR:
            raise _usage(f"{verb} needs --workdir")
        from selal_jax.verbs import run_names  # imports JAX, initialises no backend

        name = run_names.folder(run_names.config_fields(config)) if verb == "run" else verb
        workdir = os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        # stderr under --json: stdout holds the JSON object alone
        print(
            f"--workdir not given; writing to {workdir}", file=sys.stderr if _JSON.value else None
        )
    # Imported after flag parsing: keeps --help fast.
    from selal_jax.base import schema
    from selal_jax.core import parallel
    from selal_jax.run import loop
    from selal_jax.run import workdir as workdir_lib
    from selal_jax.verbs import annotate, inspect_data, report, report_runs, sweep

    if verb != "report":  # before anything touches a device
        parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)

    if verb != "report" and not flags.FLAGS["config"].present:
        # An existing run (or sweep) continues with its own config, --config.X=... on top of it
        # (ml_collections applied them to the default config); a new one takes the default.
        stored = workdir_lib.stored_config(workdir, required=verb in NEEDS_WORKDIR)
        if stored is not None:
            config = schema.with_overrides(stored, flags.FLAGS["config"].override_values)
    # The library returns; only process 0 prints (the others hold the same results).
    show = print if parallel.is_primary() else (lambda *_: None)
    if verb == "run":
        show(report.summary_text(loop.run(config, workdir), workdir))
    elif verb in ("sweep", "report"):
        if verb == "sweep":
            paths = sweep.run(config, workdir)
        else:
            paths = report.write_report(
                workdir,
                _BASELINE.value,
                out_dir=_OUT.value,
                reference=_REFERENCE.value,
                gallery_round=_GALLERY_ROUND.value,
            )
        for name in ("summary.md", "comparison.md"):
            with open(paths[name]) as f:
                show(f.read())
        show("\n".join(f"wrote {p}" for p in paths.values()))
    elif verb == "supervised":
        record = sweep.train_supervised(config, workdir)
        show(f"supervised baseline: {report_runs.baseline_text(record)}")
        for note in report_runs.baseline_notes(record):
            show(f"warning: {note}")
    elif verb == "inspect":  # the data as a run loads it (and its cache), without training
        info = inspect_data.describe(config, workdir)
        show(json.dumps(info, indent=1) if _JSON.value else inspect_data.format_text(info))
    elif verb == "query":
        print(f"wrote {annotate.export_query(config, workdir, _OUT.value)}")
    elif verb == "export-nnunet":
        if _OUT.value is None:
            raise _usage("export-nnunet needs --out=DIR")
        from selal_jax.verbs import export

        print(f"wrote {export.export_nnunet(config, workdir, _OUT.value)}")
    elif _LABELS.value is None:
        raise _usage("import-labels needs --labels=DIR")
    else:
        summary = annotate.import_labels(config, workdir, _LABELS.value, _ALLOW_OUTSIDE.value)
        print(f"imported: {summary}")


class _QuietLibraries:
    """Drops INFO chatter of orbax and JAX (they log through absl too); keeps their warnings."""

    def filter(self, record):
        noisy = "orbax" in record.pathname or "/jax/" in record.pathname
        return record.levelno >= std_logging.WARNING or not noisy


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().python_handler.addFilter(_QuietLibraries())
    app.run(main, flags_parser=_parse_flags)
