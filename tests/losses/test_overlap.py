"""The overlap and pixel losses (:mod:`wmhkeras.losses.overlap`): hand-computed values on 2x2 inputs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from wmhkeras.errors import ConfigError, InputError
from wmhkeras.losses import (
    BinaryCrossentropyLoss,
    BinaryFocalLoss,
    DiceBCELoss,
    DiceLoss,
    GeneralizedDiceLoss,
    HybridLoss,
    TverskyLoss,
    get_loss,
)

from .helpers import MASKS, PRED, packed, per_sample


@pytest.mark.parametrize("target", [MASKS, packed(MASKS)], ids=["mask", "packed"])
@pytest.mark.parametrize(("loss", "expected"), [
    # Dice: 1 - (2*0.5 + 1) / (1 + 1 + 1) = 1/3; empty mask: 1 - 1 / (0 + 1 + 1) = 1/2.
    (DiceLoss(), [1 / 3, 1 / 2]),
    # Tversky: TP 0.5, FP 0.5, FN 0.5 -> 1 - 1.5 / (0.5 + 0.15 + 0.35 + 1) = 1/4;
    # empty mask: TP 0, FP 1, FN 0 -> 1 - 1 / 1.3.
    (TverskyLoss(), [0.25, 1 - 1 / 1.3]),
    # GDL: lesion w=1, sum(rp)=0.5, sum(r+p)=2; background w=1/9, sum(rp)=2.5, sum(r+p)=6
    #   -> 1 - 2 (0.5 + 2.5/9) / (2 + 6/9) = 5/12.
    # Empty mask: lesion weight guarded to the background's 1/16; lesion rp=0, r+p=1; background rp=3,
    #   r+p=7 -> 1 - 2 * 3 / 8 = 1/4.
    (GeneralizedDiceLoss(), [5 / 12, 0.25]),
])
def test_overlap_losses_by_hand(loss, expected, target):
    np.testing.assert_allclose(per_sample(loss, target, PRED), expected, rtol=1e-6)


@pytest.mark.parametrize("loss", [DiceLoss(), TverskyLoss(), GeneralizedDiceLoss()])
def test_perfect_prediction_gives_zero_even_when_empty(loss):
    np.testing.assert_allclose(per_sample(loss, MASKS, MASKS), [0.0, 0.0], atol=1e-7)


def test_keras_reduction_averages_the_samples():
    assert float(DiceLoss()(MASKS, PRED)) == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_pixel_losses_wrap_the_keras_builtins():
    target = packed(MASKS, image=np.full_like(MASKS, 0.3))
    for ours, builtin in [(BinaryCrossentropyLoss(), keras.losses.BinaryCrossentropy()),
                          (BinaryFocalLoss(gamma=2.0), keras.losses.BinaryFocalCrossentropy(gamma=2.0))]:
        assert float(ours(target, PRED)) == pytest.approx(float(builtin(MASKS, PRED)), rel=1e-6)


def test_bad_arguments_show_value_and_range():
    with pytest.raises(ConfigError, match=r"alpha must be in \[0.0, 1.0\]; got 1.5"):
        TverskyLoss(alpha=1.5)
    with pytest.raises(ConfigError, match=r"epsilon must be in >= 0.0; got -1"):
        DiceLoss(epsilon=-1)
    with pytest.raises(ConfigError, match="weight"):
        HybridLoss(DiceLoss(), DiceLoss(), weight=-2)
    with pytest.raises(ConfigError, match="gamma"):
        BinaryFocalLoss(gamma=-1.0)
    with pytest.raises(InputError, match="got shape"):
        DiceLoss()(np.zeros((1, 2, 2, 3), "float32"), PRED[:1])


def test_dice_bce_is_batch_dice_plus_per_sample_cross_entropy():
    # Two 1x2 samples: g = [1, 0] and [0, 0]; p = [0.8, 0.2] and [0.1, 0.1].
    # Batch Dice loss: 1 - (2 * 0.8 + 1) / (1 + 1.2 + 1) = 1 - 2.6 / 3.2 = 0.1875, the same for both samples.
    # Cross-entropy: -(ln 0.8 + ln 0.8) / 2 and -(ln 0.9 + ln 0.9) / 2.
    g = np.array([[[1, 0]], [[0, 0]]], "float32")[..., None]
    p = np.array([[[0.8, 0.2]], [[0.1, 0.1]]], "float32")[..., None]
    expected = np.array([0.1875 - np.log(0.8), 0.1875 - np.log(0.9)])
    for target in (g, packed(g)):
        np.testing.assert_allclose(per_sample(DiceBCELoss(), target, p), expected, rtol=1e-5)
    # A lesion-free sample's false positives keep a gradient (per-sample Dice saturates there).
    empty, fp = np.zeros((1, 8, 8, 1), "float32"), tf.Variable(np.full((1, 8, 8, 1), 0.9, "float32"))
    for loss, has_gradient in ((DiceLoss(), False), (DiceBCELoss(), True)):
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(loss.call(tf.constant(empty), fp))
        grad = np.abs(tape.gradient(value, fp).numpy()).max()
        assert (grad > 1e-2) == has_gradient, (type(loss).__name__, grad)
    assert isinstance(get_loss("dice_bce"), DiceBCELoss)
