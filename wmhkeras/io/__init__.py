"""Files in and out, without TensorFlow: NIfTI volumes on the input's grid (:mod:`~wmhkeras.io.nifti`) and the
header pre-pass every command runs on its scans (``header_check``), BIDS datasets in and BIDS-derivative names
and sidecars out (``bids``), file names (``naming``), the subject record and its ids (``subject``,
``subject_ids``), atomic writers and staged folders (``files``), folder locks (``lock``), provenance
(``provenance``), the run folder and its typed files (``run_folder``), the checkpoint commit (``checkpoints``),
the model card (``model_card``) and the built-in models (``builtin_models``).
"""

import importlib

#: The public names, by the module that defines them, each imported on first use (PEP 562).
_PUBLIC = {
    **dict.fromkeys(("Volume", "check_same_grid", "load_volume", "same_grid", "save_like"), "wmhkeras.io.nifti"),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
