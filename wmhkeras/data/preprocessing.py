"""Preprocessing shared by training, ``wmhkeras segment`` and the exported SavedModel.

Every step is written once, in TensorFlow ops, so that the same code runs eagerly on NumPy
arrays, inside ``tf.data`` pipelines and inside the exported model's graph:

* :func:`normalise` - per-volume max normalisation (the paper) or z-score inside a brain mask;
* :func:`volume_to_slices` / :func:`slices_to_volume` - axial slicing ``[X, Y, Z, C] <-> [Z, X, Y, C]``;
* :func:`resize_slices` - bilinear resizing that reproduces ``skimage.transform.resize`` with its
  defaults (``order=1``, ``mode='reflect'``, Gaussian anti-aliasing when downsampling), the
  resizing the paper used, written as two small matrix products so that it runs in any graph;
* :func:`preprocess_volume` / :func:`restore_volume` - the whole chain for segmentation.

TensorFlow is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence

from wmhkeras.errors import ConfigError

from wmhkeras.io.model_card import NORMALISATIONS  # noqa: E402  (the names a model card may record)


def _tf():
    import tensorflow as tf

    return tf


def normalise(volume, method: str = "max", brain_threshold: float = 0.1):
    """Normalise one modality's volume (any shape) as a float32 tensor.

    ``max``: divide by the volume's maximum, giving values in [0, 1] (Mac et al. 2020, sec. 3.2).
    ``zscore``: subtract the mean and divide by the standard deviation of the voxels inside a brain
    mask, the voxels brighter than ``brain_threshold`` times the maximum (Li et al. 2018 use a
    threshold mask the same way); voxels outside the mask are set to 0.
    """
    tf = _tf()
    x = tf.convert_to_tensor(volume, dtype=tf.float32)
    peak = tf.reduce_max(x)
    if method == "max":
        return x / tf.maximum(peak, 1e-12)
    if method == "zscore":
        mask = x > brain_threshold * peak
        inside = tf.boolean_mask(x, mask)
        mean = tf.reduce_mean(inside)
        std = tf.math.reduce_std(inside)
        return tf.where(mask, (x - mean) / tf.maximum(std, 1e-12), tf.zeros_like(x))
    raise ConfigError(f"normalisation: {method!r} is not known; use one of {', '.join(NORMALISATIONS)}")


def _mirror(index, n):
    """Map integer indices onto [0, n) reflecting about the edge samples (ndimage mode 'mirror')."""
    tf = _tf()
    if_one = tf.zeros_like(index)
    period = tf.maximum(2 * n - 2, 1)
    m = tf.math.floormod(tf.abs(index), period)
    m = tf.where(m >= n, period - m, m)
    return tf.where(tf.equal(n, 1), if_one, m)


def resize_matrix(n_in, n_out):
    """The ``[n_out, n_in]`` float32 matrix that resizes one axis like ``skimage.transform.resize``.

    Anti-aliasing (when ``n_out < n_in``): a Gaussian of sigma ``(n_in / n_out - 1) / 2`` truncated at
    4 sigma, mirrored at the borders (``scipy.ndimage.gaussian_filter``, mode 'mirror'). Then linear
    interpolation at ``(o + 0.5) * n_in / n_out - 0.5`` (``scipy.ndimage.zoom`` with
    ``grid_mode=True``), mirrored at the borders. Built in float64 and cast once.
    """
    tf = _tf()
    n_in = tf.cast(n_in, tf.int32)
    n_out = tf.cast(n_out, tf.int32)
    f = tf.cast(n_in, tf.float64) / tf.cast(n_out, tf.float64)

    coord = (tf.cast(tf.range(n_out), tf.float64) + 0.5) * f - 0.5
    lower = tf.floor(coord)
    t = (coord - lower)[:, None]
    lower = tf.cast(lower, tf.int32)
    interp = (1.0 - t) * tf.one_hot(_mirror(lower, n_in), n_in, dtype=tf.float64) + t * tf.one_hot(
        _mirror(lower + 1, n_in), n_in, dtype=tf.float64
    )

    sigma = tf.maximum((f - 1.0) / 2.0, 0.0)
    radius = tf.cast(tf.floor(4.0 * sigma + 0.5), tf.int32)
    offsets = tf.range(-radius, radius + 1)
    dist = tf.cast(offsets, tf.float64)
    weights = tf.exp(-0.5 * tf.square(dist) / tf.maximum(tf.square(sigma), 1e-300))
    weights = weights / tf.reduce_sum(weights)
    rows = tf.range(n_in)[:, None] + offsets[None, :]
    gauss = tf.reduce_sum(
        weights[None, :, None] * tf.one_hot(_mirror(rows, n_in), n_in, dtype=tf.float64), axis=1
    )
    # ndimage skips the filter where sigma is (near) zero: upsampled axes are never smoothed.
    matrix = tf.cond(sigma > 1e-15, lambda: tf.matmul(interp, gauss), lambda: interp)
    return tf.cast(matrix, tf.float32)


def resize_slices(slices, size: Sequence[int]):
    """Resize a batch of slices ``(batch, height, width, channels)`` to ``size = (h, w)``.

    Each channel of each slice is resized independently, as ``skimage.transform.resize(slice,
    size)`` would with its defaults (see :func:`resize_matrix`). Works eagerly and in graphs with
    dynamic input sizes.
    """
    tf = _tf()
    x = tf.convert_to_tensor(slices, dtype=tf.float32)
    shape = tf.shape(x)
    rows = resize_matrix(shape[1], size[0])
    cols = resize_matrix(shape[2], size[1])
    return tf.einsum("oh,bhwc,pw->bopc", rows, x, cols)


def resize_masks(masks, size: Sequence[int]):
    """Resize binary masks ``(batch, h, w, 1)`` with :func:`resize_slices`, then binarise at 0.5."""
    tf = _tf()
    return tf.cast(resize_slices(masks, size) >= 0.5, tf.float32)


def volume_to_slices(volume):
    """``[X, Y, Z]`` or ``[X, Y, Z, C]`` -> axial slices ``[Z, X, Y, C]``."""
    tf = _tf()
    x = tf.convert_to_tensor(volume, dtype=tf.float32)
    if x.shape.rank == 3:
        x = x[..., None]
    return tf.transpose(x, (2, 0, 1, 3))


def slices_to_volume(slices):
    """Axial slices ``[Z, X, Y, C]`` -> ``[X, Y, Z, C]`` (the inverse of :func:`volume_to_slices`)."""
    tf = _tf()
    return tf.transpose(tf.convert_to_tensor(slices), (1, 2, 0, 3))


def preprocess_volume(channels: Sequence, image_size: Sequence[int], method: str = "max"):
    """The model input for one subject: normalise each modality, slice axially, resize.

    ``channels``: one ``[X, Y, Z]`` array per modality (FLAIR first, then T1 if the model uses it).
    Returns float32 slices ``(Z, image_size[0], image_size[1], len(channels))``.
    """
    tf = _tf()
    stacked = tf.stack([normalise(c, method) for c in channels], axis=-1)
    return resize_slices(volume_to_slices(stacked), image_size)


def restore_volume(probabilities, volume_shape: Sequence[int]):
    """Model output slices ``(Z, h, w, 1)`` -> a probability volume ``[X, Y, Z]`` on the input grid."""
    tf = _tf()
    resized = resize_slices(probabilities, (volume_shape[0], volume_shape[1]))
    return tf.clip_by_value(slices_to_volume(resized)[..., 0], 0.0, 1.0)


def soft_labels(mask, low: float = 0.1, high: float = 0.9):
    """Soft-binarise a {0, 1} mask: 0 -> ``low``, 1 -> ``high`` (Mac et al. 2020, section 3.2).

    Works on NumPy arrays and tensors alike (``low + (high - low) * mask``).
    """
    if not 0.0 <= low < high <= 1.0:
        raise ConfigError(f"soft labels need 0 <= low < high <= 1; got low={low}, high={high}")
    return low + (high - low) * mask
