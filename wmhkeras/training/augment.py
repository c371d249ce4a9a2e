"""Training augmentation applied identically to image and mask, with Keras 3 built-in ops.

The paper (Mac et al., MIDL 2020, section 3.2) augments with random rotations up to 30 degrees. The
toolkit adds optional left-right flips, intensity scaling and gamma. Geometry is applied once to the
image and mask *concatenated* along the channel axis, so both see exactly the same transform; the mask
channel is interpolated bilinearly with the image and re-binarised at 0.5 (labels must stay binary
before soft-labelling), which keeps it aligned with the interpolated image to the voxel.

tensorflow-addons (``tfa.image.rotate``), the usual tool for this in TF 2 code, is end-of-life and does
not support current TensorFlow; Keras 3's built-ins replace it: ``keras.layers.RandomRotation`` and
``keras.layers.RandomFlip``, which call ``keras.ops.image.affine_transform`` and ``keras.ops.flip``.
We call those two ops directly with parameters drawn by a *stateless* generator keyed on
``(seed, batch index)``. The layers keep a stateful seed generator, whose draws depend on the order in
which parallel ``tf.data`` workers reach it; the stateless draw makes batch ``b`` the same on every run
with the same seed, whatever the parallelism, and lets the image and mask share the parameters.

Shapes: ``x`` ``(batch, H, W, C)`` float32, ``mask`` ``(batch, H, W, 1)`` float32 in {0, 1}.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from wmhkeras.config import AugmentConfig
from wmhkeras.errors import ConfigError

#: Mask values at or above this after bilinear interpolation count as lesion.
MASK_THRESHOLD = 0.5


def rotation_transforms(angles, height: int, width: int):
    """Projective transforms ``(batch, 8)`` rotating each image by ``angles`` (radians) about its centre.

    In ``keras.ops.image.affine_transform``'s convention each row maps an *output* pixel ``(x, y)``
    (x along width, y along height) to the input point it is sampled from.
    """
    angles = tf.convert_to_tensor(angles, tf.float32)
    cos, sin = tf.cos(angles), tf.sin(angles)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    zeros = tf.zeros_like(angles)
    return tf.stack(
        [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, zeros, zeros], axis=1
    )


class Augmenter:
    """Seeded, stateless augmentation of a batch: ``augmenter(x, mask, batch_index) -> (x, mask)``.

    Args:
        cfg: the ``augment`` config section (``rotation_degrees``, ``flip``, ``intensity_scale``,
            ``gamma``).
        seed: the run seed; batch ``b`` uses the stateless seed ``(seed, b)``.
        normalisation: ``max`` (images in [0, 1], clipped back to [0, 1] after intensity changes) or
            ``zscore`` (no clipping; gamma is refused, it is not defined for negative values).
        context: ``data.context_slices`` ``k``: the channels are modality-major groups of ``2k + 1``
            neighbouring slices, and the slices of one modality share its intensity draws (they come
            from one scan).

    Per sample: a rotation angle uniform in ``[-rotation_degrees, rotation_degrees]`` about the slice
    centre (bilinear, zero fill outside the slice); with ``flip``, a left-right mirror (the X axis,
    i.e. the height axis, the anatomically plausible flip of an axial slice) with probability 1/2; per
    modality, a factor uniform in ``[1 - intensity_scale, 1 + intensity_scale]`` and then a gamma uniform
    in ``[1 - gamma, 1 + gamma]`` (``x ** gamma``), image only. A sample whose rotation would erase all
    its lesion voxels (a one-voxel lesion whose bilinear weights all fall below 0.5) stays unrotated, so
    lesion samples keep their lesion and the configured lesion fraction holds after augmentation.
    """

    def __init__(self, cfg: AugmentConfig, seed: int = 0, normalisation: str = "max", context: int = 0):
        if cfg.gamma > 0 and normalisation != "max":
            raise ConfigError(f"augment.gamma: {cfg.gamma} needs data.normalisation 'max' (images in [0, 1]); "
                              f"got {normalisation!r}; set augment.gamma to 0")
        self.cfg = cfg
        self.seed = int(seed)
        self.normalisation = normalisation
        self.group = 2 * int(context) + 1

    @property
    def active(self) -> bool:
        c = self.cfg
        return c.rotation_degrees > 0 or c.flip or c.intensity_scale > 0 or c.gamma > 0

    def __call__(self, x, mask, batch_index):
        if not self.active:
            return x, mask
        c = self.cfg
        x = tf.convert_to_tensor(x, tf.float32)
        mask = tf.convert_to_tensor(mask, tf.float32)
        batch = tf.shape(x)[0]
        channels = x.shape[-1]
        modalities = channels // self.group
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(batch_index, tf.int64)])
        # One draw per sample: angle, flip, then (scale, gamma) per modality.
        u = tf.random.stateless_uniform(tf.stack([batch, 2 + 2 * modalities]), seed=seed)

        if c.rotation_degrees > 0 or c.flip:
            both = tf.concat([x, mask], axis=-1)
            if c.flip:
                flip = (u[:, 1] < 0.5)[:, None, None, None]
                both = tf.where(flip, keras.ops.flip(both, axis=1), both)
            if c.rotation_degrees > 0:
                angles = (2.0 * u[:, 0] - 1.0) * (c.rotation_degrees * math.pi / 180.0)
                height, width = tf.cast(tf.shape(x)[1], tf.float32), tf.cast(tf.shape(x)[2], tf.float32)
                rotated = keras.ops.image.affine_transform(
                    both, rotation_transforms(angles, height, width), interpolation="bilinear",
                    fill_mode="constant", fill_value=0,
                )
                # A rotation can erase a one-voxel lesion (its bilinear weights all fall below 0.5); such a
                # sample stays unrotated, so that every lesion sample still holds lesion.
                had = tf.reduce_max(both[..., channels:], axis=(1, 2, 3)) >= MASK_THRESHOLD
                has = tf.reduce_max(rotated[..., channels:], axis=(1, 2, 3)) >= MASK_THRESHOLD
                both = tf.where((had & ~has)[:, None, None, None], both, rotated)
            x = both[..., :channels]
            mask = tf.cast(both[..., channels:] >= MASK_THRESHOLD, tf.float32)

        if c.intensity_scale > 0:
            scale = 1.0 + (2.0 * u[:, 2:2 + modalities] - 1.0) * c.intensity_scale
            x = x * tf.repeat(scale, self.group, axis=1)[:, None, None, :]
        if c.gamma > 0:
            gamma = 1.0 + (2.0 * u[:, 2 + modalities:] - 1.0) * c.gamma
            x = tf.pow(tf.maximum(x, 0.0), tf.repeat(gamma, self.group, axis=1)[:, None, None, :])
        if self.normalisation == "max" and (c.intensity_scale > 0 or c.gamma > 0):
            x = tf.clip_by_value(x, 0.0, 1.0)
        return x, mask
