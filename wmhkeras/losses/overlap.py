"""Overlap and pixel losses (the paper's baselines), the hybrid loss and the validation Dice metric.

Every loss takes the packed target of the toolkit: ``y_true`` is ``(batch, H, W, 2)`` with channel 0 the
(possibly soft 0.1/0.9) lesion mask and channel 1 the image, or a plain ``(batch, H, W, 1)`` mask.
``y_pred`` is ``(batch, H, W, 1)`` sigmoid probabilities. Overlap losses return one value per sample,
shape ``(batch,)``, reduced by Keras' ``reduction`` argument.

Baselines of Mac et al. (MIDL 2020, section 3.2): Dice loss (epsilon 1), Tversky loss (Salehi et al.
2017; alpha 0.3 on false positives, beta 0.7 on false negatives), Generalised Dice loss (Sudre et al.
2017). Beyond the paper: batch Dice + cross-entropy (nnU-Net's default), the real-data recipe's loss.
"""

from __future__ import annotations

import keras

from wmhkeras import KERAS_PACKAGE
from wmhkeras.errors import ConfigError, InputError

register = keras.saving.register_keras_serializable(package=KERAS_PACKAGE)

_SPATIAL = (1, 2, 3)  # H, W, C of (batch, H, W, C)


def unpack_target(y_true, need_image: bool = False):
    """Split a packed target into ``(mask, image)``, each ``(batch, H, W, 1)``.

    ``image`` is ``None`` for a 1-channel target; ``need_image=True`` makes that an error.

    Raises:
        InputError: the target's channel count is not 1 or 2, or the image is needed but absent.
    """
    channels = y_true.shape[-1]
    if channels == 2:
        return y_true[..., 0:1], y_true[..., 1:2]
    if channels == 1 and not need_image:
        return y_true, None
    need = "2 (mask, image)" if need_image else "1 (mask) or 2 (mask, image)"
    raise InputError(f"targets y_true must have {need} channels; got shape {tuple(y_true.shape)}")


def check_range(name: str, value: float, low: float, high: float | None = None) -> float:
    """Validate ``low <= value (<= high)``; the message shows the value and the allowed range."""
    value = float(value)
    if value < low or (high is not None and value > high):
        allowed = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be in {allowed}; got {value}")
    return value


def _per_sample(values):
    """Mean over every axis but the batch axis: ``(batch, ...)`` -> ``(batch,)``."""
    if len(values.shape) <= 1:
        return values
    return keras.ops.mean(values, axis=tuple(range(1, len(values.shape))))


