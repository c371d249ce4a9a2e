"""segment --precision: bfloat16 detection, the bfloat16 model, the parity gate and the record."""

import json
import logging
import time
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest
from click.testing import CliRunner

import wmhkeras.cli.main  # noqa: F401  (the group first: the command modules import it back)
from tests.inference.helpers import blob_volume, bright_segmenter, free_model_file, write_nifti
from wmhkeras.cli.segment import segment_command
from wmhkeras.errors import ConfigError
from wmhkeras.inference import precision
from wmhkeras.inference.loaders import load_segmenter
from wmhkeras.inference.record import SegmentSettings
from wmhkeras.inference.segment import segment
from wmhkeras.io.model_card import ModelCard

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512bw {extra}
bugs\t\t: spectre_v1
"""


@pytest.fixture(scope="module")
def spread_model(tmp_path_factory):
    """A free-size tiny U-Net whose probabilities spread over (0, 1)."""
    return free_model_file(tmp_path_factory.mktemp("model") / "spread.keras", gain=30.0)


def _no_native(monkeypatch):
    monkeypatch.delenv("WMHKERAS_BF16", raising=False)
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda *a: False)
    monkeypatch.setattr(precision, "gpu_supports_bf16", lambda: False)


def test_cpu_flags():
    assert precision.cpu_flags_bf16(CPUINFO.format(extra="avx512_bf16"))
    assert precision.cpu_flags_bf16(CPUINFO.format(extra="amx_tile amx_bf16"))
    assert not precision.cpu_flags_bf16(CPUINFO.format(extra="avx512_vnni"))
    assert not precision.cpu_flags_bf16("model name\t: avx512_bf16 in a name, not a flag\n")


def test_cpu_file(tmp_path, monkeypatch):
    monkeypatch.setattr(precision.sys, "platform", "linux")
    (tmp_path / "with").write_text(CPUINFO.format(extra="avx512_bf16"))
    (tmp_path / "without").write_text(CPUINFO.format(extra=""))
    assert precision.cpu_supports_bf16(tmp_path / "with")
    assert not precision.cpu_supports_bf16(tmp_path / "without")
    assert not precision.cpu_supports_bf16(tmp_path / "missing")
    monkeypatch.setattr(precision.sys, "platform", "darwin")
    assert not precision.cpu_supports_bf16(tmp_path / "with")


def test_auto_without_native_bfloat16_is_float32(spread_model, monkeypatch):
    _no_native(monkeypatch)
    seg = load_segmenter(spread_model)
    float32_fn = seg.predict_fn
    seg = precision.decide_precision(seg, "auto", np.zeros((4, 32, 32, 1), np.float32), 0.5)
    record = seg.precision
    assert record == {"requested": "auto", "used": "float32", "reason": "auto: no native bfloat16 on this machine",
                      "parity_dice": None, "speedup": None}
    assert seg.predict_fn is float32_fn


def test_bfloat16_is_close_to_float32(spread_model):
    seg = load_segmenter(spread_model)
    x = np.random.default_rng(1).normal(size=(4, 32, 48, 1)).astype(np.float32)
    reference = np.asarray(seg(x))
    fast_seg = precision.decide_precision(seg, "bfloat16", x, 0.5)
    record = fast_seg.precision
    assert record["used"] == "bfloat16" and record["parity_dice"] >= 0.99
    fast = np.asarray(fast_seg(x))
    assert fast.dtype == np.float32 and fast.shape == reference.shape
    assert 0 < np.abs(fast - reference).max() < 0.05  # computed in bfloat16, not float32
    clear = np.abs(reference - 0.5) > 0.05
    assert clear.mean() > 0.5 and reference[clear].min() < 0.5 < reference[clear].max()
    np.testing.assert_array_equal((fast >= 0.5)[clear], (reference >= 0.5)[clear])
    # back to float32 from the bfloat16 segmenter, and the original one left as it was
    assert precision.decide_precision(fast_seg, "float32", x, 0.5).precision["used"] == "float32"
    np.testing.assert_array_equal(np.asarray(precision.decide_precision(fast_seg, "float32", x, 0.5)(x)), reference)
    np.testing.assert_array_equal(np.asarray(seg(x)), reference)


#: The documented rules (module docstring of wmhkeras.inference.precision, README): bfloat16 is used when its
#: masks have Dice >= 0.99 against float32's, and with ``auto`` only when it is not slower (the speedup,
#: recorded to 2 decimals, >= 1.00). The cases sit at the edges.
SPEED_CASES = [(0.6, "float32"), (0.99, "float32"), (1.0, "bfloat16"), (1.8, "bfloat16")]


@pytest.mark.parametrize(("ratio", "used"), SPEED_CASES)
def test_auto_needs_bfloat16_to_be_faster(spread_model, monkeypatch, ratio, used):
    monkeypatch.delenv("WMHKERAS_BF16", raising=False)
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda *a: True)
    monkeypatch.setattr(precision, "speedup", lambda *a: ratio)
    seg = load_segmenter(spread_model)
    record = precision.decide_precision(seg, "auto", np.zeros((2, 32, 32, 1), np.float32), 0.5).precision
    assert record["used"] == used and record["speedup"] == ratio and record["parity_dice"] == 1.0
    # an explicit request is honoured whatever the speed
    assert precision.decide_precision(seg, "bfloat16", np.zeros((2, 32, 32, 1), np.float32), 0.5).precision["used"] == "bfloat16"


def test_environment_overrides_the_detection(spread_model, monkeypatch):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda *a: True)
    monkeypatch.setenv("WMHKERAS_BF16", "0")
    seg = load_segmenter(spread_model)
    assert precision.decide_precision(seg, "auto", None, 0.5).precision["reason"] == "auto: WMHKERAS_BF16=0"
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda *a: False)
    monkeypatch.setattr(precision, "speedup", lambda *a: 2.0)
    monkeypatch.setenv("WMHKERAS_BF16", "1")
    record = precision.decide_precision(load_segmenter(spread_model), "auto", np.zeros((2, 32, 32, 1), np.float32), 0.5).precision
    assert record["used"] == "bfloat16" and record["reason"] == "auto: WMHKERAS_BF16=1"


def test_speedup_times_both():
    def slow(x):
        time.sleep(0.02)
        return x

    assert precision.speedup(slow, lambda x: x, np.zeros(1)) > 5


@pytest.mark.parametrize("dice", [0.9, 0.98999])
def test_failed_parity_falls_back_to_float32(spread_model, monkeypatch, caplog, dice):
    monkeypatch.setattr(precision, "mask_dice", lambda a, b: dice)
    seg = load_segmenter(spread_model)
    float32_fn = seg.predict_fn
    with caplog.at_level(logging.WARNING, logger="wmhkeras.inference.precision"):
        seg = precision.decide_precision(seg, "bfloat16", np.zeros((2, 32, 32, 1), np.float32), 0.5)
        record = seg.precision
    assert record["used"] == "float32" and record["parity_dice"] == dice and "parity" in record["reason"]
    assert seg.predict_fn is float32_fn
    assert any(f"Dice {dice:.4f}" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_parity_at_the_gate_passes(spread_model, monkeypatch):
    """Dice 0.99 exactly is enough (the gate is ``>= 0.99``)."""
    monkeypatch.setattr(precision, "mask_dice", lambda a, b: 0.99)
    seg = load_segmenter(spread_model)
    float32_fn = seg.predict_fn
    seg = precision.decide_precision(seg, "bfloat16", np.zeros((2, 32, 32, 1), np.float32), 0.5)
    record = seg.precision
    assert record["used"] == "bfloat16" and record["parity_dice"] == 0.99 and record["reason"] == "requested"
    assert seg.predict_fn is not float32_fn


def test_segment_json_records_the_precision(spread_model, tmp_path):
    flair = write_nifti(tmp_path / "a.nii.gz", blob_volume(), AFFINE)
    assert segment(spread_model, [flair], tmp_path / "out", SegmentSettings(precision="bfloat16")).ok
    record = json.loads((tmp_path / "out" / "segment.json").read_text())
    assert record["settings"]["precision"] == "bfloat16"
    used = record["model"]["precision"]
    assert used["used"] == "bfloat16" and used["requested"] == "bfloat16" and used["parity_dice"] >= 0.99


def test_bfloat16_is_refused_for_models_that_are_not_keras(tmp_path):
    flair = write_nifti(tmp_path / "a.nii.gz", blob_volume(), AFFINE)
    with pytest.raises(ConfigError, match="bfloat16 needs a .keras file"):
        segment(bright_segmenter(), [flair], tmp_path / "out", SegmentSettings(precision="bfloat16"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="bfloat16 needs a .keras file"):
        precision.check_precision("bfloat16", "saved_model")
    precision.check_precision("auto", "tflite")
    assert segment(bright_segmenter(), [flair], tmp_path / "auto", SegmentSettings(precision="auto")).ok
    record = json.loads((tmp_path / "auto" / "segment.json").read_text())["model"]["precision"]
    assert record["used"] == "float32" and record["reason"] == "auto: not a Keras model"


def test_cli_option(spread_model, tmp_path, monkeypatch):
    _no_native(monkeypatch)
    flair = write_nifti(tmp_path / "a.nii.gz", blob_volume(), AFFINE)
    runner = CliRunner()
    res = runner.invoke(segment_command, [str(spread_model), str(flair), "--out", str(tmp_path / "o"),
                                          "--precision", "float16"])
    assert res.exit_code == 2 and "float16" in res.output and not (tmp_path / "o").exists()
    res = runner.invoke(segment_command, [str(spread_model), str(flair), "--out", str(tmp_path / "o")])  # the default: float32
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "o" / "segment.json").read_text())
    assert record["settings"]["precision"] == "float32" and record["model"]["precision"]["used"] == "float32"


def test_native_bfloat16_reasons(monkeypatch):
    _no_native(monkeypatch)
    assert precision.native_bfloat16() == (False, "no native bfloat16 on this machine")
    monkeypatch.setattr(precision, "gpu_supports_bf16", lambda: True)
    assert precision.native_bfloat16() == (True, "the GPU has compute capability >= 8.0")
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda *a: True)
    assert precision.native_bfloat16() == (True, "the CPU has AVX512-BF16/AMX")
    monkeypatch.setenv("WMHKERAS_BF16", "0")
    assert precision.native_bfloat16() == (False, "WMHKERAS_BF16=0")


def _export_folder(root, bf16: bool):
    """The files of an export that precision looks at: SavedModel folders (an empty saved_model.pb) and cards."""
    card = ModelCard(("flair",), "max", (32, 32))
    for name, p in (("saved_model", "float32"), ("saved_model_bf16", "bfloat16"))[: 1 + bf16]:
        (root / name / "assets.extra").mkdir(parents=True)
        (root / name / "saved_model.pb").write_bytes(b"")
        replace(card, saved_model=name, precision=p).write(root / name / "assets.extra" / "model_card.json")
    return root


def test_bfloat16_saved_model_is_allowed_and_named_in_the_refusal(tmp_path):
    with_bf16 = _export_folder(tmp_path / "a", bf16=True)
    def card_of(folder):
        return ModelCard.read(folder / "assets.extra" / "model_card.json")

    bf16_card, f32_card = card_of(with_bf16 / "saved_model_bf16"), card_of(with_bf16 / "saved_model")
    # the loaded card says it computes in bfloat16
    precision.check_precision("bfloat16", "saved_model", with_bf16 / "saved_model_bf16", bf16_card)
    for model in (with_bf16, with_bf16 / "saved_model", with_bf16 / "tflite" / "model_fp32.tflite"):
        with pytest.raises(ConfigError, match=f"bfloat16 SavedModel: segment with {with_bf16 / 'saved_model_bf16'}$"):
            precision.check_precision("bfloat16", "saved_model", model, f32_card)
    with pytest.raises(ConfigError, match="needs a .keras file"):  # the card decides, not the folder's name
        precision.check_precision("bfloat16", "saved_model", with_bf16 / "saved_model_bf16", f32_card)
    without = _export_folder(tmp_path / "b", bf16=False)
    assert precision.bfloat16_export_beside(without / "saved_model") is None
    with pytest.raises(ConfigError, match=r"float32 \(use --precision auto or float32\)$"):
        precision.check_precision("bfloat16", "saved_model", without / "saved_model")


@pytest.mark.parametrize("requested", ["float32", "auto", "bfloat16"])
def test_a_bfloat16_export_records_bfloat16(requested):
    seg = replace(bright_segmenter(), card=ModelCard(("flair",), "max", (32, 32), saved_model="saved_model_bf16",
                                                     precision="bfloat16"))
    record = precision.decide_precision(seg, requested, None, 0.5).precision
    assert record["used"] == "bfloat16" and record["requested"] == requested
    assert record["reason"].startswith("the exported SavedModel computes in bfloat16")
    assert ("saved_model/ is its float32 graph" in record["reason"]) == (requested == "float32")
    with pytest.raises(ConfigError, match="float16"):
        precision.decide_precision(seg, "float16", None, 0.5)


def test_the_decision_is_a_new_segmenter(spread_model, tmp_path):
    """decide_precision and segment leave the segmenter given as it was (frozen); no state between calls."""
    seg = load_segmenter(spread_model)
    float32_fn = seg.predict_fn
    fast = precision.decide_precision(seg, "bfloat16", np.zeros((2, 32, 32, 1), np.float32), 0.5)
    assert fast is not seg and fast.precision["used"] == "bfloat16" and fast.predict_fn is not float32_fn
    assert seg.precision is None and seg.predict_fn is float32_fn
    assert precision.decide_precision(fast, "bfloat16", None, 0.5) is fast  # decided already: kept as it is
    with pytest.raises(FrozenInstanceError):
        seg.predict_fn = fast.predict_fn
    flair = write_nifti(tmp_path / "a.nii.gz", blob_volume(), AFFINE)
    assert segment(seg, [flair], tmp_path / "out", SegmentSettings(precision="bfloat16")).ok
    assert seg.precision is None and seg.predict_fn is float32_fn


def test_the_sample_is_read_only_when_the_gate_runs(spread_model):
    """``sample`` may be a function: not called for float32; no slices for bfloat16 means float32."""
    seg = load_segmenter(spread_model)

    def unread():
        raise AssertionError("read for float32")

    assert precision.decide_precision(seg, "float32", unread, 0.5).precision["used"] == "float32"
    record = precision.decide_precision(seg, "bfloat16", lambda: None, 0.5).precision
    assert record["used"] == "float32" and record["reason"] == "bfloat16 not checked: no slices for the parity gate"
