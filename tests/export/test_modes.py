"""Free-size models in every resampling mode: the exported ``segment_volume`` (and the TFLite file) give the
probabilities ``wmhkeras segment`` gives with the ``.keras`` checkpoint, on the input's own grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from tests.export.helpers import MODES, leftovers  # noqa: E402
from tests.inference.helpers import free_model_file, run_folder, write_nifti  # noqa: E402
from wmhkeras.export.report import format_table  # noqa: E402
from wmhkeras.export.runner import export  # noqa: E402
from wmhkeras.inference.segment import segment  # noqa: E402

#: 0.5 x 0.5 x 2 mm voxels, an odd in-plane size (padding and cropping are uneven).
SHAPE, VOXEL = (37, 29, 6), (0.5, 0.5, 2.0)

def _flair(path):
    rng = np.random.default_rng(0)
    data = rng.uniform(0.05, 0.3, SHAPE).astype(np.float32)
    data[10:16, 8:14, 2:4] = 1.0
    affine = np.diag([*VOXEL, 1.0])
    affine[:3, 3] = [-9.0, -7.0, -5.0]
    return write_nifti(path, data, affine), data, affine


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(MODES))
def test_segment_volume_matches_wmhkeras_segment(mode, tmp_path):
    data_cfg, channels = MODES[mode]
    run = run_folder(tmp_path / "run", data_cfg, channels)
    flair_path, flair, affine = _flair(tmp_path / "a.nii.gz")

    report = export(run, tmp_path / "exp", tflite=("fp32",))
    assert report.passed, format_table(report)
    assert [a.name for a in report.artifacts] == ["keras", "saved_model", "segment_volume", "fp32"]
    assert not leftovers(tmp_path)

    # `wmhkeras segment` with the checkpoint: outputs on the input's exact grid
    assert segment(run, [flair_path], tmp_path / "keras").ok
    out = nib.load(str(tmp_path / "keras" / "a_wmh_prob.nii.gz"))
    assert out.shape == SHAPE
    np.testing.assert_array_equal(out.affine, affine)
    prob = np.asarray(out.dataobj)
    assert (prob >= 0.5).any() and (prob < 0.5).any()  # the comparison covers both sides of the threshold

    # the exported segment_volume, called as a TensorFlow-only app would (spacing: the voxel size in mm)
    loaded = tf.saved_model.load(str(tmp_path / "exp" / "saved_model"))
    inputs = {"flair": tf.constant(flair)}
    if data_cfg["resample"] == "spacing":
        inputs["spacing"] = tf.constant(VOXEL, tf.float32)
    volume = loaded.signatures["segment_volume"](**inputs)["probabilities"].numpy()
    np.testing.assert_allclose(volume, prob, atol=1e-4)

    # `wmhkeras segment` with the export (SavedModel and fp32 TFLite) reads the card and agrees
    for name, source in (("sm", tmp_path / "exp"), ("tfl", tmp_path / "exp" / "tflite" / "model_fp32.tflite")):
        assert segment(source, [flair_path], tmp_path / name).ok
        np.testing.assert_allclose(np.asarray(nib.load(str(tmp_path / name / "a_wmh_prob.nii.gz")).dataobj), prob,
                                   atol=1e-4)

    card = json.loads((tmp_path / "exp" / "model_card.json").read_text())
    free = data_cfg["resample"] != "fixed"
    assert card["input_size"] == (None if free else [32, 32])
    assert card["resample"] == {"mode": data_cfg["resample"], "spacing": data_cfg.get("spacing"), "multiple": 4}
    assert card["context_slices"] == data_cfg.get("context_slices", 0)
    slices = card["signatures"]["serving_default"]["inputs"]["slices"]
    assert slices["shape"] == ([None, None, None, channels] if free else [None, 32, 32, channels])
    assert card["tflite"]["fp32"]["input_shape"] == slices["shape"]
    assert ("spacing" in card["signatures"]["segment_volume"]["inputs"]) == (data_cfg["resample"] == "spacing")
    record = json.loads((tmp_path / "keras" / "segment.json").read_text())["model"]
    assert record["resample"] == card["resample"] and record["context_slices"] == card["context_slices"]


@pytest.mark.slow
def test_free_tflite_runs_on_two_slice_sizes(tmp_path):
    """A free-size export keeps TFLite's height and width dynamic: LiteRT's runner takes any slice size."""
    from ai_edge_litert.interpreter import Interpreter

    model_path = free_model_file(tmp_path / "free.keras")
    report = export(model_path, tmp_path / "exp", tflite=("fp32", "dynamic"))
    assert [a.name for a in report.artifacts] == ["keras", "saved_model", "segment_volume", "fp32", "dynamic"]
    assert report.passed or report.failures == ["dynamic"]  # an untrained net's masks flip on quantisation noise
    model = keras.saving.load_model(model_path)
    rng = np.random.default_rng(0)
    for variant in ("fp32", "dynamic"):
        interpreter = Interpreter(model_path=str(tmp_path / "exp" / "tflite" / f"model_{variant}.tflite"))
        assert interpreter.get_input_details()[0]["shape_signature"].tolist() == [-1, -1, -1, 1]
        runner = interpreter.get_signature_runner("serving_default")
        for shape in ((1, 16, 20, 1), (3, 24, 12, 1), (1, 16, 20, 1)):
            x = rng.random(shape, dtype=np.float32)
            got = runner(slices=x)["probabilities"]
            assert got.shape == (*shape[:3], 1)
            np.testing.assert_allclose(got, model(x, training=False).numpy(), atol=1e-4 if variant == "fp32" else 0.05)
    card = json.loads((tmp_path / "exp" / "model_card.json").read_text())
    assert card["input_size"] is None and card["resample"] == {"mode": "none", "spacing": None, "multiple": 4}


def test_old_cards_still_segment(tmp_path):
    """A card without resample / context_slices (format version 1) is fixed resampling at input_size."""
    from wmhkeras.inference.sources import inspect_model

    (tmp_path / "saved_model").mkdir()
    (tmp_path / "saved_model" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "model_card.json").write_text(json.dumps(
        {"format_version": 1, "modalities": ["flair"], "normalisation": "max", "input_size": [48, 64]}))
    spec = inspect_model(tmp_path)
    assert spec.input_size == (48, 64) and spec.context_slices == 0
    assert (spec.resampling.mode, spec.resampling.input_size) == ("fixed", (48, 64))
