"""The package's folders are its layers: every module imports only from its own layer or below,
and no modules import each other in a circle. Read from the source (ast), module-level and
function-level imports alike, so a lazy import inside a function cannot hide an upward one.

Also the size rules (modules of about 400 lines at most, classes of about 200) and the package's
face: `from selal_jax import models, scoring, train, rng, select_from_probs` resolves lazily.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

PACKAGE = os.path.join(REPO, "selal_jax")
# Bottom to top; a layer may import its own and the layers listed before it. bench sits on core
# alone: the GPU image runs it without nibabel or ml_collections (the data and run layers).
LAYERS = {
    "base": (),
    "core": ("base",),
    "data": ("base",),  # the data layer needs no model
    "run": ("base", "core", "data"),
    "verbs": ("base", "core", "data", "run"),
    "bench": ("base", "core"),
}
# More than its layer: bench/loop.py runs whole rounds of the run layer (the bench's loop
# section); the rest of bench stays on base and core and imports it only inside the section's
# function (test_the_bench_loads_neither_data_nor_run).
EXTRA = {"selal_jax.bench.loop": ("data", "run")}
TOP = "selal_jax"  # its __init__ resolves names of core lazily, for scripts only
MAX_MODULE_LINES = 420
MAX_CLASS_LINES = 200


def module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[: -len(".py")].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def modules() -> dict[str, str]:
    """{dotted module name: path} of every module of the package."""
    out = {}
    for parent, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(parent, name)
                out[module_name(path)] = path
    return out


def imports(path: str, name: str, known: set[str]) -> set[str]:
    """The package modules `path` (module `name`) imports anywhere in its body: `import a.b`,
    `from a import b` (b a module, or a name of a), relative imports resolved."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m == TOP or m.startswith(TOP + ".")}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(path, name, known) for name, path in found.items()}


def test_every_module_sits_in_a_layer(graph):
    loose = [m for m in graph if m != TOP and layer_of(m) is None]
    assert loose == [], f"modules outside the layers {list(LAYERS)}: {loose}"


def test_no_module_imports_a_layer_above_its_own(graph):
    upward = []
    for module, targets in sorted(graph.items()):
        layer = layer_of(module)
        for target in sorted(targets):
            if target == TOP and module != TOP:
                upward.append(f"{module} -> {target} (the package face: import the module)")
            elif module != TOP and layer_of(target) not in (
                layer,
                *LAYERS[layer],
                *EXTRA.get(module, ()),
            ):
                upward.append(f"{module} ({layer}) -> {target} ({layer_of(target)})")
    assert upward == [], "\n".join(upward)


def test_no_circle_of_imports(graph):
    edges = {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    # A package's __init__ that imports its own modules (bench/__init__) is its face, no circle.
    circles = [c for c in circles if not all(m.startswith(c[0]) for m in c)]
    assert circles == [], circles


def assert_runs(code: str) -> None:
    """Runs Python `code` in a fresh interpreter (cwd: the repository); it must succeed."""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_bench_loads_neither_data_nor_run():
    """`python -m selal_jax.bench` runs where nibabel and ml_collections are missing (the GPU
    image): importing it loads no module of the data or run layer, and the loop section, which
    needs them, says it is skipped."""
    code = (
        "import sys\n"
        "sys.modules['nibabel'] = sys.modules['ml_collections'] = None  # import fails\n"
        "import selal_jax.bench, selal_jax.bench.__main__\n"
        "from selal_jax.bench import sections\n"
        "loaded = [m for m in sys.modules if m.startswith(('selal_jax.data', 'selal_jax.run'))]\n"
        "assert loaded == [], loaded\n"
        "result = sections.loop_section(None)\n"
        "assert set(result) == {'skipped'} and 'not importable' in result['skipped'], result\n"
    )
    assert_runs(code)


def test_the_checker_sees_upward_and_circular_imports(tmp_path):
    """The walk finds a function-level import, a relative one and a `from package import
    module`, which is what the two tests above rely on."""
    path = tmp_path / "probe.py"
    path.write_text(
        "from selal_jax.core import rng\n"
        "def f():\n"
        "    from selal_jax.run import loop\n"
        "    from ..verbs import report\n"
    )
    known = {"selal_jax.core.rng", "selal_jax.run.loop", "selal_jax.verbs.report"}
    got = imports(str(path), "selal_jax.data.probe", known)
    assert got == known


def test_modules_and_classes_stay_small():
    big = []
    for name, path in sorted(modules().items()):
        with open(path) as f:
            source = f.read()
        if source.count("\n") > MAX_MODULE_LINES:
            big.append(f"{name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno >= MAX_CLASS_LINES:
                big.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert big == [], big


def test_the_package_face_resolves_lazily():
    code = (
        "import sys, selal_jax; assert 'jax' not in sys.modules\n"
        "from selal_jax import models, rng, scoring, select_from_probs, train\n"
        "from selal_jax.core import models as m, rng as r, scoring as s, train as t\n"
        "from selal_jax.core.selection import select_from_probs as f\n"
        "assert (models, rng, scoring, train, select_from_probs) == (m, r, s, t, f)\n"
        "assert callable(models.UNet) and callable(train.train_step)\n"
    )
    assert_runs(code)
