"""The multi-arm loss comparison (``wmhkeras experiment``): the arms (:mod:`~wmhkeras.experiment.arms`), the run
loop (:mod:`~wmhkeras.experiment.runner`), its statistics (:mod:`~wmhkeras.experiment.statistics`) and report
(:mod:`~wmhkeras.experiment.report`).
"""

import importlib

#: The public names, by the module that defines them, each imported on first use (PEP 562).
_PUBLIC = {
    **dict.fromkeys(("ExperimentResult", "run_experiment"), "wmhkeras.experiment.runner"),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
