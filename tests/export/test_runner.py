"""``export()``: SavedModel + TFLite artifacts of a run folder or a bare ``.keras`` file, their verification,
the model card, and refusals of bad input (which leave nothing behind). Fixtures: ``conftest.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from tests.export.helpers import leftovers  # noqa: E402
from wmhkeras.errors import ConfigError, InputError, WmhError  # noqa: E402
from wmhkeras.export.options import TFLITE_VARIANTS, resolve_tolerances  # noqa: E402
from wmhkeras.export.report import format_table  # noqa: E402
from wmhkeras.export.runner import export  # noqa: E402
from wmhkeras.models.unet import build_generator  # noqa: E402

# === Export of a run folder ===


@pytest.mark.slow
def test_run_folder_export_verifies_every_artifact(exported, tiny_run):
    out, report = exported
    run, split, _ = tiny_run
    assert report.passed, format_table(report)
    names = [a.name for a in report.artifacts]
    assert names == ["keras", "saved_model", "segment_volume", "fp32", "fp16", "dynamic", "int8"]
    checks = {a.name: a for a in report.artifacts}
    assert checks["saved_model"].max_abs_diff <= 1e-4 and checks["fp32"].max_abs_diff <= 1e-4
    assert checks["segment_volume"].max_abs_diff <= 1e-4
    assert checks["fp16"].mask_dice >= 0.99 and checks["dynamic"].mask_dice >= 0.99
    assert checks["int8"].mask_dice >= 0.95
    # The int8 model is smaller than the float32 one; every file exists with the reported size.
    assert checks["int8"].size_bytes < checks["fp32"].size_bytes
    for v in TFLITE_VARIANTS:
        assert (out / "tflite" / f"model_{v}.tflite").stat().st_size == checks[v].size_bytes
    # Verification used held-back subjects only; calibration the training subjects only.
    held = set(split.validation + split.holdout)
    assert set(report.verification["subjects"]) <= held
    assert set(report.calibration["subjects"]) <= set(split.train)
    assert not leftovers(out.parent)

    saved = json.loads((out / "export_report.json").read_text())
    assert saved["passed"] is True and len(saved["artifacts"]) == 7
    card = json.loads((out / "model_card.json").read_text())
    assert card["modalities"] == ["flair"] and card["normalisation"] == "max" and card["input_size"] == [32, 32]
    assert card["signatures"]["serving_default"]["inputs"]["slices"]["shape"] == [None, 32, 32, 1]
    assert card["signatures"]["segment_volume"]["inputs"]["flair"]["dtype"] == "float32"
    assert card["orientation"].startswith("RAS")
    assert card["training_config"]["model"]["arch"] == "unet"
    assert card["training_data"]["subjects"] == {k: len(v) for k, v in split.to_dict().items()}
    assert card["training_data"]["sites"]["train"] == ["siteA", "siteB"]
    assert card["validation_metrics"]["best_val_dice"] == 0.93
    assert card["versions"]["tensorflow"] == tf.__version__ and card["created"]
    assert set(card["tflite"]) == set(TFLITE_VARIANTS)


# === Bare .keras files ===


@pytest.mark.slow
def test_non_default_input_size_exports_and_verifies(tmp_path):
    path = tmp_path / "wide.keras"
    build_generator("unet", input_shape=(48, 64, 1), depth=2, base_filters=4).save(path)
    report = export(path, tmp_path / "out", tflite=("fp32",))
    assert report.passed, format_table(report)
    assert [a.name for a in report.artifacts] == ["keras", "saved_model", "segment_volume", "fp32"]
    assert "synthetic" in report.verification["source"]
    card = json.loads((tmp_path / "out" / "model_card.json").read_text())
    assert card["input_size"] == [48, 64] and card["training_config"] is None
    assert card["training_data"]["subjects"] == {} and card["training_data"]["dataset"] is None
    assert card["input_requirements"]["voxel_size_mm"] is None and card["holdout_metrics"] is None
    loaded = tf.saved_model.load(str(tmp_path / "out" / "saved_model"))
    spec = loaded.signatures["serving_default"].structured_input_signature[1]["slices"]
    assert spec.shape.as_list() == [None, 48, 64, 1]
    prob = loaded.signatures["segment_volume"](flair=tf.random.uniform((30, 20, 5)))["probabilities"]
    assert prob.shape == (30, 20, 5)


def _bad_checkpoint(kind, tmp_path, bare_keras):
    if kind == "missing":
        return tmp_path / "nope.keras"
    if kind == "text":
        path = tmp_path / "notes.keras"
        path.write_text("these are not weights\n")
        return path
    if kind == "truncated":
        path = tmp_path / "cut.keras"
        data = bare_keras.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    if kind == "classifier":  # a real Keras model, but not (b, H, W, C) -> (b, H, W, 1)
        inputs = keras.Input((32, 32, 1))
        outputs = keras.layers.Dense(3)(keras.layers.Flatten()(inputs))
        path = tmp_path / "classifier.keras"
        keras.Model(inputs, outputs).save(path)
        return path
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "text", "truncated", "classifier"])
def test_bad_checkpoint_is_refused_and_leaves_nothing(kind, tmp_path, bare_keras):
    source = _bad_checkpoint(kind, tmp_path, bare_keras)
    out = tmp_path / "exports" / "model"
    with pytest.raises(InputError, match=source.name):
        export(source, out)
    assert not (tmp_path / "exports").exists()


def test_non_empty_out_dir_is_refused_without_force(tmp_path, bare_keras):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        export(bare_keras, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and not leftovers(tmp_path)


def test_unknown_variant_and_tolerance_are_refused(tmp_path, bare_keras):
    with pytest.raises(ConfigError, match="int4"):
        export(bare_keras, tmp_path / "out", tflite=("fp32", "int4"))
    with pytest.raises(ConfigError, match="tolerances"):
        export(bare_keras, tmp_path / "out", tolerances={"int16": {"mask_dice": 0.9}})
    with pytest.raises(ConfigError, match="mask_dice"):
        resolve_tolerances({"int8": {"mask_dice": 1.5}})
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_int8_without_calibration_data(tmp_path, bare_keras):
    """A bare .keras file: int8 asked for explicitly needs calibration data; the default set skips it."""
    with pytest.raises(InputError, match="--calibration"):
        export(bare_keras, tmp_path / "out", tflite=("int8",))
    with pytest.raises(InputError, match="calibration data"):
        export(bare_keras, tmp_path / "out", tflite=("int8",), calibration_data=np.zeros((4, 16, 16, 1)))
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_exported_saved_model_is_not_a_source(tmp_path):
    folder = tmp_path / "sm"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"")
    (folder / "model_card.json").write_text(json.dumps({"modalities": ["flair"], "normalisation": "max",
                                                        "input_size": [32, 32]}))
    with pytest.raises(WmhError):
        export(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()
