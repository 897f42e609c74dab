"""Entry point: flags -> config -> selal_jax.<verb>.run(config, workdir).

python launch.py --config=configs/default.py --workdir=runs/demo
python launch.py --config=configs/default.py:smoke --config.al.strategy=bald
With --config.al.annotator=human, each round stops after its query; then
python launch.py query --workdir=runs/mine [--out=DIR]
python launch.py import-labels --workdir=runs/mine --labels=DIR
python launch.py --config=... --workdir=runs/mine      # the next round
"""

import logging as std_logging
import os
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config file.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run folder (checkpoints, records). Default: runs/<strategy>-<mode>-<time>."
)
_OUT = flags.DEFINE_string("out", None, "query: output folder. Default: <workdir>/queries/round_R.")
_LABELS = flags.DEFINE_string("labels", None, "import-labels: folder of corrected label volumes.")
_ALLOW_OUTSIDE = flags.DEFINE_bool(
    "allow_changes_outside_query",
    False,
    "import-labels: ignore voxels outside the queried slices instead of rejecting the file.",
)
VERBS = ("run", "query", "import-labels")


def main(argv):
    verbs = argv[1:] or ["run"]
    if len(verbs) > 1 or verbs[0] not in VERBS:
        raise app.UsageError(f"unknown command {' '.join(verbs)!r}; expected one of {VERBS}")
    verb, config, workdir = verbs[0], _CONFIG.value, _WORKDIR.value
    if verb != "run":
        if workdir is None:
            raise app.UsageError(f"{verb} needs --workdir")
        from selal_jax import annotate, loop

        if not flags.FLAGS["config"].present:  # the run's own config
            config = loop.stored_config(workdir)
        if verb == "query":
            print(f"wrote {annotate.export_query(config, workdir, _OUT.value)}")
        elif _LABELS.value is None:
            raise app.UsageError("import-labels needs --labels=DIR")
        else:
            summary = annotate.import_labels(config, workdir, _LABELS.value, _ALLOW_OUTSIDE.value)
            print(f"imported: {summary}")
        return
    if workdir is None:
        workdir = os.path.join(
            "runs", f"{config.al.strategy}-{config.al.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        print(f"--workdir not given; writing to {workdir}")
    from selal_jax import loop  # after flag parsing: keeps --help fast

    loop.run(config, workdir)


class _QuietLibraries:
    """Drops INFO chatter of orbax and JAX (they log through absl too); keeps their warnings."""

    def filter(self, record):
        noisy = "orbax" in record.pathname or "/jax/" in record.pathname
        return record.levelno >= std_logging.WARNING or not noisy


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().python_handler.addFilter(_QuietLibraries())
    app.run(main)
