"""Losses and the Dice metric: hand-computed values on 2x2 inputs, equation 1 in NumPy, gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from wmhkeras.data.preprocessing import soft_labels
from wmhkeras.errors import ConfigError, InputError, WeightsError
from wmhkeras.losses import (
    LOSSES,
    BinaryCrossentropyLoss,
    BinaryFocalLoss,
    DiceBCELoss,
    DiceLoss,
    DiceMetric,
    GeneralizedDiceLoss,
    HybridLoss,
    SiameseContentLoss,
    TverskyLoss,
    get_loss,
)
from wmhkeras.losses.backbones import IMAGENET_BGR_MEAN

# Two 2x2 samples: a one-pixel lesion, and an empty mask; the same prediction for both.
MASKS = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]]], "float32")[..., None]
PRED = np.array([[[0.5, 0], [0, 0.5]]] * 2, "float32")[..., None]


def packed(mask, image=None):
    image = np.ones_like(mask) if image is None else image
    return np.concatenate([mask, image], axis=-1)


def per_sample(loss, y_true, y_pred):
    return np.asarray(loss.call(tf.constant(y_true), tf.constant(y_pred)))


# === Overlap losses against hand-computed values ===

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


# === Dice metric ===

def test_dice_metric_pools_counts_over_the_epoch():
    metric = DiceMetric()
    assert float(metric.result()) == 1.0  # nothing seen, nothing predicted
    # Batch 1 (soft labels): G = 1 pixel, P = 2 (0.5 counts as lesion), TP = 1.
    metric.update_state(packed(soft_labels(MASKS[:1])), PRED[:1])
    # Batch 2: G = 0, P = 2.
    metric.update_state(MASKS[1:], PRED[1:])
    assert float(metric.result()) == pytest.approx(2 * 1 / (4 + 1))
    metric.reset_state()
    metric.update_state(MASKS, MASKS)
    assert float(metric.result()) == 1.0


# === Registry ===

def test_get_loss_registry():
    assert set(LOSSES) == {"content", "dice", "dice_bce", "tversky", "generalized_dice", "focal", "bce", "hybrid"}
    assert isinstance(get_loss("tversky", alpha=0.5), TverskyLoss)
    hybrid = get_loss("hybrid", overlap="tversky", weight=0.5, weights="random")
    assert isinstance(hybrid.overlap, TverskyLoss) and hybrid.weight == 0.5
    with pytest.raises(ConfigError, match="unknown loss 'dicee'; known: content, dice, dice_bce, tversky"):
        get_loss("dicee")
    with pytest.raises(ConfigError, match="bad arguments for loss 'dice'"):
        get_loss("dice", alpha=0.3)


# === Siamese content loss (equation 1) ===

@pytest.fixture(scope="module")
def content_pair():
    """A random-weight loss (module-wide: building VGG16 costs ~0.2 s) and tiny packed data."""
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    image = rng.random((2, 32, 32, 1), dtype=np.float32)
    mask = soft_labels((rng.random((2, 32, 32, 1)) > 0.8).astype("float32"))
    pred = rng.random((2, 32, 32, 1), dtype=np.float32)
    return SiameseContentLoss(weights="random"), packed(mask, image), pred


def numpy_features(backbone, masked):
    """Equation 1's f inputs, preprocessing written out in NumPy: grey -> RGB, x255, RGB->BGR, - mean."""
    bgr = np.repeat(masked, 3, axis=-1)[..., ::-1] * 255.0 - np.array(IMAGENET_BGR_MEAN, "float32")
    return [np.asarray(f, "float64").reshape(len(masked), -1) for f in backbone(bgr)]


@pytest.mark.parametrize("mode", ["paper", "per_layer_mean"])
def test_content_loss_is_equation_1(content_pair, mode):
    loss, y_true, y_pred = content_pair
    loss = SiameseContentLoss.from_config({**loss.get_config(), "reduction_mode": mode})
    loss._hidden.model = content_pair[0].get_backbone()  # same random backbone
    image, mask = y_true[..., 1:], y_true[..., :1]
    truth = numpy_features(loss.get_backbone(), image * mask)
    pred = numpy_features(loss.get_backbone(), image * y_pred)
    if mode == "paper":  # (1/L) sum over the concatenated vector f_c
        expected = ((np.concatenate(truth, 1) - np.concatenate(pred, 1)) ** 2).mean(axis=1)
    else:
        expected = np.mean([((t - p) ** 2).mean(axis=1) for t, p in zip(truth, pred, strict=True)], axis=0)
    assert sum(t.shape[1] for t in truth) == 16 * 16 * 64 + 8 * 8 * 128
    np.testing.assert_allclose(per_sample(loss, y_true, y_pred), expected, rtol=1e-4)
    assert float(loss(y_true, y_pred)) == pytest.approx(expected.mean(), rel=1e-4)


