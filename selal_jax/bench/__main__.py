"""`python -m selal_jax.bench`: flags -> BenchConfig -> run; JSON on stdout, a table on stderr.

  python -m selal_jax.bench --output=bench.json                  # defaults for the backend
  python -m selal_jax.bench --quick --output=/tmp/quick.json     # tiny sizes, about a minute
  python -m selal_jax.bench --sections=scoring --strategies=bald --dtypes=bfloat16
  python -m selal_jax.bench --quick --sections=train --num_classes=3 --channels=4

Each BenchConfig field is one flag, with the field's own help text (`field_help`). Flags left
unset keep the backend's default (`default_config`); `--quick` picks the quick defaults.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
from absl import app, flags

from selal_jax.base.errors import ConfigError, UserError, exit_with_message
from selal_jax.bench import (
    BenchConfig,
    default_config,
    field_help,
    format_table,
    run,
    validate_config,
)

_BY_BACKEND = " (default: by backend, see default_config)"


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """One flag per BenchConfig field (integer, comma-separated list or, for quick, bool)."""
    helps = field_help()
    for field in dataclasses.fields(BenchConfig):
        name, default = field.name, field.default
        if isinstance(default, bool):
            flags.DEFINE_bool(name, default, helps[name], flag_values=flag_values)
        elif isinstance(default, int):
            flags.DEFINE_integer(name, None, helps[name] + _BY_BACKEND, flag_values=flag_values)
        elif isinstance(default, tuple):
            flags.DEFINE_list(name, None, helps[name] + _BY_BACKEND, flag_values=flag_values)
        else:
            raise TypeError(f"BenchConfig.{name}: no flag type for {default!r}")
    flags.DEFINE_string("output", None, "also write the JSON result to this path")


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> BenchConfig:
    """The backend's defaults (quick ones with --quick), overridden by the flags that are set."""
    config = default_config(jax.default_backend(), quick=flag_values.quick)
    overrides = {}
    for field in dataclasses.fields(BenchConfig):
        name, default = field.name, field.default
        if isinstance(default, bool) or not flag_values[name].present:
            continue  # quick is not an override: it chose the defaults above
        value = flag_values[name].value
        if isinstance(default, tuple):
            value = tuple(v.strip() for v in value)
            if all(isinstance(v, int) for v in default):
                try:
                    value = tuple(int(v) for v in value)
                except ValueError as e:
                    raise ConfigError(f"--{name}: expected integers, got {value}") from e
        overrides[name] = value
    return dataclasses.replace(config, **overrides)


def main(argv):
    try:
        if len(argv) > 1:
            raise ConfigError(f"unexpected arguments: {argv[1:]} (--help lists the flags)")
        config = config_from_flags()
        validate_config(config)  # before any compilation: a bad flag is one line at once
    except UserError as e:
        exit_with_message(e, verbose=False)
    result = run(config)
    text = json.dumps(result, indent=2)
    if flags.FLAGS.output:
        with open(flags.FLAGS.output, "w") as f:
            f.write(text + "\n")
    print(text)
    print(format_table(result), file=sys.stderr)


if __name__ == "__main__":
    define_flags()
    app.run(main)