@register
class DiceLoss(keras.losses.Loss):
    """Soft Dice loss per sample: ``1 - (2 sum(g p) + eps) / (sum(g) + sum(p) + eps)`` over H, W, C.

    Milletari et al. 2016 (V-Net); epsilon 1 as in Mac et al. 2020. An empty mask with an empty
    prediction gives 0.
    """

    def __init__(self, epsilon: float = 1.0, name: str = "dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.epsilon = check_range("dice epsilon", epsilon, 0.0)

    def call(self, y_true, y_pred):
        mask, _ = unpack_target(y_true)
        overlap = keras.ops.sum(mask * y_pred, axis=_SPATIAL)
        total = keras.ops.sum(mask, axis=_SPATIAL) + keras.ops.sum(y_pred, axis=_SPATIAL)
        return 1.0 - (2.0 * overlap + self.epsilon) / (total + self.epsilon)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@register
class TverskyLoss(keras.losses.Loss):
    """Tversky loss per sample: ``1 - (TP + eps) / (TP + alpha FP + beta FN + eps)`` over H, W, C.

    Salehi et al. 2017. ``alpha`` weights false positives ``sum((1 - g) p)``, ``beta`` false negatives
    ``sum(g (1 - p))``; alpha = beta = 0.5 is the Dice loss. Defaults 0.3 / 0.7 and epsilon 1 as in
    Mac et al. 2020.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, epsilon: float = 1.0,
                 name: str = "tversky_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha = check_range("tversky alpha", alpha, 0.0, 1.0)
        self.beta = check_range("tversky beta", beta, 0.0, 1.0)
        self.epsilon = check_range("tversky epsilon", epsilon, 0.0)

    def call(self, y_true, y_pred):
        mask, _ = unpack_target(y_true)
        tp = keras.ops.sum(mask * y_pred, axis=_SPATIAL)
        fp = keras.ops.sum((1.0 - mask) * y_pred, axis=_SPATIAL)
        fn = keras.ops.sum(mask * (1.0 - y_pred), axis=_SPATIAL)
        return 1.0 - (tp + self.epsilon) / (tp + self.alpha * fp + self.beta * fn + self.epsilon)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta, "epsilon": self.epsilon}


@register
class GeneralizedDiceLoss(keras.losses.Loss):
    """Generalised Dice loss (Sudre et al. 2017, eq. 4) per sample over the classes {lesion, background}.

    ``GDL = 1 - 2 sum_l w_l sum_n r_ln p_ln / sum_l w_l sum_n (r_ln + p_ln)`` with ``w_l = 1 /
    (sum_n r_ln)^2``, r the reference (lesion: g, background: 1 - g) and p the prediction (p, 1 - p).

    Empty-class guard: a class absent from the reference (``sum_n r_ln = 0``, e.g. a slice without
    lesions) would get an infinite weight; it gets the largest finite weight of the sample instead, as in
    NiftyNet's implementation (whose authors include Sudre). Since lesion and background references sum
    to the pixel count, at least one class is always present and the loss is always finite.
    """

    def __init__(self, name: str = "generalized_dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        mask, _ = unpack_target(y_true)
        ref = keras.ops.concatenate([mask, 1.0 - mask], axis=-1)  # (batch, H, W, 2)
        pred = keras.ops.concatenate([y_pred, 1.0 - y_pred], axis=-1)
        ref_sum = keras.ops.sum(ref, axis=(1, 2))  # (batch, 2)
        present = ref_sum > 0
        weights = 1.0 / keras.ops.square(keras.ops.where(present, ref_sum, 1.0))
        max_weight = keras.ops.max(keras.ops.where(present, weights, 0.0), axis=-1, keepdims=True)
        weights = keras.ops.where(present, weights, max_weight)
        intersection = keras.ops.sum(weights * keras.ops.sum(ref * pred, axis=(1, 2)), axis=-1)
        union = keras.ops.sum(weights * keras.ops.sum(ref + pred, axis=(1, 2)), axis=-1)
        return 1.0 - 2.0 * intersection / union


@register
class BinaryCrossentropyLoss(keras.losses.BinaryCrossentropy):
    """``keras.losses.BinaryCrossentropy`` on channel 0 of a packed target (same arguments)."""

    def __init__(self, name: str = "binary_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return super().call(unpack_target(y_true)[0], y_pred)


@register
class BinaryFocalLoss(keras.losses.BinaryFocalCrossentropy):
    """``keras.losses.BinaryFocalCrossentropy`` (Lin et al. 2017) on channel 0 of a packed target."""

    def __init__(self, name: str = "binary_focal", **kwargs):
        super().__init__(name=name, **kwargs)
        check_range("focal gamma", self.gamma, 0.0)
        check_range("focal alpha", self.alpha, 0.0, 1.0)

    def call(self, y_true, y_pred):
        return super().call(unpack_target(y_true)[0], y_pred)


@register
class DiceBCELoss(keras.losses.Loss):
    """Batch Dice plus cross-entropy, nnU-Net's default: ``1 - (2 sum(g p) + eps) / (sum(g) + sum(p) + eps)``
    with the sums over the *whole batch* (every sample and pixel), plus the per-sample mean binary
    cross-entropy.

    The batch Dice (nnU-Net's ``batch_dice``) does not score a lesion-free patch on its own: per sample,
    ``1 - eps / (sum(p) + eps)`` saturates at 1 once a patch holds a few false-positive voxels, its
    gradient ``eps / (sum(p) + eps)^2`` vanishes and those false positives are never trained away; the
    cross-entropy term keeps every voxel's gradient. Not in the paper (Mac et al. 2020 use the plain
    Dice loss as a baseline). Returns ``(batch,)``: each sample's cross-entropy plus the batch's Dice loss.
    """

    def __init__(self, epsilon: float = 1.0, name: str = "dice_bce_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.epsilon = check_range("dice epsilon", epsilon, 0.0)

    def call(self, y_true, y_pred):
        mask, _ = unpack_target(y_true)
        y_pred = keras.ops.cast(y_pred, mask.dtype)
        overlap = keras.ops.sum(mask * y_pred)
        total = keras.ops.sum(mask) + keras.ops.sum(y_pred)
        dice = 1.0 - (2.0 * overlap + self.epsilon) / (total + self.epsilon)
        return _per_sample(keras.ops.binary_crossentropy(mask, y_pred)) + dice

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@register
class HybridLoss(keras.losses.Loss):
    """``content + weight * overlap``, per sample: the content loss plus an overlap (or pixel) loss.

    Not in the paper, whose model uses the content loss alone; offered as the obvious extension.

    Args:
        content: a loss instance (normally :class:`~wmhkeras.losses.content.SiameseContentLoss`) or its
            serialised form.
        overlap: a loss instance (e.g. :class:`DiceLoss`) or its serialised form.
        weight: weight of the overlap term, ``>= 0``.
    """

    def __init__(self, content, overlap, weight: float = 1.0, name: str = "hybrid_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.content = self._as_loss("content", content)
        self.overlap = self._as_loss("overlap", overlap)
        self.weight = check_range("hybrid weight", weight, 0.0)

    @staticmethod
    def _as_loss(role: str, loss) -> keras.losses.Loss:
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if not isinstance(loss, keras.losses.Loss):
            raise ConfigError(f"hybrid {role} must be a keras Loss instance; got {type(loss).__name__}")
        return loss

    def call(self, y_true, y_pred):
        # Sub-losses' call() gives unreduced values; reduce each to (batch,) so the shapes add up.
        return _per_sample(self.content.call(y_true, y_pred)) + self.weight * _per_sample(
            self.overlap.call(y_true, y_pred))

    def get_config(self):
        return {
            **super().get_config(),
            "content": keras.saving.serialize_keras_object(self.content),
            "overlap": keras.saving.serialize_keras_object(self.overlap),
            "weight": self.weight,
        }
