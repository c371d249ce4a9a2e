"""Frozen VGG feature extractors: shapes, truncation, offline weight loading, clear errors."""

import logging

import h5py
import keras
import numpy as np
import pytest

from wmhkeras.errors import ConfigError, WeightsError
from wmhkeras.losses.backbones import BACKBONES, build_feature_extractor, keras_cache_dir, vgg_preprocess

SHAPE = (32, 32, 3)


def write_applications_h5(model: keras.Model, path) -> None:
    """Write ``model``'s weights in the legacy Keras-applications HDF5 layout (as the cached notop file).

    Layout of ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``: root attribute ``layer_names``, one
    group per layer with attribute ``weight_names`` and one dataset per weight.
    """
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}_{'Wb'[i]}_1:0".encode() for i in range(len(layer.weights))]
            group.attrs["weight_names"] = names
            for name, weight in zip(names, layer.weights, strict=True):
                group.create_dataset(name, data=np.asarray(weight))


@pytest.fixture(scope="module")
def source_vgg16():
    keras.utils.set_random_seed(1)
    return keras.applications.VGG16(include_top=False, weights=None, input_shape=SHAPE)


def _assert_same_weights(extractor, source):
    for layer in extractor.layers:
        if not layer.weights:
            continue
        for got, want in zip(layer.weights, source.get_layer(layer.name).weights, strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_vgg16_and_vgg19_first_blocks_have_the_same_shapes():
    shapes = {}
    for name in BACKBONES:
        model = build_feature_extractor(name, weights="random", input_shape=SHAPE)
        shapes[name] = [tuple(out.shape) for out in model.outputs]
        assert not model.trainable and model.trainable_weights == []
        assert all(layer.name.startswith(("input", "block1", "block2")) for layer in model.layers)
    assert shapes["vgg16"] == shapes["vgg19"] == [(None, 16, 16, 64), (None, 8, 8, 128)]


def test_requested_layers_in_requested_order_and_any_size():
    model = build_feature_extractor("vgg16", layers=("block2_conv1", "block1_pool"), weights="random")
    out = model(np.zeros((1, 48, 64, 3), "float32"))
    assert [tuple(o.shape) for o in out] == [(1, 24, 32, 128), (1, 24, 32, 64)]


def test_unknown_layer_and_backbone_are_config_errors():
    with pytest.raises(ConfigError, match=r"block9_pool.*valid: .*block1_conv1.*block5_pool"):
        build_feature_extractor("vgg16", layers=("block9_pool",), weights="random", input_shape=SHAPE)
    with pytest.raises(ConfigError, match=r"resnet.*vgg16, vgg19"):
        build_feature_extractor("resnet", weights="random")


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_missing_imagenet_weights_say_where_and_how(name):
    filename = BACKBONES[name][1]
    with pytest.raises(WeightsError) as err:
        build_feature_extractor(name, weights="imagenet", input_shape=SHAPE)
    message = str(err.value)
    assert str(keras_cache_dir()) in message and filename in message
    assert "include_top=False" in message and "weights: <path>" in message


def test_imagenet_weights_load_from_the_keras_cache(source_vgg16):
    cache = keras_cache_dir()
    cache.mkdir(parents=True)
    write_applications_h5(source_vgg16, cache / BACKBONES["vgg16"][1])
    extractor = build_feature_extractor("vgg16", weights="imagenet", input_shape=SHAPE)
    _assert_same_weights(extractor, source_vgg16)


def test_weights_path_in_both_formats(source_vgg16, tmp_path):
    legacy = tmp_path / "legacy.h5"
    write_applications_h5(source_vgg16, legacy)
    modern = tmp_path / "vgg.weights.h5"
    source_vgg16.save_weights(modern)
    for path in (legacy, modern):
        _assert_same_weights(build_feature_extractor("vgg16", weights=str(path), input_shape=SHAPE), source_vgg16)


def test_missing_or_mismatched_weight_files_raise(source_vgg16, tmp_path):
    with pytest.raises(WeightsError, match="nowhere.h5"):
        build_feature_extractor("vgg16", weights=str(tmp_path / "nowhere.h5"))
    vgg16_file = tmp_path / "vgg16.h5"
    write_applications_h5(source_vgg16, vgg16_file)
    with pytest.raises(WeightsError, match="cannot load vgg19"):  # 13 conv layers into VGG19's 16
        build_feature_extractor("vgg19", weights=str(vgg16_file), input_shape=SHAPE)


def test_random_weights_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="wmhkeras.losses.backbones"):
        build_feature_extractor("vgg16", weights="random", input_shape=SHAPE)
    assert "RANDOM" in caplog.text


def test_vgg_preprocess_matches_keras_applications():
    rng = np.random.default_rng(0)
    rgb = rng.random((2, 4, 4, 3), dtype=np.float32)
    expected = keras.applications.vgg16.preprocess_input(255.0 * rgb)
    np.testing.assert_allclose(np.asarray(vgg_preprocess(rgb)), expected, rtol=1e-5, atol=1e-4)
    grey = rgb[..., :1]
    np.testing.assert_allclose(np.asarray(vgg_preprocess(grey)),
                               keras.applications.vgg16.preprocess_input(255.0 * np.repeat(grey, 3, -1)),
                               rtol=1e-5, atol=1e-4)
    with pytest.raises(ConfigError, match="got 2"):
        vgg_preprocess(rgb[..., :2])
