"""Preprocessing shared by training, ``wmhkeras segment`` and the exported SavedModel.

Every step is written once, in TensorFlow ops, so that the same code runs eagerly on NumPy
arrays, inside ``tf.data`` pipelines and inside the exported model's graph:

* :func:`normalise` - per-volume max normalisation (the paper) or z-score inside a brain mask;
* :func:`volume_to_slices` / :func:`slices_to_volume` - axial slicing ``[X, Y, Z, C] <-> [Z, X, Y, C]``;
* :func:`resize_slices` - bilinear resizing that reproduces ``skimage.transform.resize`` with its
  defaults (``order=1``, ``mode='reflect'``, Gaussian anti-aliasing when downsampling), the
  resizing the paper used, written as two small matrix products so that it runs in any graph;
* :class:`Resampling` - how slices reach the model's grid: ``fixed`` (each slice resized to the model's
  ``input_size``, the paper's way), ``spacing`` (each slice resampled to a pixel size in mm, then
  padded to a multiple of ``2**depth``) or ``none`` (the native grid, padded);
* :func:`add_context` - 2.5D input: slices ``z-k .. z+k`` of each modality as channels;
* :func:`preprocess_volume` / :func:`restore_volume` - the whole chain for segmentation.

TensorFlow is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from wmhkeras.errors import ConfigError
from wmhkeras.vocabulary import NORMALISATIONS, RESAMPLE_MODES


def _tf():
    import tensorflow as tf

    return tf


#: A voxel is brain when it is brighter than this fraction of the volume's maximum: the ``zscore`` brain mask,
#: the training cache's brain label and the skull-stripping check.
BRAIN_THRESHOLD = 0.1


def normalise(volume, method: str = "max", brain_threshold: float = BRAIN_THRESHOLD):
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




@dataclass(frozen=True)
class Resampling:
    """The mapping between a volume's axial slices and the model's input grid, and back.

    ``fixed``: every slice is resized to ``input_size`` pixels whatever its size in mm (the paper).
    ``spacing``: every slice is resampled to ``spacing`` mm per pixel (in-plane ``(x, y)``), keeping its
    field of view, then zero-padded (centred) to a multiple of ``multiple`` (``2**depth``).
    ``none``: the native grid, zero-padded the same way.
    :meth:`to_model` and :meth:`from_model` are exact inverses of each other's geometry: the padding is
    cropped and the probabilities resized back onto the input's own grid.
    """

    mode: str = "fixed"
    input_size: Optional[tuple[int, int]] = None
    spacing: Optional[tuple[float, float]] = None
    multiple: int = 1

    def __post_init__(self):
        if self.mode not in RESAMPLE_MODES:
            raise ConfigError(f"data.resample: {self.mode!r} is not known; use one of {', '.join(RESAMPLE_MODES)}")
        if self.mode == "fixed" and (self.input_size is None or len(self.input_size) != 2 or min(self.input_size) < 1):
            raise ConfigError(f"resample 'fixed' needs input_size [height, width]; got {self.input_size!r}")
        if self.mode == "spacing" and (self.spacing is None or len(self.spacing) != 2 or min(self.spacing) <= 0):
            raise ConfigError(f"resample 'spacing' needs data.spacing [x, y] in mm > 0; got {self.spacing!r}")
        if not isinstance(self.multiple, int) or self.multiple < 1:
            raise ConfigError(f"resample multiple must be an integer >= 1; got {self.multiple!r}")
        object.__setattr__(self, "input_size", None if self.input_size is None else tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "spacing", None if self.spacing is None else tuple(float(v) for v in self.spacing))

    def record(self) -> dict:
        """``{mode, spacing, multiple}``, as ``segment.json`` and the model card's ``resample`` record it."""
        return {"mode": self.mode, "spacing": None if self.spacing is None else list(self.spacing),
                "multiple": self.multiple}

    def grid(self, in_size, voxel_size=None):
        """``(size, padded)``: the in-plane size after resampling and after padding, as int32 tensors ``[2]``.

        ``in_size``: the slice's ``(X, Y)``; ``voxel_size``: its voxel size in mm (``spacing`` mode only).
        """
        tf = _tf()
        in_size = tf.cast(in_size, tf.int32)[:2]
        if self.mode == "fixed":
            return tf.constant(self.input_size, tf.int32), tf.constant(self.input_size, tf.int32)
        if self.mode == "spacing":
            if voxel_size is None:
                raise ConfigError("resample 'spacing' needs the volume's voxel size")
            mm = tf.cast(in_size, tf.float64) * tf.cast(voxel_size, tf.float64)[:2]
            size = tf.maximum(tf.cast(tf.round(mm / tf.constant(self.spacing, tf.float64)), tf.int32), 1)
        else:
            size = in_size
        padded = (size + self.multiple - 1) // self.multiple * self.multiple
        return size, padded

    def to_model(self, slices, voxel_size=None, masks: bool = False):
        """Slices ``(Z, X, Y, C)`` -> ``(Z, H, W, C)`` on the model grid (binary ``masks`` stay binary)."""
        tf = _tf()
        x = tf.convert_to_tensor(slices, tf.float32)
        size, padded = self.grid(tf.shape(x)[1:3], voxel_size)
        if self.mode != "none":
            x = resize_masks(x, size) if masks else resize_slices(x, size)
        if self.mode == "fixed":
            return x
        before = (padded - size) // 2
        pads = tf.stack([[0, 0], [before[0], padded[0] - size[0] - before[0]],
                         [before[1], padded[1] - size[1] - before[1]], [0, 0]])
        return tf.pad(x, pads)

    def from_model(self, outputs, in_size, voxel_size=None):
        """Model outputs ``(Z, H, W, C)`` -> ``(Z, X, Y, C)`` on the input's grid ``in_size = (X, Y)``."""
        tf = _tf()
        y = tf.convert_to_tensor(outputs, tf.float32)
        in_size = tf.cast(in_size, tf.int32)[:2]
        if self.mode != "fixed":
            size, padded = self.grid(in_size, voxel_size)
            before = (padded - size) // 2
            y = y[:, before[0]:before[0] + size[0], before[1]:before[1] + size[1], :]
        return y if self.mode == "none" else resize_slices(y, in_size)


