"""Helpers shared by the CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result

from tests.inference.helpers import blob_volume, write_nifti
from wmhkeras.cli.main import main


def run_cli(*args) -> Result:
    """``wmhkeras ARGS...`` in this process (click's :class:`~click.testing.CliRunner`), each argument as a string."""
    return CliRunner().invoke(main, [str(a) for a in args])


def write_blob_scans(folder: Path, subjects) -> Path:
    """``folder``/``<subject>``.nii.gz for each of ``subjects``: a blob volume each (seed: its place in the list)."""
    for i, s in enumerate(subjects):
        write_nifti(folder / f"{s}.nii.gz", blob_volume(i), np.eye(4))
    return folder
