"""train.precision mixed_bfloat16: the losses stay float32, a saved run records it, and its checkpoints load
for inference computing in float32 (``segment --precision float32`` means float32), export included."""

from __future__ import annotations

import contextlib
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from tests.training.helpers import tiny_cohort, tiny_config
from wmhkeras.inference.loaders import float32_model, load_segmenter
from wmhkeras.io.run_folder import RunFolder
from wmhkeras.models import build_generator
from wmhkeras.training.trainer import build_model, train


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Six synthetic subjects on two sites (4 train / 1 validation / 1 hold-out)."""
    return tiny_cohort(tmp_path_factory.mktemp("cohort"))


@contextlib.contextmanager
def policy(name: str):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def spread_generator(shape, gain=30.0):
    """A tiny dense U-Net built under the current policy, seed 0, its head scaled so that its
    probabilities spread over (0, 1) and a 16-bit computation shows in them."""
    keras.utils.set_random_seed(0)
    model = build_generator("dense_unet", input_shape=shape, depth=2, base_filters=4)
    head = model.get_layer("head_conv")
    head.set_weights([w * gain for w in head.get_weights()])
    return model


# === The losses under mixed_bfloat16 (fast) ===


@pytest.mark.parametrize("name", ["dice", "content", "hybrid"])
def test_losses_compute_in_float32_under_mixed_bfloat16(name):
    cfg = tiny_config(loss={"name": name}, train={"precision": "mixed_bfloat16"})
    with policy("mixed_bfloat16"):
        model, generator = build_model(cfg)
    assert generator.get_layer("enc0_init").compute_dtype == "bfloat16"
    assert generator.get_layer("enc0_init").variable_dtype == "float32"
    assert generator.output.dtype == "float32"
    assert type(model.optimizer).__name__ == "Adam"  # no loss scaling for bfloat16
    if name != "dice":
        content = model.loss if name == "content" else model.loss.content
        assert {layer.compute_dtype for layer in content.get_backbone().layers} == {"float32"}

    rng = np.random.default_rng(0)
    image = rng.random((2, 32, 32, 1), dtype=np.float32)
    mask = (image > 0.8).astype("float32")
    y_true = tf.constant(np.concatenate([mask, image], axis=-1))
    y_pred = generator(image, training=False)
    value = model.loss(y_true, y_pred)
    assert value.dtype == tf.float32
    # Fed 16-bit probabilities, the loss casts them to float32 first: the same value as from their
    # float32 copy, to the last bit.
    rounded = tf.cast(y_pred, tf.bfloat16)
    assert model.loss(y_true, rounded).dtype == tf.float32
    assert float(model.loss(y_true, rounded)) == float(model.loss(y_true, tf.cast(rounded, tf.float32)))


# === Loading a checkpoint saved under a mixed policy (fast) ===


@pytest.mark.parametrize("shape", [(32, 32, 1), (None, None, 1)])
def test_a_mixed_bfloat16_model_loads_computing_in_float32(tmp_path, shape):
    with policy("mixed_bfloat16"):
        mixed = spread_generator(shape)
    path = tmp_path / "mixed.keras"
    mixed.save(path)
    reference = spread_generator(shape)  # float32, the same weights
    reference.set_weights(mixed.get_weights())
    assert reference.get_layer("enc0_init").compute_dtype == "float32"

    segmenter = load_segmenter(path)
    assert {layer.compute_dtype for layer in segmenter.model.layers} == {"float32"}
    x = np.random.default_rng(1).random((4, 32, 32, 1), dtype=np.float32)
    expected = reference.predict(x, verbose=0)
    as_saved = np.asarray(keras.saving.load_model(path)(x, training=False), np.float32)
    # the saved file alone computes in bfloat16: far from float32, so the check below can tell them apart
    assert np.abs(as_saved - expected).max() > 1e-3
    np.testing.assert_allclose(segmenter(x), expected, rtol=0, atol=1e-6)


def test_a_float32_model_is_used_as_it_is():
    model = spread_generator((32, 32, 1))
    assert float32_model(model) is model


# === A whole run (slow) ===


@pytest.mark.slow
def test_a_mixed_bfloat16_run_resumes_segments_and_exports(cohort, tmp_path):
    from wmhkeras.export.runner import export

    cfg = tiny_config(cohort, loss={"name": "content", "weights": "random"},
                      train={"epochs": 1, "image_summary_every": 0, "precision": "mixed_bfloat16"})
    run_dir = tmp_path / "run"
    first = train(cfg, run_dir, verbose=0)
    assert first.summary.precision == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after training
    run = RunFolder(run_dir)
    assert json.loads(run.summary.read_text())["precision"] == "mixed_bfloat16"
    assert yaml.safe_load(run.config.read_text())["train"]["precision"] == "mixed_bfloat16"

    # last.keras keeps the policy, so a resumed run goes on in bfloat16
    last = keras.saving.load_model(run.last)
    assert last.get_layer("enc0_init").compute_dtype == "bfloat16"
    more = tiny_config(cohort, loss={"name": "content", "weights": "random"},
                       train={"epochs": 2, "image_summary_every": 0, "precision": "mixed_bfloat16"})
    resumed = train(more, run_dir, resume=True, verbose=0)
    assert resumed.epochs == 2 and np.isfinite(resumed.history["loss"]).all()
    assert keras.saving.load_model(run.last).get_layer("enc0_init").compute_dtype == "bfloat16"

    segmenter = load_segmenter(run_dir)
    assert {layer.compute_dtype for layer in segmenter.model.layers} == {"float32"}
    # export converts to TFLite, which refuses bfloat16 ops: it worked only once the loader made float32
    report = export(run_dir, tmp_path / "export", tflite=["fp32"])
    assert report.passed and {"keras", "saved_model", "fp32"} <= {a.name for a in report.artifacts}
