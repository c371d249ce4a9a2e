"""The multi-arm loss comparison (``wmhkeras experiment``): the run loop (:mod:`~wmhkeras.experiment.runner`),
its statistics (:mod:`~wmhkeras.experiment.statistics`) and reports (:mod:`~wmhkeras.experiment.report`)."""

from wmhkeras.experiment.runner import ExperimentResult, run_experiment

__all__ = ["ExperimentResult", "run_experiment"]
