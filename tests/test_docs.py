"""Every command the README and docs/ show still names real things: each `python launch.py ...`
of a fenced block a verb of launch.py, an existing config file and variant, launch.py's flags and
the fields of that config; each `python -m selal_jax.bench ...` the benchmark's flags. And the
README's test command is the one .ci/run runs.
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import os
import re
import runpy
import shlex

import pytest

from selal_jax.base import schema
from tests.helpers import REPO

DOCS = [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]
SHELL = ("", "bash", "sh", "shell", "console")
ABSL_FLAGS = {"help", "helpfull", "helpshort", "verbosity", "v"}
DEFAULT_CONFIG = "configs/default.py"


def fenced_blocks(text: str):
    """(language, body) of every ``` block."""
    for match in re.finditer(r"^ *```(\w*)\n(.*?)^ *```", text, re.M | re.S):
        yield match.group(1), match.group(2)


def command_lines(body: str) -> list[str]:
    """The shell lines of a block, continuation lines joined, comment lines dropped."""
    lines, current = [], ""
    for line in body.splitlines():
        current += line.strip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current and not current.startswith("#"):
            lines.append(current)
        current = ""
    return lines


def commands(program: str) -> list[tuple[str, list[str]]]:
    """(document, arguments after `program`) of every fenced shell line that runs it."""
    found = []
    for path in DOCS:
        with open(path) as f:
            text = f.read()
        for language, body in fenced_blocks(text):
            if language not in SHELL:
                continue
            for line in command_lines(body):
                at = line.find(program)
                if at < 0:
                    continue
                args = []
                for token in shlex.split(line[at + len(program) :], comments=True):
                    if token in ("&&", ";", "&", "|", "||") or token.startswith(("&", ";")):
                        break
                    token = token.strip("[]").rstrip(";&")
                    if token:
                        args.append(token)
                found.append((os.path.relpath(path, REPO), args))
    return found


def launch_names() -> tuple[tuple[str, ...], set[str]]:
    """(VERBS, names of the flags launch.py defines), read from its source."""
    with open(os.path.join(REPO, "launch.py")) as f:
        tree = ast.parse(f.read())
    verbs, flags = (), set(ABSL_FLAGS)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "VERBS" for t in node.targets
        ):
            verbs = ast.literal_eval(node.value)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith("DEFINE_")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            flags.add(node.args[0].value)
    return verbs, flags


def check_launch(args: list[str]) -> None:
    """Raises AssertionError naming what of `python launch.py <args>` is not real."""
    verbs, flags = launch_names()
    positional = [a for a in args if not a.startswith("-")]
    assert len(positional) <= 1, f"more than one verb: {positional}"
    verb = positional[0] if positional else "run"
    assert verb in verbs, f"unknown verb {verb!r}; launch.py has {verbs}"
    options = dict(a[2:].partition("=")[::2] for a in args if a.startswith("--"))
    path, _, variant = options.get("config", DEFAULT_CONFIG).partition(":")
    assert os.path.isfile(os.path.join(REPO, path)), f"no config file {path}"
    config = runpy.run_path(os.path.join(REPO, path))["get_config"](variant or None)
    fields = set(schema.flatten(config))  # the fields --config.X=... can set
    for name in options:
        if name.startswith("config."):
            assert name[len("config.") :] in fields, f"{path} has no field {name[7:]}"
        else:
            assert name in flags, f"launch.py has no flag --{name}"


def check_bench(args: list[str]) -> None:
    """Raises AssertionError naming a flag that `python -m selal_jax.bench` does not define."""
    from selal_jax.bench import BenchConfig

    flags = {f.name for f in dataclasses.fields(BenchConfig)} | {"output"} | ABSL_FLAGS
    for arg in args:
        assert arg.startswith("--"), f"unexpected argument {arg!r}"
        name = arg[2:].partition("=")[0]
        assert name in flags, f"the benchmark has no flag --{name}"


LAUNCH = commands("python launch.py")
BENCH = commands("python -m selal_jax.bench")


def test_the_docs_show_commands_of_every_kind():
    documents = {doc for doc, _ in LAUNCH}
    assert {"README.md", "docs/sweeps.md", "docs/multi_device.md"} <= documents
    verbs = {next((a for a in args if not a.startswith("-")), "run") for _, args in LAUNCH}
    assert {"run", "sweep", "report", "inspect"} <= verbs
    assert len(BENCH) >= 3


@pytest.mark.parametrize("doc, args", LAUNCH, ids=[f"{d}:{' '.join(a)}"[:90] for d, a in LAUNCH])
def test_each_launch_command_names_real_things(doc, args):
    check_launch(args)


@pytest.mark.parametrize("doc, args", BENCH, ids=[f"{d}:{' '.join(a)}"[:90] for d, a in BENCH])
def test_each_benchmark_command_names_real_flags(doc, args):
    check_bench(args)


@pytest.mark.parametrize(
    "args, problem",
    [
        (["frobnicate"], "unknown verb"),
        (["--config=configs/nowhere.py"], "no config file"),
        (["--config=configs/default.py:smokey"], "unknown config argument"),
        (["--config.al.strategi=bald"], "has no field al.strategi"),
        (["--config=configs/msd_spleen.py", "--config.data.brats.tier=x"], "no field"),
        (["query", "--outt=x"], "no flag --outt"),
    ],
)
def test_the_checks_refuse_what_is_not_real(args, problem):
    with pytest.raises((AssertionError, ValueError), match=problem):
        check_launch(args)
    with pytest.raises(AssertionError, match="no flag --poolsize"):
        check_bench(["--poolsize=3"])


def test_the_readmes_test_command_is_the_one_ci_runs():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(REPO, ".ci", "run")) as f:
        ci = f.read()
    command = 'python -m pytest -q -m "not slow" tests'
    assert f'pip install ".[test]" && {command}' in readme
    assert f"\n{command}\n" in ci
