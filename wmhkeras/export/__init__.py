"""Export a trained generator as verified SavedModel and TFLite files.

Modules: :mod:`~wmhkeras.export.runner` (``export(...)``, the library call), ``source`` (the model and
config a run or ``.keras`` file holds), ``saved_model``, ``tflite`` and ``serving`` (the artefacts and
TensorFlow Serving's layout), ``verification`` (parity against the Keras model), ``card`` (the model
card), ``options`` and ``report`` (the option lists and the report's table, without TensorFlow).
"""

import importlib

#: The public names, by the module that defines them, each imported on first use (PEP 562).
_PUBLIC = {
    **dict.fromkeys(("export",), "wmhkeras.export.runner"),
    **dict.fromkeys(("ArtifactCheck", "ExportReport", "format_table"), "wmhkeras.export.report"),
    **dict.fromkeys(("DEFAULT_TOLERANCES", "TFLITE_VARIANTS", "default_out_dir", "parse_variants",
                     "resolve_tolerances"), "wmhkeras.export.options"),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
