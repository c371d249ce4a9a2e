"""Frozen VGG feature extractors: shapes, truncation, offline weight loading, the carried VGG19 blocks,
partial ``.npz`` weight files, clear errors."""

import hashlib
import logging

import h5py
import keras
import numpy as np
import pytest

from tests.conftest import REPO
from wmhkeras.config import load_config
from wmhkeras.errors import ConfigError, WeightsError
from wmhkeras.losses.backbones import (
    BACKBONES,
    CARRIED,
    CARRIED_SHA256,
    build_feature_extractor,
    keras_cache_dir,
    layer_names,
    read_npz_layers,
    vgg_preprocess,
    weights_record,
    weights_source,
)

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


def write_npz(path, arrays: dict) -> None:
    """An ``.npz`` weights file of ``{"<layer>/<weight>": array}``."""
    np.savez(path, **arrays)


def npz_of(model: keras.Model, upto: str) -> dict:
    """The ``.npz`` arrays of ``model``'s conv layers up to ``upto``."""
    names = layer_names(model.name)  # keras.applications names its models vgg16 / vgg19
    keep = names[: names.index(upto) + 1]
    return {f"{layer.name}/{w}": np.asarray(v) for layer in model.layers if layer.name in keep and layer.weights
            for w, v in zip(("kernel", "bias"), layer.weights, strict=True)}


def test_missing_vgg16_imagenet_weights_say_where_and_how_and_that_vgg19_works_offline():
    filename = BACKBONES["vgg16"][1]
    with pytest.raises(WeightsError) as err:
        build_feature_extractor("vgg16", weights="imagenet", input_shape=SHAPE)
    message = str(err.value)
    assert str(keras_cache_dir()) in message and filename in message
    assert "include_top=False" in message and "weights: <path>" in message
    assert "`backbone: vgg19` works offline" in message and "\n" not in message


def test_layer_names_are_keras_applications_ones():
    for name, (ctor, _) in BACKBONES.items():
        model = getattr(keras.applications, ctor)(include_top=False, weights=None, input_shape=SHAPE)
        assert layer_names(name) == [layer.name for layer in model.layers[1:]]


def test_vgg19_imagenet_works_offline_from_the_carried_blocks():
    """An empty Keras cache (conftest): VGG19's ImageNet blocks 1-2 come from the package, checked by sha256."""
    carried = CARRIED["vgg19"]
    assert hashlib.sha256(carried.read_bytes()).hexdigest() == CARRIED_SHA256["vgg19"]
    assert (carried.parent / "NOTICE").is_file() and "arXiv:1409.1556" in (carried.parent / "NOTICE").read_text()
    assert not keras_cache_dir().exists()
    extractor = build_feature_extractor("vgg19", weights="imagenet", input_shape=SHAPE)
    assert [layer.name for layer in extractor.layers[1:]] == layer_names("vgg19")[:6]  # up to block2_pool only
    assert [tuple(o.shape) for o in extractor.outputs] == [(None, 16, 16, 64), (None, 8, 8, 128)]
    with np.load(carried) as arrays:
        for layer in extractor.layers[1:]:
            for w, got in zip(("kernel", "bias") if layer.weights else (), layer.weights, strict=True):
                np.testing.assert_array_equal(np.asarray(got), arrays[f"{layer.name}/{w}"])
    np.testing.assert_allclose(np.asarray(extractor.get_layer("block1_conv1").bias)[:3],
                               [0.7301776, 0.06493629, 0.03428847])
    assert weights_record("vgg19", "imagenet") == {
        "name": "vgg19", "layers": ["block1_pool", "block2_pool"], "weights": "imagenet", "source": "carried",
        "file": "wmhkeras/losses/weights/vgg19_imagenet_block1-2.npz", "sha256": CARRIED_SHA256["vgg19"]}


def test_carried_weights_give_the_shared_files_features_layer_by_layer(shared_vgg19):
    """The carried blocks equal the shared ImageNet file's, and give the same features at every layer as
    the Keras-applications VGG19 holding the shared file's weights."""
    with np.load(shared_vgg19) as shared, np.load(CARRIED["vgg19"]) as carried:
        assert carried.files == [k for k in shared.files if k.startswith(("block1_", "block2_"))]
        for key in carried.files:
            assert carried[key].dtype == shared[key].dtype == np.float32
            np.testing.assert_array_equal(carried[key], shared[key])
        reference = keras.applications.VGG19(include_top=False, weights=None, input_shape=(40, 48, 3))
        for layer in reference.layers:
            if f"{layer.name}/kernel" in shared.files:
                layer.set_weights([shared[f"{layer.name}/kernel"], shared[f"{layer.name}/bias"]])
    layers = layer_names("vgg19")[:6]
    ours = build_feature_extractor("vgg19", layers, "imagenet", input_shape=(40, 48, 3))
    from_shared = build_feature_extractor("vgg19", layers, str(shared_vgg19), input_shape=(40, 48, 3))
    assert weights_source("vgg19", str(shared_vgg19), layers).kind == "file"
    images = vgg_preprocess(np.random.default_rng(0).random((2, 40, 48, 1), dtype=np.float32))
    want = keras.Model(reference.input, [reference.get_layer(layer).output for layer in layers])(images)
    for layer, a, b, c in zip(layers, ours(images), from_shared(images), want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=layer)
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-3, err_msg=layer)
        assert np.asarray(a).std() > 0, layer


