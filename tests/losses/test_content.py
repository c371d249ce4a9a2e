"""The Siamese content loss (:mod:`wmhkeras.losses.content`): equation 1 in NumPy, gradients, the hybrid."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from wmhkeras.data.preprocessing import soft_labels
from wmhkeras.errors import ConfigError, InputError, WeightsError
from wmhkeras.losses import (
    BinaryFocalLoss,
    DiceBCELoss,
    DiceLoss,
    HybridLoss,
    SiameseContentLoss,
)
from wmhkeras.losses.backbones import IMAGENET_BGR_MEAN

from .helpers import packed, per_sample


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
    with_bce = HybridLoss(loss, DiceBCELoss(), weight=0.5)  # the real recipe's loss as the overlap term
    expected = per_sample(loss, y_true, y_pred) + 0.5 * per_sample(DiceBCELoss(), y_true, y_pred)
    np.testing.assert_allclose(per_sample(with_bce, y_true, y_pred), expected, rtol=1e-6)
    focal = HybridLoss(loss, BinaryFocalLoss(), weight=2.0)  # pixel loss reduced per sample first
    assert per_sample(focal, y_true, y_pred).shape == (2,)
