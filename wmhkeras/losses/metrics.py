"""Keras metrics logged during training: soft Dice of the mask and the mean of one loss term."""

from __future__ import annotations

import keras

from wmhkeras import KERAS_PACKAGE
from wmhkeras.losses.overlap import check_range, unpack_target

register = keras.saving.register_keras_serializable(package=KERAS_PACKAGE)


@register
class DiceMetric(keras.metrics.Metric):
    """Hard Dice accumulated over an epoch: ``2 sum(TP) / (sum(P) + sum(G))`` over all pixels seen.

    Prediction and target channel 0 are both thresholded at ``threshold`` (0.5 maps soft labels
    0.1/0.9 back to 0/1). Pooling the counts over the epoch (rather than averaging per-slice Dice) keeps
    empty slices from dominating. Returns 1.0 when neither prediction nor target holds a lesion pixel.
    """

    def __init__(self, threshold: float = 0.5, name: str = "dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = check_range("dice threshold", threshold, 0.0, 1.0)
        self.true_positives = self.add_variable((), initializer="zeros", name="true_positives")
        self.predicted = self.add_variable((), initializer="zeros", name="predicted")
        self.reference = self.add_variable((), initializer="zeros", name="reference")

    def update_state(self, y_true, y_pred, sample_weight=None):
        mask, _ = unpack_target(y_true)
        truth = keras.ops.cast(mask >= self.threshold, self.dtype)
        pred = keras.ops.cast(y_pred >= self.threshold, self.dtype)
        weight = 1.0
        if sample_weight is not None:
            # Per-sample weights (batch,) broadcast over H, W, C.
            weight = keras.ops.reshape(keras.ops.cast(sample_weight, self.dtype),
                                       (-1,) + (1,) * (len(pred.shape) - 1))
        self.true_positives.assign_add(keras.ops.sum(weight * truth * pred))
        self.predicted.assign_add(keras.ops.sum(weight * pred))
        self.reference.assign_add(keras.ops.sum(weight * truth))

    def result(self):
        denominator = self.predicted + self.reference
        ratio = 2.0 * self.true_positives / keras.ops.maximum(denominator, 1e-12)
        return keras.ops.where(denominator > 0, ratio, 1.0)

    def reset_state(self):
        for variable in (self.true_positives, self.predicted, self.reference):
            variable.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


@register
class LossTermMetric(keras.metrics.Mean):
    """Mean of one term of a composite loss over the epoch, so each term shows in the logs.

    For a :class:`~wmhkeras.losses.HybridLoss` the trainer logs ``content_loss`` and e.g.
    ``dice_loss`` (unweighted) beside ``loss`` (= content + weight * overlap).
    """

    def __init__(self, loss, name: str = "loss_term", **kwargs):
        super().__init__(name=name, **kwargs)
        self.loss = keras.saving.deserialize_keras_object(loss) if isinstance(loss, dict) else loss

    def update_state(self, y_true, y_pred, sample_weight=None):
        values = self.loss.call(y_true, y_pred)
        if len(values.shape) > 1:
            values = keras.ops.mean(values, axis=tuple(range(1, len(values.shape))))
        return super().update_state(values, sample_weight=sample_weight)

    def get_config(self):
        return {**super().get_config(), "loss": keras.saving.serialize_keras_object(self.loss)}