def test_a_partial_npz_builds_only_the_layers_up_to_the_deepest_requested(source_vgg16, tmp_path):
    path = tmp_path / "vgg16_block1-2.npz"
    write_npz(path, npz_of(source_vgg16, "block2_pool"))
    assert read_npz_layers("vgg16", path) == layer_names("vgg16")[:6]
    extractor = build_feature_extractor("vgg16", ("block2_conv1", "block1_pool"), str(path), input_shape=SHAPE)
    assert [layer.name for layer in extractor.layers[1:]] == layer_names("vgg16")[:4]
    _assert_same_weights(extractor, source_vgg16)
    record = weights_record("vgg16", path, ("block2_conv1",))
    assert (record["source"], record["file"]) == ("file", str(path))
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_layer_deeper_than_the_file_holds_is_one_clear_error(source_vgg16, tmp_path):
    path = tmp_path / "vgg16_block1.npz"
    write_npz(path, npz_of(source_vgg16, "block1_pool"))
    with pytest.raises(WeightsError) as err:
        build_feature_extractor("vgg16", ("block1_pool", "block2_pool"), str(path), input_shape=SHAPE)
    assert str(err.value) == (f"layer 'block2_pool' of vgg16 is deeper than the weights file {str(path)!r} holds "
                              "(deepest layer: block1_pool)")
    # The carried VGG19 blocks stop at block2_pool; deeper layers need the Keras-applications file.
    with pytest.raises(WeightsError) as err:
        weights_source("vgg19", "imagenet", ("block3_conv1",))
    message = str(err.value)
    assert message.startswith("layer 'block3_conv1' of vgg19 is deeper than the ImageNet weights the package "
                              "carries, vgg19_imagenet_block1-2.npz (deepest layer: block2_pool)")
    assert BACKBONES["vgg19"][1] in message and str(keras_cache_dir()) in message and "\n" not in message


def test_the_keras_cache_file_serves_only_layers_past_the_carried_ones():
    cache = keras_cache_dir()
    cache.mkdir(parents=True)
    keras.utils.set_random_seed(2)
    source = keras.applications.VGG19(include_top=False, weights=None, input_shape=SHAPE)
    write_applications_h5(source, cache / BACKBONES["vgg19"][1])
    assert weights_source("vgg19", "imagenet").kind == "carried"  # the same bytes on every machine
    assert weights_source("vgg19", "imagenet", ("block1_pool", "block3_pool")).kind == "keras_cache"
    extractor = build_feature_extractor("vgg19", ("block3_pool",), "imagenet", input_shape=SHAPE)
    _assert_same_weights(extractor, source)
    assert weights_record("vgg19", "imagenet", ("block3_pool",))["file"] == BACKBONES["vgg19"][1]


def test_npz_of_another_backbone_or_shape_is_refused(source_vgg16, tmp_path):
    vgg19 = tmp_path / "vgg19_block1-3.npz"
    keras.utils.set_random_seed(3)
    write_npz(vgg19, npz_of(keras.applications.VGG19(include_top=False, weights=None, input_shape=SHAPE),
                            "block3_pool"))
    with pytest.raises(WeightsError, match=r"is not a vgg16 weights file: it holds 'block3_conv4/bias' and 1 more"):
        weights_source("vgg16", str(vgg19))
    bad = npz_of(source_vgg16, "block1_pool")
    bad["block1_conv2/kernel"] = bad["block1_conv2/kernel"][:, :, :32]
    write_npz(tmp_path / "bad.npz", bad)
    with pytest.raises(WeightsError, match=r"block1_conv2/kernel has shape \(3, 3, 32, 64\), vgg16 needs \(3, 3, 64"):
        build_feature_extractor("vgg16", ("block1_pool",), str(tmp_path / "bad.npz"), input_shape=SHAPE)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="cannot read the vgg16 weights file"):
        weights_source("vgg16", str(tmp_path / "junk.npz"))


@pytest.mark.parametrize("config", ["paper.yaml", "paper_miccai2017.yaml"])
def test_paper_configs_use_vgg19_imagenet_offline(config):
    lo = load_config([REPO / "configs" / config]).loss
    assert (lo.backbone, lo.weights, lo.uses_backbone) == ("vgg19", "imagenet", True)
    assert weights_source(lo.backbone, lo.weights, lo.layers).kind == "carried"


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
