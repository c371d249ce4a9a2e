"""The package's dependency order (docs/architecture.md) holds: no import cycle, no upward import.

Every ``import`` of a ``wmhkeras`` module is read from the source with :mod:`ast`, at module level and
inside functions alike (an import deferred to save TensorFlow's start-up is still a dependency), and so is
every module named by a string in a file that imports by name (``importlib.import_module``, ``__import__``).
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: The stages, lowest first. A module may import from its own package and from lower layers; two
#: packages on one layer are independent of each other.
LAYERS: list[set[str]] = [
    {"wmhkeras", "wmhkeras.errors", "wmhkeras.vocabulary"},
    {"wmhkeras.io"},
    {"wmhkeras.config"},
    {"wmhkeras.data"},
    {"wmhkeras.evaluation"},
    {"wmhkeras.models", "wmhkeras.losses"},
    {"wmhkeras.registration"},
    {"wmhkeras.training", "wmhkeras.inference"},
    {"wmhkeras.export"},
    {"wmhkeras.experiment"},
    {"wmhkeras.api"},
    {"wmhkeras.cli"},
]
#: The one dependency of the top-level package: the Python API, imported inside its module ``__getattr__``
#: (PEP 562) on first attribute access, after every module has loaded, so ``import wmhkeras`` loads nothing
#: and no import cycle can form. Removed from the graph before checking; the test below keeps it that way.
LAZY_API = ("wmhkeras", "wmhkeras.api")


def module_names(root: Path, package: str, folder: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file under ``folder`` (``__init__`` is the package)."""
    names = {}
    for path in sorted(folder.rglob("*.py")):
        parts = list(path.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join([package, *parts])] = path
    return names


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The ``wmhkeras`` modules that ``name`` imports (relative imports resolved; ``from pkg import mod``
    counts as importing ``pkg.mod`` when that is a module, else ``pkg``)."""
    is_package = path.name == "__init__.py"
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    by_name = any(isinstance(node, ast.Call) and _call_name(node.func) in ("import_module", "__import__")
                  for node in ast.walk(tree))
    for node in ast.walk(tree):
        if by_name and isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
            targets = [node.value]  # e.g. {"export": "wmhkeras.export.runner"} resolved by importlib.import_module
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t == "wmhkeras" or t.startswith("wmhkeras."))
    return found - {name}


def _call_name(func: ast.expr) -> str | None:
    """``import_module`` for ``importlib.import_module(...)`` and ``import_module(...)``; the called name."""
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def layer_of(module: str) -> tuple[int, str]:
    """``(layer index, stage package)`` of a module: its longest stage prefix."""
    best = None
    for index, packages in enumerate(LAYERS):
        for package in packages:
            if (module == package or module.startswith(package + ".")) and (best is None or len(package) > len(best[1])):
                best = (index, package)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md")
    return best


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Upward imports and imports between two stages of one layer."""
    found = []
    for module, targets in sorted(graph.items()):
        here, stage = layer_of(module)
        for target in sorted(targets):
            there, other = layer_of(target)
            if stage == "wmhkeras" and module == "wmhkeras":
                found.append(f"{module} -> {target}: the top-level package imports nothing")
            elif there > here or (there == here and other != stage):
                found.append(f"{module} (layer {here}, {stage}) imports {target} (layer {there}, {other})")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def import_graph(package_dir: Path, cli_dir: Path | None = None) -> dict[str, set[str]]:
    files = module_names(package_dir.parent, "wmhkeras", package_dir)
    if cli_dir is not None:
        files.update(module_names(cli_dir.parent, "wmhkeras.cli", cli_dir))
    known = set(files)
    graph = {}
    for name, path in files.items():
        graph[name] = {t for t in imports_of(name, path, known) if t in known or t.rsplit(".", 1)[0] in known}
        graph[name] = {t if t in known else t.rsplit(".", 1)[0] for t in graph[name]}
    return graph


# === The real package ===


def test_the_package_has_no_cycle_and_no_upward_import():
    graph = import_graph(REPO / "wmhkeras", REPO / "cli")
    assert len(graph) > 30  # the parser found the package
    graph[LAZY_API[0]] = graph[LAZY_API[0]] - {LAZY_API[1]}
    assert violations(graph) == []
    assert cycles(graph) == []


def test_imports_by_name_are_dependencies_too():
    """``wmhkeras.export`` loads its public names with ``importlib.import_module`` on first use."""
    graph = import_graph(REPO / "wmhkeras", REPO / "cli")
    assert {"wmhkeras.export.runner", "wmhkeras.export.report", "wmhkeras.export.options"} <= graph["wmhkeras.export"]


