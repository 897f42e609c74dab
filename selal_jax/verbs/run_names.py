"""The runs of a sweep (`sweep.runs`, with per-run options) and the names of a run: its folder
in a sweep and its label in a report.

`sweep.runs` is a comma-separated list of runs, each `strategy[:mode[:option=value...]]`, every
part separated by ':' (no character a shell or an ml_collections string flag treats specially):

  random_predicted:all,entropy:all,entropy:selective,entropy:selective:sampling=power,
  entropy:selective:sampling=power:class_balanced=True

The mode defaults to 'selective'. The options are the al fields a run may change after the
sweep's shared round 0 (each in schema.ROUND0_NEUTRAL_KEYS), named without 'al.': OPTIONS. A
run's other fields, and an option it does not give, are the sweep config's.

A run's name lists its strategy, its mode and the options that act on it and differ from their
defaults (`name_tokens`): label "entropy selective power class_balanced", folder
"entropy-selective-power-class_balanced". A run without such options keeps the name of the
sweeps written before options existed (`<strategy>-<mode>`, "<strategy> <mode>"). The names
come from the same fields whether read from a config (`config_fields`) or from a run's records
(`record_fields`, old records lacking a field having had its default).
"""

from __future__ import annotations

import dataclasses

from selal_jax.base import schema
from selal_jax.base.errors import ConfigError
from selal_jax.core import scoring

# The per-run options of sweep.runs (al.<name>) and how their text is read.
OPTIONS = {
    "sampling": str,
    "sampling_beta": float,
    "class_balanced": bool,
    "max_per_case": int,
    "min_slice_gap": int,
}
DEFAULT_MODE = "selective"
_TRUE, _FALSE = ("true", "1"), ("false", "0")
_KINDS = {str: "a word", float: "a number", bool: "True or False", int: "an integer"}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One item of sweep.runs.

    Attributes:
      strategy, mode: al.strategy and al.mode.
      options: (name, value) pairs of OPTIONS, in the order given.
      text: the item as written (error messages name it).
    """

    strategy: str
    mode: str
    options: tuple[tuple[str, object], ...] = ()
    text: str = ""

    def apply(self, config) -> None:
        """Sets the run's al fields in `config` (in place)."""
        config.al.strategy, config.al.mode = self.strategy, self.mode
        for name, value in self.options:
            config.al[name] = value


def parse_run(item: str, where: str = "config field sweep.runs") -> RunSpec:
    """'entropy:selective:sampling=power' -> RunSpec; a ConfigError starting with `where`
    otherwise."""
    text = item.strip()
    strategy, mode, *rest = [p.strip() for p in text.split(":")] + [""]
    if not strategy:
        raise ConfigError(f"{where}: no strategy in {text!r}")
    options = {}
    for part in (p for p in rest if p):
        name, eq, value = (s.strip() for s in part.partition("="))
        if name not in OPTIONS:
            raise ConfigError(
                f"{where}: unknown option {name!r} in {text!r}; expected "
                f"option=value with option one of {tuple(OPTIONS)}"
            )
        if not eq or not value:
            raise ConfigError(f"{where}: option {name!r} in {text!r} has no =value")
        if name in options:
            raise ConfigError(f"{where}: option {name!r} given twice in {text!r}")
        options[name] = _read(name, value, text, where)
    return RunSpec(strategy, mode or DEFAULT_MODE, tuple(options.items()), text)


def _read(name: str, value: str, text: str, where: str):
    kind = OPTIONS[name]
    if kind is bool:
        if value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
    else:
        try:
            return kind(value)
        except ValueError:
            pass
    raise ConfigError(f"{where}: option {name}={value!r} in {text!r}: expected {_KINDS[kind]}")


def parse_runs(text: str) -> list[RunSpec]:
    """sweep.runs -> [RunSpec] (empty items skipped); a ConfigError if none is given."""
    runs = [parse_run(item) for item in str(text).split(",") if item.strip()]
    if not runs:
        raise ConfigError(f"config field sweep.runs: no strategy:mode pairs in {text!r}")
    return runs


def config_fields(config) -> dict:
    """The fields a run's name is made of, from its config."""
    return _fields(config.al.strategy, config.al.mode, config.al)


def record_fields(record: dict) -> dict:
    """The fields a run's name is made of, from one of its records (a field missing from
    records written before it existed had its default, schema.ADDED_KEYS)."""
    return _fields(record["strategy"], record["mode"], record)


def spec_fields(spec: RunSpec) -> dict:
    """The fields a run's name is made of, from a RunSpec alone (the options it does not give
    at their defaults)."""
    return _fields(spec.strategy, spec.mode, dict(spec.options))


def _fields(strategy: str, mode: str, given) -> dict:
    defaults = {name: schema.ADDED_KEYS[f"al.{name}"] for name in OPTIONS}
    return {"strategy": strategy, "mode": mode, **{n: given.get(n, defaults[n]) for n in OPTIONS}}


def name_tokens(fields: dict) -> list[str]:
    """[strategy, mode, the options that act and differ from their defaults]: the sampling
    (with its beta when not 1) and the class balance of score-based strategies (random ones
    ignore both), the volume limits of every strategy."""
    tokens = [str(fields["strategy"]), str(fields["mode"])]
    ranked = fields["strategy"] not in scoring.RANDOM_STRATEGIES
    if ranked and fields["sampling"] != "top_k":
        tokens.append(str(fields["sampling"]))
        if float(fields["sampling_beta"]) != 1.0:
            tokens.append(f"beta={float(fields['sampling_beta']):g}")
    if ranked and bool(fields["class_balanced"]):
        tokens.append("class_balanced")
    for name in ("max_per_case", "min_slice_gap"):
        if int(fields[name]) > 0:
            tokens.append(f"{name}={int(fields[name])}")
    return tokens


def label(fields: dict) -> str:
    """A run's name in a report: 'entropy selective power beta=2'."""
    return " ".join(name_tokens(fields))


def folder(fields: dict) -> str:
    """A run's folder in a sweep: 'entropy-selective-power-beta2' ('<strategy>-<mode>' without
    options, as sweeps wrote before them)."""
    return "-".join(t.replace("=", "") for t in name_tokens(fields))
