"""Reading and writing files: NIfTI volumes (:mod:`wmhkeras.io.nifti`, re-exported here) and their header
pre-pass (``header_check``), BIDS datasets and derivative names (``bids``), file names (``naming``), the
subject record and its ids (``subject``, ``subject_ids``), atomic writers and staged folders (``files``),
folder locks (``lock``), provenance (``provenance``), the run folder and its checkpoints (``run_folder``,
``checkpoints``), the model card (``model_card``) and the built-in models (``builtin_models``)."""

from wmhkeras.io.nifti import Volume, check_same_grid, load_volume, same_grid, save_like

__all__ = ["Volume", "check_same_grid", "load_volume", "same_grid", "save_like"]
