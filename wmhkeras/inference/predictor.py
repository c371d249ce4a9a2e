"""One volume: the probability map of a subject (:func:`predict_maps`, :func:`predict_volume`), its lesion
mask (:func:`lesion_mask`) and the brain region predictions are kept in (:func:`brain_region`).

:meth:`Segmenter.preprocess <wmhkeras.inference.loaders.Segmenter.preprocess>` (the one
:func:`~wmhkeras.data.preprocessing.preprocess_volume` shared with training and the exported model, with the
model's resampling and 2.5D context) -> the model on batches of axial slices -> optional left-right flip
test-time augmentation -> :meth:`Segmenter.restore <wmhkeras.inference.loaders.Segmenter.restore>`
(:func:`~wmhkeras.data.preprocessing.restore_volume`) -> a float32 probability map on the canonical grid of
the input; the mask is the probability at or above a threshold, with small 26-connected components removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from wmhkeras.evaluation.metrics import lesion_components
from wmhkeras.inference.loaders import Segmenter


def predict_maps(segmenter: Segmenter, images: Sequence[np.ndarray], batch_size: int = 8, tta_flip: bool = False,
                 voxel_size: Optional[Sequence[float]] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``(probability, disagreement)``: float32 ``[X, Y, Z]`` maps of one subject on its own grid.

    Args:
        images: one canonical ``[X, Y, Z]`` array per modality of the model (FLAIR first).
        batch_size: slices per model call (memory vs. speed); the volume never goes through at once.
        tta_flip: also segment the left-right mirrored slices (in RAS the first slice axis, height, is
            left-right) and average the two probability maps. ``disagreement`` is then ``|p - p_flipped|``
            per voxel (both maps restored to the input grid), else ``None``.
        voxel_size: the voxel size in mm along the canonical axes (``Volume.spacing``); ``spacing``
            resampling needs it.
    """
    import tensorflow as tf

    slices = segmenter.preprocess(images, voxel_size)
    plain, flipped = [], []
    for start in range(0, int(slices.shape[0]), batch_size):
        batch = slices[start : start + batch_size]
        plain.append(tf.convert_to_tensor(segmenter.predict_fn(batch), tf.float32))
        if tta_flip:
            mirrored = tf.convert_to_tensor(segmenter.predict_fn(tf.reverse(batch, [1])), tf.float32)
            flipped.append(tf.reverse(mirrored, [1]))
    shape = images[0].shape
    prob = np.asarray(segmenter.restore(tf.concat(plain, 0), shape, voxel_size), dtype=np.float32)
    if not tta_flip:
        return prob, None
    other = np.asarray(segmenter.restore(tf.concat(flipped, 0), shape, voxel_size), dtype=np.float32)
    return 0.5 * (prob + other), np.abs(prob - other)


def predict_volume(segmenter: Segmenter, images: Sequence[np.ndarray], batch_size: int = 8,
                   tta_flip: bool = False, voxel_size: Optional[Sequence[float]] = None) -> np.ndarray:
    """Probability map ``[X, Y, Z]`` float32 of one subject (:func:`predict_maps` without the disagreement)."""
    return predict_maps(segmenter, images, batch_size, tta_flip, voxel_size)[0]


def brain_region(flair: np.ndarray, brain_mask: Optional[np.ndarray] = None,
                 brain_threshold: Optional[float] = None) -> Optional[np.ndarray]:
    """Where predictions are kept: ``brain_mask > 0.5`` and/or ``flair / max(flair) >= brain_threshold``
    (both when both are given); ``None`` when neither is (everywhere)."""
    region = None if brain_mask is None else np.asarray(brain_mask) > 0.5
    if brain_threshold is not None:
        flair = np.asarray(flair, dtype=np.float32)
        bright = flair / max(float(flair.max()), 1e-12) >= brain_threshold
        region = bright if region is None else region & bright
    return region


def lesion_mask(prob: np.ndarray, threshold: float = 0.5, min_lesion_mm3: float = 0.0,
                voxel_volume_mm3: float = 1.0, min_lesion_voxels: int = 0) -> np.ndarray:
    """Binary mask ``[X, Y, Z]`` uint8: ``prob >= threshold``, then 26-connected components smaller
    than ``min_lesion_mm3`` (voxel count times ``voxel_volume_mm3``) or than ``min_lesion_voxels`` voxels
    removed."""
    mask = np.asarray(prob) >= threshold
    if (min_lesion_mm3 > 0 or min_lesion_voxels > 0) and mask.any():
        labels, n = lesion_components(mask)
        voxels = np.bincount(labels.ravel(), minlength=n + 1)
        # a 3-voxel lesion of 1 mm^3 voxels stays at 3 mm^3
        keep = (voxels * voxel_volume_mm3 >= min_lesion_mm3 * (1 - 1e-6)) & (voxels >= min_lesion_voxels)
        keep[0] = False
        mask = keep[labels]
    return mask.astype(np.uint8)
