"""Reading and writing data files: NIfTI volumes (:mod:`wmhkeras.io.nifti`)."""

from wmhkeras.io.nifti import Volume, check_same_grid, load_volume, same_grid, save_like

__all__ = ["Volume", "check_same_grid", "load_volume", "same_grid", "save_like"]
