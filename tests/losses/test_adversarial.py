"""The adversarial fine-tuning ablation (:mod:`wmhkeras.losses.adversarial`, paper table 2)."""


import keras
import numpy as np
import pytest

from wmhkeras.errors import ConfigError
from wmhkeras.losses import SiameseContentLoss
from wmhkeras.losses.adversarial import AdversarialContentModel
from wmhkeras.models import build_dense_unet

from ..models.helpers import TINY


def _adversarial(generator_lr, run_eagerly=True):
    keras.utils.set_random_seed(0)
    loss = SiameseContentLoss(weights="random", trainable_backbone=True, input_size=(32, 32))
    model = AdversarialContentModel(build_dense_unet(**TINY), loss)
    model.compile(optimizer=keras.optimizers.Adam(generator_lr), run_eagerly=run_eagerly)
    return model


def _snapshot(model):
    return [np.asarray(w).copy() for w in model.trainable_weights]


def _loss(model, x, y):  # training=True: batch statistics, as in the train step
    return float(np.mean(model.content_loss.call(y, model.generator(x, training=True))))


@pytest.mark.slow  # tracing the compiled train step: ~7 s on 2 idle cores
def test_adversarial_step_moves_generator_and_backbone(data):
    x, y = data
    model = _adversarial(1e-3, run_eagerly=False)  # the traced (tf.function) train step
    generator, backbone = _snapshot(model.generator), _snapshot(model.backbone)
    assert len(backbone) == 8  # 4 convs of VGG's first two blocks, kernels and biases
    model.train_on_batch(x, y)
    assert any(not np.array_equal(a, b) for a, b in zip(generator, _snapshot(model.generator), strict=True))
    assert all(not np.array_equal(a, b) for a, b in zip(backbone, _snapshot(model.backbone), strict=True))


def test_adversarial_backbone_step_increases_the_loss(data):
    x, y = data
    model = _adversarial(0.0)  # generator fixed: only the backbone's ascent step acts
    before = _loss(model, x, y)
    generator = _snapshot(model.generator)
    model.train_on_batch(x, y)
    assert all(np.array_equal(a, b) for a, b in zip(generator, _snapshot(model.generator), strict=True))
    assert _loss(model, x, y) > before


def test_adversarial_config_round_trip_and_validation():
    model = _adversarial(1e-3)
    clone = AdversarialContentModel.from_config(model.get_config())
    assert clone.backbone_learning_rate == 1e-5 and clone.content_loss.trainable_backbone
    with pytest.raises(ConfigError, match="trainable_backbone=True"):
        AdversarialContentModel(build_dense_unet(**TINY), SiameseContentLoss(weights="random"))
