"""The Python API: segment and evaluate nibabel images in memory, and load any model source.

Reached lazily from the package (``wmhkeras.segment_image`` imports this module on first use)::

    import nibabel as nib
    import wmhkeras

    model = wmhkeras.load_model("open_ms_flair")  # a built-in model, or any path `wmhkeras segment` takes
    prob_img, mask_img = wmhkeras.segment_image(nib.load("flair.nii.gz"), model, tta=True)
    metrics = wmhkeras.evaluate_images(nib.load("wmh.nii.gz"), mask_img)  # {"dice": ..., "hd95": ...}

Every step is the one ``wmhkeras segment`` and ``wmhkeras evaluate`` run on files: images are checked and
reoriented as :func:`~wmhkeras.io.nifti.load_volume` does (:func:`~wmhkeras.io.nifti.image_volume`), the
probability map, brain region and small-lesion removal are
:func:`~wmhkeras.inference.per_subject.segment_volumes`, the function ``segment`` runs per subject (the
model's own preprocessing inside), after its precision is decided as ``segment`` decides it
(:func:`~wmhkeras.inference.precision.decide_precision`, on the image's slices), the outputs are the images
:func:`~wmhkeras.io.nifti.save_like` writes (:func:`~wmhkeras.io.nifti.image_like`), and the metrics are
:func:`~wmhkeras.evaluation.evaluate.score_volumes`. Bad input raises
:class:`~wmhkeras.errors.InputError` or :class:`~wmhkeras.errors.ConfigError` naming the argument.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from wmhkeras.errors import InputError
from wmhkeras.evaluation.evaluate import score_volumes
from wmhkeras.inference.loaders import Segmenter, load_segmenter
from wmhkeras.inference.per_subject import sample_slices, segment_volumes
from wmhkeras.inference.precision import check_precision, decide_precision, is_keras
from wmhkeras.inference.record import SegmentSettings
from wmhkeras.inference.segment import default_spec
from wmhkeras.io import Volume, check_same_grid
from wmhkeras.io.nifti import image_like, image_volume

log = logging.getLogger(__name__)

__all__ = ["evaluate_images", "load_model", "segment_image"]


def load_model(path: str | Path | None = None, precision: str = "float32", flair_img=None, t1_img=None) -> Segmenter:
    """Load a model for :func:`segment_image`, from any source ``wmhkeras segment`` takes, at the precision
    decided once for it.

    Args:
        path: a built-in model's name (``"open_ms_flair"``, ``wmhkeras models``; a path of the same name
            wins), a ``.keras`` file, a run folder (its ``checkpoints/best.keras`` and ``config.yaml``), an
            exported SavedModel folder (its ``model_card.json``) or an exported ``.tflite`` file (needs
            ``pip install 'wmhkeras[litert]'``); None: the default built-in model.
        precision: ``float32``, ``auto`` or ``bfloat16`` (``--precision``), decided here once as ``wmhkeras
            segment`` decides it for a run (:func:`~wmhkeras.inference.precision.decide_precision`): every
            :func:`segment_image` call with this model then computes at that precision.
        flair_img: for ``auto`` or ``bfloat16`` with a Keras model, a FLAIR image (nibabel) whose slices the
            parity gate checks bfloat16 on, as ``segment`` checks the first subject (and ``t1_img``, its T1,
            for a FLAIR + T1 model).

    Returns:
        a :class:`~wmhkeras.inference.loaders.Segmenter`: the loaded model with the preprocessing it was
        trained with (``.modalities``, e.g. ``("flair",)`` or ``("flair", "t1")``; ``.settings``, the
        normalisation, resampling and 2.5D context as ``segment.json`` records them). Called on
        preprocessed slices ``(batch, H, W, C)`` it returns probabilities; give it to :func:`segment_image`,
        which does the preprocessing.

    Raises:
        InputError / ConfigError: the path holds no model, the model disagrees with its recorded settings, the
            precision is not one the model can run at, or ``flair_img`` is missing where the gate needs it.
    """
    segmenter = load_segmenter(default_spec() if path is None else path)
    if precision == "float32":
        return segmenter
    check_precision(precision, "keras" if is_keras(segmenter) else "segmenter", segmenter.source or None,
                    segmenter.card)
    if flair_img is None:
        if is_keras(segmenter):
            raise InputError(f"load_model(precision={precision!r}): give flair_img=, a FLAIR image whose slices the "
                             "bfloat16 parity gate checks")
        return decide_precision(segmenter, precision)
    images, _ = _inputs(image_volume(_nifti(flair_img, "flair_img"), "flair_img"), t1_img, None, segmenter.modalities)
    return decide_precision(segmenter, precision, lambda: sample_slices(segmenter, images))


def _nifti(img, name: str) -> nib.Nifti1Image | nib.Nifti2Image:
    """``img`` as a NIfTI image whose header holds ``img.affine``, as saving it would write it."""
    if not isinstance(img, nib.spatialimages.SpatialImage):
        raise InputError(f"{name}: expected a nibabel image (e.g. nibabel.load(path)), got {type(img).__name__}")
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        img = nib.Nifti1Image.from_image(img)
    return type(img)(img.dataobj, img.affine, img.header)


def _volume(img, name: str, kind: str = "image") -> Volume:
    return image_volume(_nifti(img, name), name, kind)


def _with_affine(img: nib.Nifti1Image, affine: np.ndarray) -> nib.Nifti1Image:
    """``img`` carrying the input's affine exactly as given (its header, which stores float32, is unchanged,
    so saving it writes the same file)."""
    return nib.Nifti1Image(img.dataobj, affine, img.header)


def _model(model: Segmenter | str | Path | None) -> Segmenter:
    if isinstance(model, Segmenter):
        return model
    if model is not None and not isinstance(model, (str, Path)):
        raise InputError(f"model: expected wmhkeras.load_model(path), a path or a built-in model's name, "
                         f"got {type(model).__name__}")
    return load_model(model)


def _inputs(flair: Volume, t1_img, brain_mask_img, modalities) -> tuple[list[Volume], Optional[Volume]]:
    """The model's input volumes (FLAIR first) and the brain mask, all checked to lie on the FLAIR's grid."""
    images = [flair]
    if "t1" in modalities:
        if t1_img is None:
            raise InputError("t1_img: the model uses FLAIR + T1; pass the T1 image on the FLAIR's grid")
        images.append(_volume(t1_img, "t1_img"))
        check_same_grid(images[0], images[1])
    elif t1_img is not None:
        log.warning("t1_img is ignored: the model uses %s only", ", ".join(modalities))
    brain = None
    if brain_mask_img is not None:
        brain = _volume(brain_mask_img, "brain_mask_img")
        check_same_grid(images[0], brain)
    return images, brain


def segment_image(
    flair_img,
    model: Segmenter | str | Path | None = None,
    t1_img=None,
    *,
    threshold: float = 0.5,
    tta: bool = False,
    min_lesion_mm3: float = 0.0,
    min_lesion_voxels: int = 0,
    brain_mask_img=None,
    brain_threshold: Optional[float] = None,
    batch_size: int = 8,
    precision: Optional[str] = None,
) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Segment one FLAIR image in memory: ``(prob_img, mask_img)``, what ``wmhkeras segment`` writes for it.

    Args:
        flair_img: a 3D nibabel image (or 4D with one volume), in any orientation: it is processed in the
            closest RAS+ orientation and the outputs are put back on its grid.
        model: :func:`load_model`'s result (load once, segment many), a path or built-in name it accepts, or
            None for the default built-in model.
        t1_img: the T1 image on the FLAIR's grid, when the model takes FLAIR + T1.
        threshold: probability at and above which a voxel is lesion, in (0, 1] (``--threshold``).
        tta: average with the prediction on left-right mirrored slices (``--tta``).
        min_lesion_mm3, min_lesion_voxels: remove 26-connected lesions smaller than this (one of the two).
        brain_mask_img: predictions outside it (voxels <= 0.5) are zeroed; on the FLAIR's grid.
        brain_threshold: zero predictions where the max-normalised FLAIR is below this fraction.
        batch_size: slices per model call.
        precision: None: the precision :func:`load_model` decided for ``model`` (float32 when it decided
            none). ``auto``, ``float32`` or ``bfloat16`` (``--precision``; Keras models only): decided on this
            image for this call, as ``segment`` decides it, unless ``model`` was decided for the same
            request already: ``auto`` is bfloat16 on hardware with native bfloat16, each behind the parity
            gate of :mod:`wmhkeras.inference.precision`; the choice is logged. To decide once for many
            images, pass it to :func:`load_model`.

    Returns:
        float32 probabilities and the uint8 mask, each a ``nibabel.Nifti1Image`` with the FLAIR's shape,
        voxel order, affine and qform/sform matrices and codes; ``nib.save`` writes the files
        ``wmhkeras segment`` would.

    Raises:
        InputError: an argument is not a nibabel image, not 3D, empty or not finite, a T1 or brain mask is
            missing or on another grid, or the model cannot be loaded. ConfigError: an option is out of range.
    """
    settings = SegmentSettings(threshold=threshold, min_lesion_mm3=min_lesion_mm3, tta_flip=tta, batch_size=batch_size,
                               min_lesion_voxels=min_lesion_voxels, brain_threshold=brain_threshold,
                               precision=precision or "float32")
    settings.check()
    flair_nii = _nifti(flair_img, "flair_img")
    flair = image_volume(flair_nii, "flair_img")  # a bad image fails before a model is loaded
    segmenter = _model(model)
    if precision is None and segmenter.precision:  # as load_model decided it
        settings = replace(settings, precision=segmenter.precision["requested"])
    images, brain = _inputs(flair, t1_img, brain_mask_img, segmenter.modalities)
    loaded = segmenter
    segmenter = decide_precision(loaded, settings.precision, lambda: sample_slices(loaded, images), settings.threshold)
    # The per-subject steps of wmhkeras segment, without its files.
    prob, _, mask = segment_volumes(segmenter, images, brain, settings, "flair_img")
    return (_with_affine(image_like(prob, flair, np.float32), flair_nii.affine),
            _with_affine(image_like(mask, flair, np.uint8), flair_nii.affine))


def evaluate_images(truth_img, pred_img) -> dict[str, float]:
    """The MICCAI 2017 WMH challenge metrics of one prediction, as ``wmhkeras evaluate`` computes them.

    Args:
        truth_img: labels 0, 1 (WMH), 2 (other pathology, ignored), a nibabel image.
        pred_img: the segmentation on the truth's grid (e.g. :func:`segment_image`'s ``mask_img``); integer
            images count as lesion where ``>= 1``, floating-point ones where ``>= 0.5``. Never resampled.

    Returns:
        ``{"dice", "hd95" (mm), "avd" (%), "lesion_recall", "lesion_f1", "precision", "recall",
        "truth_volume_ml", "pred_volume_ml", "truth_lesions", "pred_lesions", "pcd"}``; undefined values are
        ``nan`` (see ``docs/metrics.md``). No TensorFlow is imported.

    Raises:
        InputError: not nibabel images, truth values other than 0/1/2, or the two grids differ.
    """
    return score_volumes(_volume(truth_img, "truth_img", "label"), _volume(pred_img, "pred_img", "mask"))