def test_inference_never_imports_training_and_export_is_not_imported_by_inference():
    graph = import_graph(REPO / "wmhkeras", REPO / "cli")
    for module, targets in graph.items():
        if module.startswith("wmhkeras.inference"):
            assert not any(t.startswith(("wmhkeras.training", "wmhkeras.export")) for t in targets), module


def test_the_top_level_package_imports_only_the_api_and_only_in_its_getattr():
    path = REPO / "wmhkeras" / "__init__.py"
    known = set(module_names(REPO, "wmhkeras", REPO / "wmhkeras"))
    assert imports_of("wmhkeras", path, known) == {LAZY_API[1]}
    (getattr_fn,) = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
    inside = [n for n in ast.walk(getattr_fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [(n.module, [a.name for a in n.names]) for n in inside] == [("wmhkeras", ["api"])]


def test_every_module_is_in_a_documented_layer():
    doc = (REPO / "docs" / "architecture.md").read_text()
    for packages in LAYERS:
        for package in packages:
            assert f"`{package}`" in doc, f"{package} is not described in docs/architecture.md"


# === The checker itself ===


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "wmhkeras"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


BASE = {
    "__init__.py": "",
    "errors.py": "",
    "io/__init__.py": "",
    "io/files.py": "from wmhkeras.errors import X\n",
    "data/__init__.py": "",
    "data/datasets.py": "from wmhkeras.io.files import atomic_path\n",
    "training/__init__.py": "",
    "training/trainer.py": "from wmhkeras.data import datasets\n",
    "export/__init__.py": "",
    "export/runner.py": "from wmhkeras.inference import segment\n",
    "inference/__init__.py": "",
    "inference/segment.py": "from ..io import files\n",
}


def test_the_checker_accepts_a_clean_tree(tmp_path):
    graph = import_graph(_tree(tmp_path, BASE))
    assert graph["wmhkeras.inference.segment"] == {"wmhkeras.io.files"}  # relative import resolved
    assert graph["wmhkeras.training.trainer"] == {"wmhkeras.data.datasets"}  # from pkg import module
    assert violations(graph) == [] and cycles(graph) == []


@pytest.mark.parametrize("where, line", [
    ("inference/segment.py", "from wmhkeras.training.trainer import train\n"),  # sideways: one layer
    ("data/datasets.py", "def f():\n    import wmhkeras.inference.segment\n"),  # upward, deferred in a function
    ("io/files.py", "from wmhkeras.data.datasets import Subject\n"),  # upward
])
def test_the_checker_fails_on_an_added_upward_import(tmp_path, where, line):
    files = dict(BASE)
    files[where] = files[where] + line
    found = violations(import_graph(_tree(tmp_path, files)))
    assert len(found) == 1 and found[0].startswith("wmhkeras." + where.removesuffix(".py").replace("/", "."))


@pytest.mark.parametrize("line", [
    'import importlib\n_LAZY = {"train": "wmhkeras.training.trainer"}\n'
    "def __getattr__(name):\n    return importlib.import_module(_LAZY[name])\n",
    'from importlib import import_module\ntrainer = import_module("wmhkeras.training.trainer")\n',
    'trainer = __import__("wmhkeras.training.trainer")\n',
])
def test_the_checker_fails_on_an_upward_import_by_name(tmp_path, line):
    files = dict(BASE)
    files["inference/segment.py"] += line
    found = violations(import_graph(_tree(tmp_path, files)))
    assert found == ["wmhkeras.inference.segment (layer 7, wmhkeras.inference) imports wmhkeras.training.trainer "
                     "(layer 7, wmhkeras.training)"]


def test_module_names_in_strings_are_not_imports_without_importlib(tmp_path):
    files = dict(BASE)
    files["inference/segment.py"] += 'log_name = "wmhkeras.training.trainer"\n'
    assert violations(import_graph(_tree(tmp_path, files))) == []


def test_the_checker_fails_on_a_cycle_and_between_stages_of_one_layer(tmp_path):
    files = dict(BASE)
    files["data/splits.py"] = "from wmhkeras.data.datasets import Subject\n"
    files["data/datasets.py"] += "from wmhkeras.data import splits\n"
    files["models/__init__.py"] = ""
    files["models/unet.py"] = "from wmhkeras.losses.content import X\n"
    files["losses/__init__.py"] = ""
    files["losses/content.py"] = ""
    graph = import_graph(_tree(tmp_path, files))
    assert cycles(graph) == [["wmhkeras.data.datasets", "wmhkeras.data.splits"]]
    assert violations(graph) == ["wmhkeras.models.unet (layer 5, wmhkeras.models) imports wmhkeras.losses.content "
                                 "(layer 5, wmhkeras.losses)"]
