"""The checks of ``segment`` before anything is written that need the model: a T1 for every subject of a
FLAIR + T1 model (:func:`check_t1`), and the model loaded, or refused in one line (:func:`load_checked`).

The header pre-pass of the inputs is :func:`~wmhkeras.inference.inputs.check_input_headers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from wmhkeras.errors import InputError, WmhError, exception_line
from wmhkeras.inference.inputs import check_input_headers
from wmhkeras.inference.loaders import Segmenter, load_segmenter
from wmhkeras.inference.sources import ModelSpec
from wmhkeras.io.subject import Subject


def check_t1(items: Sequence[Subject], modalities: Optional[Sequence[str]]) -> None:
    """A FLAIR + T1 model needs a T1 for every subject."""
    if modalities and "t1" in modalities:
        missing = [i.subject for i in items if i.t1 is None]
        if missing:
            raise InputError(
                f"the model uses FLAIR + T1 but no T1 is given for {', '.join(missing[:5])}"
                f"{' and others' if len(missing) > 5 else ''}; pass --t1 FILE per FLAIR file or a manifest with a t1 column"
            )


def load_checked(spec: ModelSpec, items: Sequence[Subject], todo: Sequence[Subject],
                 modalities: Optional[Sequence[str]]) -> Optional[Segmenter]:
    """The model of ``spec``, or None when nothing is to be segmented (every subject complete already).

    A file that cannot be loaded as a model is an :class:`InputError` naming it. When only loading tells
    that the model takes a T1 (``modalities`` unknown before), every T1 gets the header pre-pass now.
    """
    if not todo:
        return None
    try:
        segmenter = load_segmenter(spec)
    except WmhError:
        raise
    except Exception as exc:  # TensorFlow and LiteRT raise many types for files that are not models
        raise InputError(f"{spec.path}: cannot be loaded as a model ({exception_line(exc, 300)})") from None
    if "t1" in segmenter.modalities and any(i.t1 is None for i in items):
        raise InputError(f"{spec.path}: the model uses FLAIR + T1 but not every input has a T1; pass --t1 FILE per FLAIR file")
    if "t1" in segmenter.modalities and "t1" not in (modalities or ()):
        check_input_headers(items, segmenter.modalities)
    return segmenter
