"""The model card travels with the SavedModel, holds no path of the exporting machine, and the TensorFlow
Serving layout (``--serving-version``) loads, lists both signatures and replays its warm-up requests.
Fixtures: ``conftest.py``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from click.testing import CliRunner  # noqa: E402

import wmhkeras  # noqa: E402
import wmhkeras.cli.main  # noqa: E402, F401  (the group first: the command modules import it back)
from tests.export.helpers import leftovers  # noqa: E402
from wmhkeras.cli.export import export_command  # noqa: E402
from wmhkeras.cli.segment import segment_command  # noqa: E402
from wmhkeras.evaluation.evaluate import evaluate  # noqa: E402
from wmhkeras.inference.segment import segment  # noqa: E402
from wmhkeras.io.run_folder import RunFolder  # noqa: E402


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def assert_portable(card_path: Path) -> dict:
    """No absolute path, and neither the home nor the temporary folder, anywhere in the card."""
    text = card_path.read_text()
    for private in {str(Path.home()), tempfile.gettempdir(), str(Path(tempfile.gettempdir()).resolve()), "/tmp"}:
        assert private not in text, private
    card = json.loads(text)
    absolute = [s for s in _strings(card) if s.startswith(("/", "~")) or " /" in s or "(/" in s]
    assert not absolute, absolute
    return card


@pytest.mark.slow
def test_card_inside_the_saved_model_is_portable_and_complete(exported, tiny_run):
    out, report = exported
    run, split, by_id = tiny_run
    inside = out / "saved_model" / "assets.extra" / "model_card.json"
    assert inside.read_text() == (out / "model_card.json").read_text()
    card = assert_portable(inside)
    assert card["format_version"] == 3 and card["project_version"] == wmhkeras.__version__
    assert card["source"] == "tiny/checkpoints/best.keras"  # relative to the run folder's parent
    assert card["training_data"]["dataset"] == "cohort/manifest.csv"
    assert card["training_data"]["subjects"] == {k: len(v) for k, v in split.to_dict().items()}
    assert card["training_data"]["licence"] == card["intended_use"] == "not stated"
    # the training subjects of both sites: 2 x 2 x 4 mm and 2.2 x 2.2 x 4 mm (conftest.SITES)
    voxel = card["input_requirements"]["voxel_size_mm"]
    assert voxel["subjects"] == len(split.train)
    np.testing.assert_allclose(voxel["min"], [2.0, 2.0, 4.0], atol=1e-5)
    np.testing.assert_allclose(voxel["max"], [2.2, 2.2, 4.0], atol=1e-5)
    assert card["input_requirements"]["modalities"] == ["flair"] and card["holdout_metrics"] is None
    assert report.passed


@pytest.mark.slow
def test_a_copied_saved_model_folder_alone_segments(exported, tiny_run, tmp_path):
    out, _ = exported
    run, split, by_id = tiny_run
    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(out / "saved_model", copy)
    flair = by_id[split.holdout[0]].flair
    probs = []
    for model, dest in ((copy, tmp_path / "from_copy"), (out, tmp_path / "from_export")):
        result = CliRunner().invoke(segment_command, [str(model), str(flair), "--out", str(dest)])
        assert result.exit_code == 0, result.output
        (prob,) = dest.glob("*_wmh_prob.nii.gz")
        probs.append(np.asarray(nib.load(str(prob)).dataobj))
    np.testing.assert_array_equal(probs[0], probs[1])
    assert json.loads((tmp_path / "from_copy" / "segment.json").read_text())["model"]["source"] == str(copy)


# === TensorFlow Serving ===


def _fields(data: bytes) -> list[tuple[int, bytes]]:
    """The length-delimited fields of a serialised protobuf message (all these protos use only those)."""
    def varint(i: int) -> tuple[int, int]:
        shift = value = 0
        while True:
            byte = data[i]
            value |= (byte & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if byte < 0x80:
                return value, i

    out, i = [], 0
    while i < len(data):
        key, i = varint(i)
        assert key & 7 == 2, f"field {key >> 3}: wire type {key & 7}"
        size, i = varint(i)
        out.append((key >> 3, data[i:i + size]))
        i += size
    return out


def read_warmup(path: Path) -> list[tuple[str, str, dict[str, np.ndarray]]]:
    """``(model name, signature, inputs)`` of each PredictionLog of a TensorFlow Serving warm-up file."""
    from tensorflow.core.framework import tensor_pb2

    requests = []
    for record in tf.data.TFRecordDataset(str(path)):
        ((number, predict_log),) = _fields(record.numpy())
        assert number == 6  # PredictionLog.predict_log
        ((number, request),) = _fields(predict_log)
        assert number == 1  # PredictLog.request
        fields = _fields(request)
        spec = dict(_fields(next(payload for n, payload in fields if n == 1)))  # ModelSpec: name 1, signature 3
        inputs = {}
        for entry in (payload for n, payload in fields if n == 2):  # the inputs map
            parts = dict(_fields(entry))
            inputs[parts[1].decode()] = tf.make_ndarray(tensor_pb2.TensorProto.FromString(parts[2]))
        requests.append((spec[1].decode(), spec[3].decode(), inputs))
    return requests


def _saved_model_cli() -> list[str]:
    script = Path(sys.executable).parent / "saved_model_cli"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


@pytest.mark.slow
def test_serving_layout_with_warmup_card_info_and_holdout_metrics(tiny_run, tmp_path):
    """A run evaluated on its hold-out, exported with --serving-version and --card-info through the CLI."""
    run, split, by_id = tiny_run
    run2 = RunFolder(shutil.copytree(run.path, tmp_path / "run"))
    segment(run2.path, [by_id[i].flair for i in split.holdout], tmp_path / "pred")
    evaluate(tmp_path / "pred", run2.path, run2.path / "evaluate", qc=False)
    info = tmp_path / "info.yaml"
    info.write_text("intended_use: Testing the export.\ntraining_data:\n  licence: CC0\n  citation: none, synthetic\n"
                    "input_requirements:\n  skull_stripped: true\n")
    out = tmp_path / "serving"
    result = CliRunner().invoke(export_command, [str(run2.path), "--out", str(out), "--tflite", "none", "--card-info",
                                                 str(info), "--serving-version", "2", "--serving-name", "wmh"])
    assert result.exit_code == 0, result.output
    assert "SavedModel wmh/2/" in result.output
    version = out / "wmh" / "2"
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "model_card.json", "wmh"]
    assert not leftovers(tmp_path)

    card = assert_portable(version / "assets.extra" / "model_card.json")
    assert card["saved_model"] == "wmh/2" and card["serving"]["version"] == 2
    assert card["intended_use"] == "Testing the export." and card["training_data"]["licence"] == "CC0"
    assert card["input_requirements"]["skull_stripped"] is True and card["limitations"] == "not stated"
    metrics = card["holdout_metrics"]
    assert metrics["source"] == "run/evaluate/summary.json" and metrics["n_subjects"] == len(split.holdout)
    assert "this run's hold-out subjects" in metrics["protocol"] and 0 <= metrics["overall"]["dice"]["mean"] <= 1

    loaded = tf.saved_model.load(str(version))
    assert set(loaded.signatures) == {"serving_default", "segment_volume"}
    shown = subprocess.run([*_saved_model_cli(), "show", "--dir", str(version), "--all"], capture_output=True,
                           text=True, timeout=180, check=True).stdout
    assert "signature_def['serving_default']" in shown and "signature_def['segment_volume']" in shown

    requests = read_warmup(version / "assets.extra" / "tf_serving_warmup_requests")
    assert [(name, sig) for name, sig, _ in requests] == [("wmh", "serving_default"), ("wmh", "segment_volume")]
    for _, signature, inputs in requests:  # each request fits its signature
        outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        expected = inputs["slices"].shape if signature == "serving_default" else inputs["flair"].shape
        assert outputs["probabilities"].shape == expected
    # the export folder, the serving base folder and the version folder all segment
    flair = by_id[split.holdout[0]].flair
    for model in (out, out / "wmh", version):
        result = CliRunner().invoke(segment_command, [str(model), str(flair), "--out", str(tmp_path / "seg")])
        assert result.exit_code == 0, result.output


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["spacing_context", "fixed_context"])
def test_warmup_requests_fit_the_signatures_in_every_mode(mode, tmp_path):
    """Free-size models with the ``spacing`` input, 2.5D context: each warm-up request runs on its signature."""
    from tests.export.helpers import MODES
    from tests.inference.helpers import run_folder
    from wmhkeras.export.saved_model import write_saved_model
    from wmhkeras.export.serving import write_warmup
    from wmhkeras.export.source import resolve_source

    data_cfg, channels = MODES[mode]
    src = resolve_source(run_folder(tmp_path / "run", data_cfg, channels))
    write_saved_model(src, tmp_path / "sm")
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    requests = read_warmup(write_warmup(tmp_path / "sm", src, "wmh"))
    assert [sig for _, sig, _ in requests] == ["serving_default", "segment_volume"]
    (_, _, slices), (_, _, volume) = requests
    assert slices["slices"].shape[3] == channels and set(volume) == (
        {"flair", "spacing"} if data_cfg["resample"] == "spacing" else {"flair"})
    served = loaded.signatures["serving_default"](slices=tf.constant(slices["slices"]))["probabilities"]
    assert served.shape == (*slices["slices"].shape[:3], 1)
    prob = loaded.signatures["segment_volume"](**{k: tf.constant(v) for k, v in volume.items()})["probabilities"]
    assert prob.shape == volume["flair"].shape and np.isfinite(prob.numpy()).all()