def test_content_loss_zero_for_a_perfect_prediction(content_pair):
    loss, y_true, _ = content_pair
    np.testing.assert_allclose(per_sample(loss, y_true, y_true[..., :1]), [0.0, 0.0], atol=1e-6)


def test_content_loss_gradients_reach_the_prediction_only(content_pair):
    """As in Keras' train step (the tape watches trainable variables): y_pred gets a gradient, the
    backbone weights get None (nothing trainable) and the ground-truth mask gets zero."""
    loss, y_true, y_pred = content_pair
    backbone = loss.get_backbone()
    assert backbone.trainable_weights == [] and not backbone.trainable
    before = [np.asarray(w).copy() for w in backbone.weights]
    y_true, y_pred = tf.Variable(y_true), tf.Variable(y_pred)
    with tf.GradientTape(persistent=True) as tape:
        value = loss(y_true, y_pred)
    grad_pred = tape.gradient(value, y_pred)
    assert grad_pred is not None and np.abs(np.asarray(grad_pred)).max() > 0
    assert all(g is None for g in tape.gradient(value, backbone.weights))
    # Channel 1 (the image) feeds the prediction branch too; channel 0 (the mask) only the truth branch.
    assert np.all(np.asarray(tape.gradient(value, y_true))[..., 0] == 0)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, backbone.weights, strict=True))


def test_content_loss_needs_the_packed_image(content_pair):
    loss, y_true, y_pred = content_pair
    with pytest.raises(InputError, match=r"2 \(mask, image\)"):
        loss(y_true[..., :1], y_pred)


def test_content_loss_fails_at_construction_without_weights():
    with pytest.raises(WeightsError, match="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        SiameseContentLoss(backbone="vgg16")
    with pytest.raises(WeightsError, match="layer 'block3_pool' of vgg19 is deeper"):  # past the carried blocks
        SiameseContentLoss(backbone="vgg19", layers=("block1_pool", "block3_pool"))
    with pytest.raises(ConfigError, match="reduction_mode 'sum'"):
        SiameseContentLoss(weights="random", reduction_mode="sum")
    with pytest.raises(ConfigError, match="block9_pool"):
        SiameseContentLoss(weights="random", layers=("block9_pool",), input_size=(32, 32))


def test_hybrid_is_content_plus_weighted_overlap(content_pair):
    loss, y_true, y_pred = content_pair
    hybrid = HybridLoss(loss, DiceLoss(), weight=0.5)
    expected = per_sample(loss, y_true, y_pred) + 0.5 * per_sample(DiceLoss(), y_true, y_pred)
    np.testing.assert_allclose(per_sample(hybrid, y_true, y_pred), expected, rtol=1e-6)
    focal = HybridLoss(loss, BinaryFocalLoss(), weight=2.0)  # pixel loss reduced per sample first
    assert per_sample(focal, y_true, y_pred).shape == (2,)


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


# === Serialisation ===

@pytest.mark.parametrize("obj", [
    DiceLoss(epsilon=0.5), TverskyLoss(alpha=0.4, beta=0.6), GeneralizedDiceLoss(),
    BinaryCrossentropyLoss(label_smoothing=0.1), BinaryFocalLoss(gamma=3.0), DiceBCELoss(epsilon=0.5),
    SiameseContentLoss(backbone="vgg19", layers=["block1_pool"], weights="random",
                       reduction_mode="per_layer_mean", input_size=None),
    HybridLoss(SiameseContentLoss(weights="random"), TverskyLoss(alpha=0.2), weight=0.25),
    DiceMetric(threshold=0.4, name="val_dice"),
], ids=lambda o: type(o).__name__)
def test_config_round_trip(obj):
    config = obj.get_config()
    clone = type(obj).from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(revived) is type(obj) and revived.get_config() == config
