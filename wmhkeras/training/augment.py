"""Training augmentation applied identically to image and mask, with Keras 3 built-in ops.

The paper (Mac et al., MIDL 2020, section 3.2) augments with random rotations up to 30 degrees. The
toolkit adds optional left-right flips, zoom, and image-only intensity changes (scale, shift, gamma,
Gaussian noise: the nnU-Net set, which is what lets one scanner's training data meet another's). Geometry is applied once to the
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
from wmhkeras.vocabulary import NORMALISATIONS

#: Mask values at or above this after bilinear interpolation count as lesion.
MASK_THRESHOLD = 0.5
#: Control points of the histogram shift over a sample's range: both ends (fixed) and three inner ones.
HISTOGRAM_POINTS = 5


def gaussian_blur(x, sigma, radius: int = 4):
    """Each sample of ``x`` ``(batch, H, W, C)`` blurred by a Gaussian of its own ``sigma`` (pixels; 0 leaves
    it unchanged), separably, edges reflected. The batch rides in the channels of one depthwise
    convolution, so every sample has its own kernel."""
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    sigma = tf.maximum(tf.convert_to_tensor(sigma, tf.float32), 1e-3)
    kernel = tf.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)  # (batch, 2r+1)
    batch, height, width, channels = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2], x.shape[-1]
    stacked = tf.reshape(tf.transpose(x, (1, 2, 0, 3)), tf.stack([1, height, width, batch * channels]))
    per_channel = tf.reshape(tf.repeat(kernel, channels, axis=0), tf.stack([batch * channels, 2 * radius + 1]))
    taps = tf.transpose(per_channel)  # (2r+1, batch*C)
    pad = [[0, 0], [radius, radius], [radius, radius], [0, 0]]
    stacked = tf.pad(stacked, pad, mode="REFLECT")
    stacked = tf.nn.depthwise_conv2d(stacked, taps[:, None, :, None], [1, 1, 1, 1], "VALID")
    stacked = tf.nn.depthwise_conv2d(stacked, taps[None, :, :, None], [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(stacked, tf.stack([height, width, batch, channels])), (2, 0, 1, 3))


def rotation_transforms(angles, height: int, width: int, zoom=None):
    """Projective transforms ``(batch, 8)`` rotating each image by ``angles`` (radians) about its centre.

    With ``zoom`` (one factor per image, > 1 magnifies) the rotation is followed by a zoom about the
    same centre. In ``keras.ops.image.affine_transform``'s convention each row maps an *output* pixel
    ``(x, y)`` (x along width, y along height) to the input point it is sampled from:
    ``input = centre + R (output - centre) / zoom``.
    """
    angles = tf.convert_to_tensor(angles, tf.float32)
    inverse = tf.ones_like(angles) if zoom is None else 1.0 / tf.convert_to_tensor(zoom, tf.float32)
    cos, sin = tf.cos(angles) * inverse, tf.sin(angles) * inverse
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    zeros = tf.zeros_like(angles)
    return tf.stack(
        [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, zeros, zeros], axis=1
    )


class Augmenter:
    """Seeded, stateless augmentation of a batch: ``augmenter(x, mask, batch_index) -> (x, mask)``.

    Args:
        cfg: the ``augment`` config section (:class:`~wmhkeras.config.AugmentConfig`).
        seed: the run seed; batch ``b`` uses the stateless seed ``(seed, b)``.
        normalisation: ``max`` (images in [0, 1], clipped back to [0, 1] after intensity changes) or
            ``zscore`` (no clipping; gamma acts on each sample rescaled to [0, 1] by its own minimum
            and maximum and is mapped back, as nnU-Net does, so it is defined for negative values).
        context: ``data.context_slices`` ``k``: the channels are modality-major groups of ``2k + 1``
            neighbouring slices, and the slices of one modality share its intensity draws (they come
            from one scan).

    Per sample: a rotation angle uniform in ``[-rotation_degrees, rotation_degrees]`` about the slice
    centre and, with ``scale``, a zoom uniform in ``[1 - scale, 1 + scale]`` about it (bilinear, zero
    fill outside the slice); with ``flip``, a left-right mirror (the X axis, i.e. the height axis, the
    anatomically plausible flip of an axial slice) with probability 1/2. Then, image only and per
    modality: a factor uniform in ``[1 - intensity_scale, 1 + intensity_scale]``; an offset uniform in
    ``[-intensity_shift, intensity_shift]``; a gamma uniform in ``[1 - gamma, 1 + gamma]``
    (``x ** gamma`` for ``max``; for ``zscore``, on the sample rescaled to [0, 1] by its own range and
    back); and Gaussian noise whose standard deviation is uniform in ``[0, noise]`` per sample. A sample
    whose rotation or zoom would erase all its lesion voxels (a one-voxel lesion whose bilinear weights
    all fall below 0.5) stays untransformed, so lesion samples keep their lesion and the configured
    lesion fraction holds after augmentation.

    With ``histogram_shift`` (before the intensity changes): a random monotone piecewise-linear remapping
    of each modality over the sample's range (:meth:`_histogram`), so that the contrast between tissues
    varies as it does between scanners.

    The draws of the options the paper's set lacks (``scale``, ``intensity_shift``, ``noise``, and
    gamma under ``zscore``) come from a second stateless stream, so switching them on leaves every
    other draw, and so older seeded runs, unchanged; the scanner variation draws from a third stream and
    the histogram shift from a fourth.
    """

    #: Added to the seed's first word for the second stream of draws.
    EXTRA_STREAM = 7919

    def __init__(self, cfg: AugmentConfig, seed: int = 0, normalisation: str = "max", context: int = 0):
        if normalisation not in NORMALISATIONS:
            raise ConfigError(f"data.normalisation: {normalisation!r} is not 'max' or 'zscore'")
        self.cfg = cfg
        self.seed = int(seed)
        self.normalisation = normalisation
        self.group = 2 * int(context) + 1

    @property
    def active(self) -> bool:
        c = self.cfg
        return (c.rotation_degrees > 0 or c.flip or c.scale > 0 or c.intensity_scale > 0 or c.gamma > 0
                or c.intensity_shift > 0 or c.noise > 0 or c.histogram_shift > 0 or self.scanner)

    @property
    def scanner(self) -> bool:
        """Whether any scanner variation (bias field, blur, low resolution) is on."""
        c = self.cfg
        return c.bias_field > 0 or c.blur > 0 or c.low_resolution > 0

    def __call__(self, x, mask, batch_index):
        if not self.active:
            return x, mask
        c = self.cfg
        x = tf.convert_to_tensor(x, tf.float32)
        mask = tf.convert_to_tensor(mask, tf.float32)
        batch = tf.shape(x)[0]
        modalities = x.shape[-1] // self.group
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(batch_index, tf.int64)])
        # One draw per sample: angle, flip, then (scale, gamma) per modality.
        u = tf.random.stateless_uniform(tf.stack([batch, 2 + 2 * modalities]), seed=seed)
        # The second stream: zoom, noise level, then (shift, zscore gamma) per modality.
        v = tf.random.stateless_uniform(tf.stack([batch, 2 + 2 * modalities]),
                                        seed=seed + tf.constant([self.EXTRA_STREAM, 0], tf.int64))

        if c.rotation_degrees > 0 or c.flip or c.scale > 0:
            x, mask = self._geometry(x, mask, u, v)
        if self.scanner:
            # The third stream: blur, resolution, bias amplitude, then the bias field's 5 coefficients.
            w = tf.random.stateless_uniform(tf.stack([batch, 8]),
                                            seed=seed + tf.constant([3 * self.EXTRA_STREAM, 0], tf.int64))
            x = self._scanner(x, w, modalities)
        if c.histogram_shift > 0:
            # The fourth stream: the inner control points of each modality's histogram shift.
            h = tf.random.stateless_uniform(tf.stack([batch, modalities * (HISTOGRAM_POINTS - 2)]),
                                            seed=seed + tf.constant([4 * self.EXTRA_STREAM, 0], tf.int64))
            x = self._histogram(x, h, modalities)
        x = self._intensity(x, u, v, modalities)
        if c.noise > 0:
            sigma = v[:, 1] * c.noise
            x = x + sigma[:, None, None, None] * tf.random.stateless_normal(
                tf.shape(x), seed=seed + tf.constant([2 * self.EXTRA_STREAM, 0], tf.int64))
        if self.normalisation == "max" and (c.intensity_scale > 0 or c.gamma > 0 or c.intensity_shift > 0
                                            or c.noise > 0):
            x = tf.clip_by_value(x, 0.0, 1.0)
        return x, mask

    def _geometry(self, x, mask, u, v):
        """Flip, rotation and zoom of image and mask together (one transform per sample)."""
        c = self.cfg
        channels = x.shape[-1]
        both = tf.concat([x, mask], axis=-1)
        if c.flip:
            flip = (u[:, 1] < 0.5)[:, None, None, None]
            both = tf.where(flip, keras.ops.flip(both, axis=1), both)
        if c.rotation_degrees > 0 or c.scale > 0:
            angles = (2.0 * u[:, 0] - 1.0) * (c.rotation_degrees * math.pi / 180.0)
            zoom = 1.0 + (2.0 * v[:, 0] - 1.0) * c.scale if c.scale > 0 else None
            height, width = tf.cast(tf.shape(x)[1], tf.float32), tf.cast(tf.shape(x)[2], tf.float32)
            moved = keras.ops.image.affine_transform(
                both, rotation_transforms(angles, height, width, zoom), interpolation="bilinear",
                fill_mode="constant", fill_value=0,
            )
            # A rotation or zoom can erase a one-voxel lesion (its bilinear weights all fall below 0.5);
            # such a sample stays untransformed, so that every lesion sample still holds lesion.
            had = tf.reduce_max(both[..., channels:], axis=(1, 2, 3)) >= MASK_THRESHOLD
            has = tf.reduce_max(moved[..., channels:], axis=(1, 2, 3)) >= MASK_THRESHOLD
            both = tf.where((had & ~has)[:, None, None, None], both, moved)
        return both[..., :channels], tf.cast(both[..., channels:] >= MASK_THRESHOLD, tf.float32)

    def _scanner(self, x, w, modalities: int):
        """Scanner variation, image only: a smooth multiplicative bias field, Gaussian blur, a lower
        resolution (down and back up, bilinear). One draw per sample, shared by its channels."""
        c = self.cfg
        if c.bias_field > 0:
            x = self._bias(x, w, modalities)
        if c.blur > 0:
            x = gaussian_blur(x, w[:, 0] * c.blur)
        if c.low_resolution > 0:
            factor = 1.0 + w[:, 1] * c.low_resolution
            height, width = x.shape[1], x.shape[2]

            def resample(args):
                image, f = args
                small = tf.maximum(tf.cast(tf.round(tf.constant([height, width], tf.float32) / f), tf.int32), 1)
                return tf.image.resize(tf.image.resize(image[None], small, "bilinear", antialias=True),
                                       (height, width), "bilinear")[0]

            x = tf.map_fn(resample, (x, factor), fn_output_signature=tf.float32)
        return x

    def _bias(self, x, w, modalities: int):
        """``x`` times ``exp(f)``, ``f`` a second-order polynomial over the sample (coordinates in
        [-1, 1]) with ``|f| <= bias_field``; under ``zscore`` relative to each channel's minimum over the
        sample (the background)."""
        c = self.cfg
        shape = tf.shape(x)
        rows = tf.linspace(-1.0, 1.0, shape[1])[:, None]
        cols = tf.linspace(-1.0, 1.0, shape[2])[None, :]
        basis = tf.stack([rows + 0 * cols, cols + 0 * rows, rows**2 + 0 * cols, cols**2 + 0 * rows,
                          rows * cols])  # (5, H, W), each in [-1, 1]
        coefficients = 2.0 * w[:, 3:8] - 1.0
        scale = w[:, 2] * c.bias_field / tf.maximum(tf.reduce_sum(tf.abs(coefficients), axis=1), 1e-6)
        field = tf.exp(tf.einsum("bk,khw->bhw", coefficients, basis) * scale[:, None, None])[..., None]
        if self.normalisation == "max":
            return x * field
        low = tf.reduce_min(x, axis=(1, 2), keepdims=True)
        return low + (x - low) * field

    def _per_channel(self, draws):
        """``(batch, modalities)`` draws broadcast to ``(batch, 1, 1, channels)``: the context slices of a
        modality share its draws."""
        return tf.repeat(draws, self.group, axis=1)[:, None, None, :]

    def _sample_range(self, x, modalities: int):
        """Each modality's minimum and span (maximum - minimum, at least 1e-6) over the sample (all its
        context slices), broadcast to its channels: ``(batch, 1, 1, channels)`` each."""
        shape = tf.shape(x)
        grouped = tf.reshape(x, tf.stack([shape[0], shape[1], shape[2], modalities, self.group]))
        low = tf.reduce_min(grouped, axis=(1, 2, 4))
        high = tf.reduce_max(grouped, axis=(1, 2, 4))
        return self._per_channel(low), self._per_channel(tf.maximum(high - low, 1e-6))

    def _histogram(self, x, h, modalities: int):
        """A monotone piecewise-linear remapping of each modality over the sample's range (a histogram
        shift in the manner of MONAI's ``RandHistogramShift``, with a fixed number of points and bounded
        moves): the range ``[low, high]`` is cut into ``n = HISTOGRAM_POINTS - 1`` equal segments; the ends
        stay and each inner control point ``k / n`` moves to ``k / n + (2 u - 1) * histogram_shift / n``,
        ``u`` its uniform draw in ``h``. Each inner segment's slope is in ``[1 - 2 histogram_shift,
        1 + 2 histogram_shift]``, each end segment's in ``[1 - histogram_shift, 1 + histogram_shift]``, and
        the map stays strictly increasing. Written as ``y = sum_k d_k * clip(n t - k, 0, 1)``, with ``d_k``
        the rise of segment ``k`` and ``t`` the value in [0, 1]."""
        n = HISTOGRAM_POINTS - 1
        moved = tf.range(1, n, dtype=tf.float32) / n + (2.0 * tf.reshape(h, (-1, modalities, n - 1)) - 1.0) * (
            self.cfg.histogram_shift / n)
        batch = tf.shape(h)[0]
        points = tf.concat([tf.zeros(tf.stack([batch, modalities, 1])), moved,
                            tf.ones(tf.stack([batch, modalities, 1]))], axis=-1)
        rises = tf.repeat(points[..., 1:] - points[..., :-1], self.group, axis=1)[:, None, None]  # (batch, 1, 1, channels, n)
        low, span = self._sample_range(x, modalities)
        t = tf.clip_by_value((x - low) / span, 0.0, 1.0)
        steps = tf.clip_by_value(n * t[..., None] - tf.range(n, dtype=tf.float32), 0.0, 1.0)
        return low + span * tf.reduce_sum(rises * steps, axis=-1)

    def _intensity(self, x, u, v, modalities: int):
        """Scale, shift and gamma per modality (the context slices of a modality share the draws)."""
        c = self.cfg
        per_channel = self._per_channel
        if c.intensity_scale > 0:
            x = x * per_channel(1.0 + (2.0 * u[:, 2:2 + modalities] - 1.0) * c.intensity_scale)
        if c.intensity_shift > 0:
            x = x + per_channel((2.0 * v[:, 2:2 + modalities] - 1.0) * c.intensity_shift)
        if c.gamma > 0 and self.normalisation == "max":
            gamma = 1.0 + (2.0 * u[:, 2 + modalities:] - 1.0) * c.gamma
            x = tf.pow(tf.maximum(x, 0.0), per_channel(gamma))
        elif c.gamma > 0:
            gamma = per_channel(1.0 + (2.0 * v[:, 2 + modalities:] - 1.0) * c.gamma)
            low, span = self._sample_range(x, modalities)
            x = low + span * tf.pow(tf.clip_by_value((x - low) / span, 0.0, 1.0), gamma)
        return x
