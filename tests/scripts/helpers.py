"""Load a script of ``scripts/`` as a module (the scripts are not a package)."""

import importlib.util

from tests.conftest import REPO


def load_script(name: str):
    """``scripts/<name>.py`` imported as the module ``name``."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
