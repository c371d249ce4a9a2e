"""Generators (dense U-Net, U-Net, :mod:`wmhkeras.models.unet`), FLOP counting, .keras round trips."""

import re
from pathlib import Path

import keras
import numpy as np
import pytest

from wmhkeras.errors import ConfigError
from wmhkeras.losses import DiceMetric, SiameseContentLoss
from wmhkeras.models import build_dense_unet, build_generator, build_unet, count_flops
from wmhkeras.registration import load_model

from .helpers import TINY

DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def dense_unet_flops(height, width, channels, depth, base, bottleneck=None):
    """Closed form, independent of the model: 2 x MACs of every conv and transposed conv."""
    widths = [base * 2**i for i in range(depth)]
    bottleneck = bottleneck or widths[-1]
    pixels = [height * width // 4**i for i in range(depth + 1)]

    def block(p, c_in, f):  # initial 3x3 conv c_in -> f, then units with f, 2f, 3f inputs -> f
        return p * 9 * f * (c_in + f + 2 * f + 3 * f)

    macs = sum(block(pixels[i], channels if i == 0 else widths[i - 1], widths[i]) for i in range(depth))
    macs += block(pixels[depth], widths[-1], bottleneck)
    for i in range(depth):
        c_up = bottleneck if i == depth - 1 else widths[i + 1]
        macs += pixels[i + 1] * 4 * c_up * widths[i] + block(pixels[i], 2 * widths[i], widths[i])
    macs += pixels[0] * widths[0]  # 1x1 head
    return 2 * macs


def test_dense_unet_shapes_and_structure():
    model = build_dense_unet(**TINY)
    out = model(np.zeros((2, 32, 32, 1), "float32"))
    assert tuple(out.shape) == (2, 32, 32, 1) and out.dtype == "float32"
    assert model.get_layer("enc0_init").filters == 4 and model.get_layer("enc1_init").filters == 8
    assert model.get_layer("bottleneck_init").filters == 8 and model.get_layer("dec0_init").filters == 4
    # Dense connectivity: unit k of a block sees the concatenation of k + 1 earlier outputs.
    assert [model.get_layer(f"enc1_u{k}_conv").input.shape[-1] for k in range(3)] == [8, 16, 24]
    assert model.get_layer("dec0_cat").output.shape[-1] == 8  # 4 upsampled + 4 skip
    assert isinstance(model.get_layer("enc0_u0_act"), keras.layers.LeakyReLU)
    assert count_flops(model) == dense_unet_flops(32, 32, 1, 2, 4)


def test_count_flops_by_hand():
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(3, 3, padding="same")(inputs)  # 2 * 16 px * 3 * 9 * 2 = 1728
    x = keras.layers.Conv2DTranspose(2, 2, strides=2)(x)  # 2 * 16 px * 3 * 4 * 2 = 768
    assert count_flops(keras.Model(inputs, x)) == 1728 + 768


def test_paper_setting_numbers_match_the_docs():
    """The paper's generator (224x224x1, depth 5, base 32): FLOPs and parameters quoted in docs."""
    flops = dense_unet_flops(224, 224, 1, 5, 32)
    assert flops == 69_164_204_032
    docs = DOCS.read_text()
    assert "69,164,204,032" in docs and "63,865,569" in docs
    assert re.search(r"dense_unet.*63,865,569", docs)


def test_plain_unet_and_registry():
    model = build_generator("unet", **TINY)
    assert tuple(model.output.shape) == (None, 32, 32, 1)
    assert model.count_params() < build_dense_unet(**TINY).count_params()
    assert build_generator("dense_unet", **TINY).name == "dense_unet"
    with pytest.raises(ConfigError, match="unknown generator arch 'vnet'; known: dense_unet, unet"):
        build_generator("vnet")


@pytest.mark.parametrize("builder", [build_dense_unet, build_unet])
def test_input_size_must_divide(builder):
    with pytest.raises(ConfigError, match=r"30x32 is not divisible by 2\^depth = 4"):
        builder((30, 32, 1), depth=2, base_filters=4)
    with pytest.raises(ConfigError, match=r"224x224 is not divisible by 2\^depth = 64"):
        builder((224, 224, 1), depth=6)


def test_output_stays_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_dense_unet(**TINY)
        assert model.get_layer("enc0_init").compute_dtype == "float16"
        assert model(np.zeros((1, 32, 32, 1), "float32")).dtype == "float32"
    finally:
        keras.config.set_dtype_policy(previous)


def test_compiled_generator_round_trips_through_keras_file(tmp_path, data):
    x, y = data
    keras.utils.set_random_seed(0)
    model = build_dense_unet(**TINY)
    # Eager steps: tracing the compiled train step costs ~6 s here and adds nothing to this test.
    model.compile(optimizer="adam", loss=SiameseContentLoss(weights="random"), metrics=[DiceMetric()],
                  run_eagerly=True)
    model.train_on_batch(x, y)
    path = tmp_path / "generator.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)  # no custom_objects
    expected = np.asarray(model(x, training=False))
    np.testing.assert_array_equal(np.asarray(reloaded(x, training=False)), expected)
    assert isinstance(reloaded.loss, SiameseContentLoss) and reloaded.loss.weights == "random"
    reloaded.run_eagerly = True
    logs = reloaded.train_on_batch(x, y, return_dict=True)  # the rebuilt loss and metric work
    assert set(logs) == {"loss", "dice"}
    inference = load_model(path)  # compile=False: needs no backbone weights
    np.testing.assert_array_equal(np.asarray(inference(x, training=False)), expected)


def test_output_prior_and_bn_momentum_options():
    import numpy as np

    from wmhkeras.models.unet import build_generator

    model = build_generator("unet", input_shape=(16, 16, 1), depth=2, base_filters=2, bn_momentum=0.9, output_prior=0.01)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.momentum == 0.9 for layer in bns)
    # head bias log(0.01 / 0.99) and zero-mean inputs: the output starts at the prior
    assert np.isclose(model.get_layer("head_conv").get_weights()[1][0], np.log(0.01 / 0.99))
    zeros = model(np.zeros((1, 16, 16, 1), np.float32), training=False).numpy()
    np.testing.assert_allclose(zeros, 0.01, rtol=1e-4)
    with pytest.raises(ConfigError, match="output_prior must be in"):
        build_generator("unet", input_shape=(16, 16, 1), depth=2, output_prior=1.5)