def resample_mode(resample: Optional[str], sampling: str = "slices") -> str:
    """The effective ``data.resample``: ``null`` means ``fixed`` for whole slices, ``none`` for patches."""
    return resample if resample is not None else ("fixed" if sampling == "slices" else "none")


def resampling_for(data, model, multiple: Optional[int] = None) -> Resampling:
    """The :class:`Resampling` of a config's ``data`` and ``model`` sections (``multiple``: default
    ``2**model.depth``; 1 for the training cache, which is cropped to samples, not padded)."""
    mode = resample_mode(data.resample, data.sampling)
    return Resampling(mode, tuple(model.input_size) if mode == "fixed" else None,
                      tuple(data.spacing) if mode == "spacing" else None,
                      2**model.depth if multiple is None else multiple)


def add_context(slices, k: int):
    """2.5D input: ``(Z, H, W, C)`` -> ``(Z, H, W, C * (2k + 1))``.

    Channel ``c * (2k + 1) + j`` of slice ``z`` is modality ``c`` of slice ``z - k + j``, with the edge
    slices repeated beyond the volume (so channel ``c * (2k + 1) + k`` is slice ``z`` itself).
    """
    tf = _tf()
    x = tf.convert_to_tensor(slices, tf.float32)
    if k == 0:
        return x
    if k < 0:
        raise ConfigError(f"data.context_slices must be >= 0; got {k}")
    z = tf.range(tf.shape(x)[0])
    last = tf.shape(x)[0] - 1
    stacked = tf.stack([tf.gather(x, tf.clip_by_value(z + j, 0, last)) for j in range(-k, k + 1)], axis=-1)
    shape = tf.shape(x)
    return tf.reshape(stacked, tf.concat([shape[:3], [shape[3] * slices_per_modality(k)]], 0))


def slices_per_modality(context_slices: int) -> int:
    """The slices each modality gives a model's input: slice ``z`` and ``context_slices`` on either side."""
    return 2 * context_slices + 1


def input_channels(n_modalities: int, context_slices: int) -> int:
    """A model's input channels: each of ``n_modalities`` at :func:`slices_per_modality` slices."""
    return n_modalities * slices_per_modality(context_slices)


def center_channels(n_modalities: int, k: int) -> list[int]:
    """The channels of :func:`add_context`'s output that hold slice ``z`` itself, one per modality."""
    return [c * slices_per_modality(k) + k for c in range(n_modalities)]


def preprocess_volume(channels: Sequence, image_size: Optional[Sequence[int]] = None, method: str = "max", *,
                      resampling: Optional[Resampling] = None, voxel_size=None, context: int = 0):
    """The model input for one subject: normalise each modality, slice axially, resample, add context.

    ``channels``: one ``[X, Y, Z]`` array per modality (FLAIR first, then T1 if the model uses it).
    ``image_size`` is the ``fixed`` resampling's size (the default when ``resampling`` is not given).
    Returns float32 slices ``(Z, H, W, len(channels) * (2 * context + 1))`` on the model grid.
    """
    tf = _tf()
    resampling = resampling or Resampling("fixed", tuple(image_size))
    stacked = tf.stack([normalise(c, method) for c in channels], axis=-1)
    return add_context(resampling.to_model(volume_to_slices(stacked), voxel_size), context)


def restore_volume(probabilities, volume_shape: Sequence[int], *, resampling: Optional[Resampling] = None,
                   voxel_size=None):
    """Model output slices ``(Z, H, W, 1)`` -> a probability volume ``[X, Y, Z]`` on the input grid."""
    tf = _tf()
    if resampling is None:  # the fixed mode's way back: resize to the input's in-plane size
        restored = resize_slices(probabilities, (volume_shape[0], volume_shape[1]))
    else:
        restored = resampling.from_model(probabilities, volume_shape[:2], voxel_size)
    return tf.clip_by_value(slices_to_volume(restored)[..., 0], 0.0, 1.0)


def soft_labels(mask, low: float = 0.1, high: float = 0.9):
    """Soft-binarise a {0, 1} mask: 0 -> ``low``, 1 -> ``high`` (Mac et al. 2020, section 3.2).

    Works on NumPy arrays and tensors alike (``low + (high - low) * mask``).
    """
    if not 0.0 <= low < high <= 1.0:
        raise ConfigError(f"soft labels need 0 <= low < high <= 1; got low={low}, high={high}")
    return low + (high - low) * mask
