"""Export a trained generator as a verified SavedModel and TFLite files (:mod:`wmhkeras.export.runner`).

``wmhkeras.export.export(...)`` and ``wmhkeras.export.format_table(...)`` are the library calls; they are
imported on first use, so that the TensorFlow-free modules here (options, report) stay cheap to import.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "export": "wmhkeras.export.runner",
    "ExportReport": "wmhkeras.export.report",
    "ArtifactCheck": "wmhkeras.export.report",
    "format_table": "wmhkeras.export.report",
    "default_out_dir": "wmhkeras.export.options",
    "parse_variants": "wmhkeras.export.options",
    "resolve_tolerances": "wmhkeras.export.options",
    "DEFAULT_TOLERANCES": "wmhkeras.export.options",
    "TFLITE_VARIANTS": "wmhkeras.export.options",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
