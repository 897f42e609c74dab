"""Entry point: flags -> config -> selal_jax.<verb>.run(config, workdir).

python launch.py --config=configs/default.py --workdir=runs/demo
python launch.py --config=configs/default.py:smoke --config.al.strategy=bald
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


def main(argv):
    verbs = argv[1:]
    if len(verbs) > 1 or (verbs and verbs[0] != "run"):
        raise app.UsageError(f"unknown command {' '.join(verbs)!r}; expected: run")
    config = _CONFIG.value
    workdir = _WORKDIR.value
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
