"""Helpers shared by the export tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wmhkeras.export.verification import check_artifact


def leftovers(folder: Path) -> list[str]:
    """Hidden staging folders an export left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-")) if folder.exists() else []


def mask_dice(a, b) -> float:
    """The mask Dice the export reports for probabilities ``a`` against ``b`` (threshold 0.5, all voxels)."""
    return check_artifact("test", "test", None, 0.0, np.asarray(a), np.asarray(b), {}).mask_dice


MODES = {
    "fixed": ({"resample": "fixed"}, 1),
    "spacing": ({"resample": "spacing", "spacing": [1.0, 1.0]}, 1),
    "none": ({"resample": "none"}, 1),
    "spacing_context": ({"resample": "spacing", "spacing": [1.0, 1.0], "context_slices": 1}, 3),
    "fixed_context": ({"resample": "fixed", "context_slices": 1}, 3),
}
