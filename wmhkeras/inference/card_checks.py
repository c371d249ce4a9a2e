"""Checks of an input against what the model card says the model was trained on, at ``segment`` time.

Voxel size: the card of an export records the training subjects' FLAIR voxel sizes per canonical axis
(``input_requirements.voxel_size_mm``: ``min``, ``max``, ``median``, in mm along RAS+ X, Y, Z). An input
is *far outside* them when, along any axis, its voxel size is more than :data:`FAR_ABOVE` (1.5) times the
largest training voxel size on that axis, or less than :data:`FAR_BELOW` (0.5) times the smallest. Then
a warning is logged and the subject is still segmented: the model never saw such data, so its output
deserves a look. Nothing is checked for a model without a card (a ``.keras`` file or a run folder) or a
card without voxel sizes. No TensorFlow here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Optional

from wmhkeras.io.model_card import ModelCard, VoxelSize

log = logging.getLogger(__name__)

#: An input axis is far outside when its voxel size exceeds this times the largest in training ...
FAR_ABOVE = 1.5
#: ... or is below this times the smallest in training.
FAR_BELOW = 0.5
AXES = ("X", "Y", "Z")


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
