"""Checks of an input against what the model card says the model was trained on, at ``segment`` time.

Voxel size: the card of an export records the training subjects' FLAIR voxel sizes per canonical axis
(``input_requirements.voxel_size_mm``: ``min``, ``max``, ``median``, in mm along RAS+ X, Y, Z). An input
is *far outside* them when, along any axis, its voxel size is more than :data:`FAR_ABOVE` (1.5) times the
largest training voxel size on that axis, or less than :data:`FAR_BELOW` (0.5) times the smallest. Then
a warning is logged and the subject is still segmented: the model never saw such data, so its output
deserves a look. Nothing is checked for a model without a card (a ``.keras`` file or a run folder) or a
card without voxel sizes.

Skull stripping: when the card says the training scans were skull-stripped, an input whose tissue (the
voxels the ``zscore`` normalisation counts as brain: brighter than
:data:`~wmhkeras.data.preprocessing.BRAIN_THRESHOLD` times the maximum) takes more than :data:`HEAD_ML`
mL holds more than any adult brain: it most likely still has its skull and scalp. Then a warning is
logged and the subject is still segmented. No TensorFlow here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Optional

import numpy as np

from wmhkeras.data.preprocessing import BRAIN_THRESHOLD
from wmhkeras.io.model_card import ModelCard, VoxelSize

log = logging.getLogger(__name__)

#: An input axis is far outside when its voxel size exceeds this times the largest in training ...
FAR_ABOVE = 1.5
#: ... or is below this times the smallest in training.
FAR_BELOW = 0.5
AXES = ("X", "Y", "Z")
#: More tissue than this (mL) is more than an adult brain holds (intracranial volumes reach about 2000 mL).
HEAD_ML = 2200.0


def voxel_size_problems(voxel_size: Sequence[float], trained: VoxelSize) -> list[str]:
    """One line per axis where ``voxel_size`` (mm, canonical X, Y, Z) is far outside ``trained``."""
    problems = []
    for axis, size, low, high in zip(AXES, voxel_size, trained.min, trained.max, strict=True):
        if size > FAR_ABOVE * high:
            problems.append(f"{axis} {size:.3g} mm is above {FAR_ABOVE:g} x the largest in training ({high:.3g} mm)")
        elif size < FAR_BELOW * low:
            problems.append(f"{axis} {size:.3g} mm is below {FAR_BELOW:g} x the smallest in training ({low:.3g} mm)")
    return problems


def check_voxel_size(card: Optional[ModelCard], voxel_size: Optional[Sequence[float]], subject: str = "") -> list[str]:
    """Log a warning naming ``subject`` when its ``voxel_size`` is far outside the card's training voxel
    sizes (see the module's rule); returns the problems (empty: fine, or nothing to compare with)."""
    trained = None if card is None else card.input_requirements.voxel_size_mm
    if trained is None or voxel_size is None:
        return []
    problems = voxel_size_problems(tuple(float(v) for v in voxel_size), trained)
    if problems:
        shown = " x ".join(f"{v:.3g}" for v in voxel_size)
        log.warning("%s: voxel size %s mm is far outside the model's training data (%s to %s mm, %d subjects): %s; "
                    "the segmentation may be poor, check it", subject or "input", shown,
                    " x ".join(f"{v:.3g}" for v in trained.min), " x ".join(f"{v:.3g}" for v in trained.max),
                    trained.subjects, "; ".join(problems))
    return problems


def tissue_volume_ml(flair: np.ndarray, voxel_volume_ml: float, threshold: float = BRAIN_THRESHOLD) -> float:
    """The volume (mL) of the voxels brighter than ``threshold`` times ``flair``'s maximum: the region the
    ``zscore`` normalisation treats as brain."""
    flair = np.asarray(flair, dtype=np.float32)
    peak = float(flair.max()) if flair.size else 0.0
    return float(np.count_nonzero(flair > threshold * peak)) * float(voxel_volume_ml) if peak > 0 else 0.0


def check_skull_stripped(card: Optional[ModelCard], flair: np.ndarray, voxel_volume_ml: float,
                         subject: str = "") -> Optional[str]:
    """Log a warning naming ``subject`` when the card says the model was trained on skull-stripped scans
    and ``flair`` holds more than :data:`HEAD_ML` mL of tissue; returns the problem (``None``: fine, or a
    card that does not say)."""
    if card is None or card.input_requirements.skull_stripped is not True:
        return None
    volume = tissue_volume_ml(flair, voxel_volume_ml)
    if volume <= HEAD_ML:
        return None
    problem = (f"{volume:.0f} mL of tissue is above the {HEAD_ML:.0f} mL any adult brain holds: the scan looks "
               "not skull-stripped")
    log.warning("%s: %s, but the model was trained on skull-stripped FLAIR; extra-cerebral tissue may be "
                "segmented and the intensity normalisation differs. Skull-strip it first, or pass --brain-mask "
                "(a brain mask of this scan) to keep only predictions inside the brain", subject or "input", problem)
    return problem
