"""Packaging: runtime requirements are ranges that admit the pinned set `make` installs (requirements.lock),
every Python TensorFlow 2.21 has wheels for is allowed, and each imported package is declared."""

import ast
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
#: The Pythons TensorFlow 2.21.0 publishes wheels for, looked up on PyPI with
#: ``pip index versions tensorflow --only-binary=:all: --python-version X`` for X = 3.9 ... 3.14: 3.10 to
#: 3.13 list 2.21.0, 3.9 stops at 2.20.0, 3.14 has none. The trove classifiers of tensorflow-2.21.0 agree.
TF_2_21_PYTHONS = ("3.10", "3.11", "3.12", "3.13")
LOWER, UPPER = {">=", ">", "~="}, {"<", "<=", "~="}


@pytest.fixture(scope="module")
def lock() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _requirements(lines) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


def test_runtime_requirements_are_ranges_that_admit_the_locked_versions(setup_kwargs, lock):
    runtime = _requirements(setup_kwargs["install_requires"])
    assert {"tensorflow", "keras", "numpy", "nibabel"} <= set(runtime)
    for name, req in runtime.items():
        operators = {spec.operator for spec in req.specifier}
        assert operators & LOWER and operators & UPPER, f"{req}: give a range with a lower and an upper bound"
        assert not operators & {"==", "==="}, f"{req}: a runtime requirement is a range; pins live in requirements.lock"
        assert name in lock, f"{name} is required but not pinned in requirements.lock"
        assert req.specifier.contains(lock[name], prereleases=True), f"{req} does not admit the locked {lock[name]}"


def test_every_extra_admits_the_locked_versions(setup_kwargs, lock):
    extras = setup_kwargs["extras_require"]
    assert {"litert", "gpu", "test", "dev"} <= set(extras)
    for extra, lines in extras.items():
        for name, req in _requirements(lines).items():
            assert name in lock and req.specifier.contains(lock[name]), f"[{extra}] {req} vs lock {lock.get(name)}"


def test_python_requires_allows_every_python_tensorflow_2_21_has_wheels_for(setup_kwargs):
    allowed = SpecifierSet(setup_kwargs["python_requires"])
    for version in TF_2_21_PYTHONS:
        assert allowed.contains(f"{version}.0"), f"python_requires {allowed} refuses Python {version}"
    assert allowed.contains(".".join(map(str, sys.version_info[:3])))
    assert not allowed.contains("3.9.0")  # TensorFlow 2.21 has no wheel for it
    # ruff must not rewrite the code into syntax the oldest allowed Python lacks
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'target-version = "py{TF_2_21_PYTHONS[0].replace(".", "")}"' in pyproject


def test_the_lock_pins_the_keras_the_multi_worker_workaround_is_tested_with(setup_kwargs, lock):
    tree = ast.parse((REPO / "wmhkeras" / "training" / "multiworker.py").read_text())
    (tested,) = [node.value.value for node in tree.body if isinstance(node, ast.AnnAssign | ast.Assign)
                 and getattr(node.targets[0] if isinstance(node, ast.Assign) else node.target, "id", "") == "TESTED_KERAS_VERSION"]
    assert lock["keras"] == Version(tested)
    assert _requirements(setup_kwargs["install_requires"])["keras"].specifier.contains(tested)


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Top-level names of the absolute imports of a module: ``(at module level, inside functions)``."""
    tree = ast.parse(path.read_text())
    module_level = {id(node) for node in tree.body}
    outer, inner = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module]
        else:
            continue
        (outer if id(node) in module_level else inner).update(n.split(".")[0] for n in names)
    return outer, inner


def test_every_imported_package_is_declared_and_extras_are_imported_lazily(setup_kwargs):
    runtime = set(_requirements(setup_kwargs["install_requires"]))
    optional = {name for lines in setup_kwargs["extras_require"].values() for name in _requirements(lines)}
    distributions = metadata.packages_distributions()
    for path in sorted([*(REPO / "wmhkeras").rglob("*.py"), *(REPO / "cli").rglob("*.py")]):
        outer, inner = _imports(path)
        for names, allowed in ((outer, runtime), (inner, runtime | optional)):
            for top in names - set(sys.stdlib_module_names) - {"wmhkeras", "__future__"}:
                dists = {canonicalize_name(d) for d in distributions.get(top, [top])}
                assert dists & allowed, f"{path.relative_to(REPO)} imports {top} ({dists}), not declared in setup.py"


def test_scikit_image_is_a_test_requirement_only(setup_kwargs):
    assert "scikit-image" not in _requirements(setup_kwargs["install_requires"])
    assert "scikit-image" in _requirements(setup_kwargs["extras_require"]["test"])
    for path in [*(REPO / "wmhkeras").rglob("*.py"), *(REPO / "cli").rglob("*.py")]:
        assert "skimage" not in set().union(*_imports(path)), f"{path}: library code imports skimage"
