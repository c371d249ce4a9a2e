"""File names: NIfTI suffixes, subject ids from file names, and the names of segmentation outputs.

No TensorFlow: ``wmhkeras evaluate`` matches predictions to truths with these names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

#: Suffixes of the output files of one subject, after ``<subject>``.
PROB_SUFFIX = "_wmh_prob.nii.gz"
MASK_SUFFIX = "_wmh_mask.nii.gz"
#: The flip test-time augmentation's disagreement ``|p - p_flipped|`` (``wmhkeras segment --uncertainty``).
UNCERTAINTY_SUFFIX = "_wmh_uncertainty.nii.gz"
LESIONS_SUFFIX = "_lesions.csv"
#: The NIfTI files ``wmhkeras segment`` writes per subject.
OUTPUT_SUFFIXES = (PROB_SUFFIX, MASK_SUFFIX, UNCERTAINTY_SUFFIX)
SUMMARY_NAME = "summary.csv"
NIFTI_SUFFIXES = (".nii.gz", ".nii")




def is_nifti(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def strip_nifti(name: str) -> str:
    """``'sub01_FLAIR.nii.gz'`` -> ``'sub01_FLAIR'``."""
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def subject_id(path: str | Path, tags: Sequence[str] = ("FLAIR",)) -> str:
    """The subject id of a file: its name without ``.nii``/``.nii.gz`` and without a trailing tag.

    A trailing tag (case-insensitive, with an optional ``_``, ``-`` or ``.`` before it) is removed:
    ``sub01_FLAIR.nii.gz`` -> ``sub01``, ``sub01FLAIR.nii`` -> ``sub01``. When nothing is left
    (``patient07/FLAIR.nii.gz``), the id is the name of the file's folder (``patient07``).
    """
    path = Path(path)
    stem = strip_nifti(path.name)
    for tag in tags:
        stripped = re.sub(rf"[_\-.]?{re.escape(tag)}$", "", stem, flags=re.IGNORECASE)
        if stripped != stem:
            stem = stripped
            break
    return stem or path.resolve().parent.name


def swap_tag(path: Path, tag: str, new: str) -> Optional[Path]:
    """``dir/sub01_FLAIR.nii.gz`` -> ``dir/sub01_T1.nii.gz`` (same suffix) if the tag ends the name."""
    stem = strip_nifti(path.name)
    match = re.search(rf"{re.escape(tag)}$", stem, flags=re.IGNORECASE)
    if not match:
        return None
    return path.with_name(stem[: match.start()] + new + path.name[len(stem):])


def is_output_map(path: str | Path, suffixes: Sequence[str] = (PROB_SUFFIX, UNCERTAINTY_SUFFIX)) -> bool:
    """Whether ``path`` is a map written by ``wmhkeras segment`` (default: probability or uncertainty;
    pass :data:`OUTPUT_SUFFIXES` to include the mask), compared without the NIfTI suffix."""
    stem = strip_nifti(Path(path).name)
    return any(stem.endswith(strip_nifti(s)) for s in suffixes)
