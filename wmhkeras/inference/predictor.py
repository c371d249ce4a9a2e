"""One volume: the probability map of a subject (:func:`predict_volume`) and its lesion mask (:func:`lesion_mask`).

:func:`~wmhkeras.data.preprocessing.preprocess_volume` (the one preprocessing shared with training and the
exported model) -> the model on batches of axial slices -> optional left-right flip test-time
augmentation -> :func:`~wmhkeras.data.preprocessing.restore_volume` -> a float32 probability map on the
canonical grid; the mask is the probability at or above a threshold, with 26-connected components
smaller than a volume in mm^3 removed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wmhkeras.data.preprocessing import restore_volume
from wmhkeras.evaluation.metrics import lesion_components
from wmhkeras.inference.loaders import Segmenter


def predict_volume(segmenter: Segmenter, images: Sequence[np.ndarray], batch_size: int = 8,
                   tta_flip: bool = False) -> np.ndarray:
    """Probability map ``[X, Y, Z]`` float32 of one subject.

    Args:
        images: one canonical ``[X, Y, Z]`` array per modality of the model (FLAIR first).
        batch_size: slices per model call (memory vs. speed).
        tta_flip: also segment the left-right mirrored slices (in RAS the first slice axis, height, is
            left-right) and average the two probability maps.
    """
    import tensorflow as tf

    slices = segmenter.preprocess(images)
    outputs = []
    for start in range(0, int(slices.shape[0]), batch_size):
        batch = slices[start : start + batch_size]
        prob = tf.convert_to_tensor(segmenter.predict_fn(batch), tf.float32)
        if tta_flip:
            flipped = tf.convert_to_tensor(segmenter.predict_fn(tf.reverse(batch, [1])), tf.float32)
            prob = 0.5 * (prob + tf.reverse(flipped, [1]))
        outputs.append(prob)
    return np.asarray(restore_volume(tf.concat(outputs, 0), images[0].shape), dtype=np.float32)


def lesion_mask(prob: np.ndarray, threshold: float = 0.5, min_lesion_mm3: float = 0.0,
                voxel_volume_mm3: float = 1.0) -> np.ndarray:
    """Binary mask ``[X, Y, Z]`` uint8: ``prob >= threshold``, then 26-connected components smaller
    than ``min_lesion_mm3`` (voxel count times ``voxel_volume_mm3``) removed."""
    mask = np.asarray(prob) >= threshold
    if min_lesion_mm3 > 0 and mask.any():
        labels, n = lesion_components(mask)
        sizes_mm3 = np.bincount(labels.ravel(), minlength=n + 1) * voxel_volume_mm3
        keep = sizes_mm3 >= min_lesion_mm3 * (1 - 1e-6)  # a 3-voxel lesion of 1 mm^3 voxels stays at 3 mm^3
        keep[0] = False
        mask = keep[labels]
    return mask.astype(np.uint8)
