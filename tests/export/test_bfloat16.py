"""The bfloat16 SavedModel of an export (``--saved-model``): written only when asked for, whatever the
machine and its timings, its card, ``wmhkeras segment`` on it, and the table's runtime and speed columns.
Fixtures: ``conftest.py``.

The speed comparison is replaced by a fixed ratio (``runner.bf16_speedup``) where a test needs one, so
that no outcome depends on what this machine measures.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from click.testing import CliRunner  # noqa: E402

from tests.export.helpers import leftovers, mask_dice  # noqa: E402
from wmhkeras.cli.export import export_command  # noqa: E402
from wmhkeras.errors import ConfigError  # noqa: E402
from wmhkeras.export import runner  # noqa: E402
from wmhkeras.export.options import parse_saved_models  # noqa: E402
from wmhkeras.export.report import ArtifactCheck, ExportReport, format_table  # noqa: E402
from wmhkeras.inference import precision  # noqa: E402
from wmhkeras.inference.record import SegmentSettings
from wmhkeras.inference.segment import segment  # noqa: E402
from wmhkeras.io.model_card import ModelCard  # noqa: E402

BF16 = "saved_model_bf16"


def _ratio(monkeypatch, value: float) -> None:
    monkeypatch.setattr(runner, "bf16_speedup", lambda float32, bfloat16: value)


# === Options ===


def test_parse_saved_models():
    assert parse_saved_models(None) is None
    assert parse_saved_models("float32") == ("float32",)
    assert parse_saved_models("bfloat16, float32") == ("float32", "bfloat16")
    assert parse_saved_models(["bfloat16"]) == ("float32", "bfloat16")  # float32 is always written
    with pytest.raises(ConfigError, match="'float16' is not known"):
        parse_saved_models("float32,float16")
    with pytest.raises(ConfigError, match="always written"):
        parse_saved_models(" , ")


@pytest.mark.parametrize("args, message", [
    (["--saved-model", "float16"], "'float16' is not known"),
    (["--saved-model", ""], "the float32 SavedModel is always written"),
    (["--saved-model", "float32,bfloat16", "--serving-version", "1"], "not written with --serving-version"),
])
def test_cli_saved_model_option_is_checked_before_any_work(tmp_path, bare_keras, args, message):
    result = CliRunner().invoke(export_command, [str(bare_keras), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "o").exists() and not leftovers(tmp_path)


def test_library_refuses_bfloat16_in_the_serving_layout_before_any_work(tmp_path, bare_keras):
    with pytest.raises(ConfigError, match="not written in the TensorFlow Serving layout"):
        runner.export(bare_keras, tmp_path / "o", saved_models="float32,bfloat16", serving_version=1)
    with pytest.raises(ConfigError, match="'fp16' is not known"):
        runner.export(bare_keras, tmp_path / "o", saved_models=["fp16"])
    assert not (tmp_path / "o").exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("native", ["0", "1"])
def test_plan_writes_bfloat16_only_when_asked_for(monkeypatch, native):
    """Native bfloat16 or not, the default writes float32 alone; listed, bfloat16 is written."""
    from wmhkeras.export.serving import serving_layout

    monkeypatch.setenv("WMHKERAS_BF16", native)
    assert runner._plan_bfloat16(None, None) is False
    assert runner._plan_bfloat16(None, serving_layout("wmh", 1)) is False
    assert runner._plan_bfloat16(("float32",), None) is False
    assert runner._plan_bfloat16(("float32", "bfloat16"), None) is True


def test_speed_line_follows_the_speed_rule_of_segment():
    """Hand-made checks: 10 ms float32 against 16 ms (0.62x), 10 ms (1.00x) and 5 ms (2x) bfloat16; the
    rule is :func:`wmhkeras.inference.precision.bfloat16_faster` (not slower, at 2 decimals)."""
    f32 = ArtifactCheck("saved_model", "saved_model", 1, 10.0, 0.0, 1.0)
    line = runner.bf16_speed_line(f32, ArtifactCheck(BF16, BF16, 1, 16.0, 1e-3, 0.995))
    assert line == "bfloat16 SavedModel: 0.62x the float32 SavedModel (16.00 vs 10.00 ms/slice), not faster on this machine"
    assert runner.bf16_speed_line(f32, ArtifactCheck(BF16, BF16, 1, 10.0, 0, 1)).endswith(", faster on this machine")
    assert runner.bf16_speed_line(f32, ArtifactCheck(BF16, BF16, 1, 5.0, 0, 1)).startswith("bfloat16 SavedModel: 2.00x")
    assert precision.bfloat16_faster(1.0) and precision.bfloat16_faster(0.996) and not precision.bfloat16_faster(0.99)


# === Default: float32 alone ===


@pytest.mark.slow
def test_default_writes_float32_alone(exported):
    """The default export holds no bfloat16 SavedModel and the report lists none as skipped."""
    out, report = exported
    assert not (out / BF16).exists()
    assert BF16 not in report.skipped
    card = ModelCard.read(out / "model_card.json")
    assert card.precision == "float32" and set(card.saved_models) == {"float32"}
    # every row says what ran it; Keras is the speed reference
    checks = {a.name: a for a in report.artifacts}
    assert checks["keras"].speedup == 1.0 and checks["keras"].runtime.startswith("TF")
    assert all(checks[v].runtime.startswith("LiteRT") and checks[v].threads >= 1 for v in ("fp32", "int8"))
    assert checks["fp32"].speedup == round(checks["keras"].latency_ms / checks["fp32"].latency_ms, 3)


@pytest.mark.slow
def test_asked_for_it_is_written_and_segments(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("WMHKERAS_BF16", "1")
    _ratio(monkeypatch, 1.5)
    run, split, by_id = tiny_run
    out = tmp_path / "exp"
    report = runner.export(run.path, out, tflite=(), saved_models="float32,bfloat16")
    assert report.passed, format_table(report)
    assert [a.name for a in report.artifacts] == ["keras", "saved_model", "segment_volume", BF16,
                                                  "segment_volume_bf16"]
    assert BF16 not in report.skipped and not leftovers(tmp_path)
    checks = {a.name: a for a in report.artifacts}
    assert checks[BF16].path == BF16 and checks[BF16].runtime.endswith("bf16")
    assert checks[BF16].mask_dice >= 0.99 and checks[BF16].tolerance == {"mask_dice": 0.99}
    assert "TF" in format_table(report) and "bf16" in format_table(report)

    # the report survives its JSON file
    assert ExportReport.read(out) == report
    assert json.loads((out / "export_report.json").read_text())["artifacts"][3]["runtime"] == checks[BF16].runtime

    # the card: beside and inside saved_model/ for float32, inside saved_model_bf16/ naming that one
    outer = ModelCard.read(out / "model_card.json")
    assert outer == ModelCard.read(out / "saved_model" / "assets.extra" / "model_card.json")
    inner = ModelCard.read(out / BF16 / "assets.extra" / "model_card.json")
    assert (outer.saved_model, outer.precision) == ("saved_model", "float32")
    assert (inner.saved_model, inner.precision) == (BF16, "bfloat16")
    assert inner.saved_models == outer.saved_models and outer.saved_models["bfloat16"]["path"] == BF16

    # `wmhkeras segment` on the folder alone: the mask of the float32 SavedModel, and a bfloat16 record
    flair = by_id[split.holdout[0]].flair
    results = {}
    for name, chosen in (("saved_model", "float32"), (BF16, "float32"), (BF16 + "_auto", "auto")):
        model = out / name.removesuffix("_auto")
        assert segment(model, [flair], tmp_path / name, SegmentSettings(precision=chosen)).ok
        (prob,) = (tmp_path / name).glob("*_wmh_prob.nii.gz")
        record = json.loads((tmp_path / name / "segment.json").read_text())["model"]["precision"]
        results[name] = np.asarray(nib.load(str(prob)).dataobj), record
    assert results["saved_model"][1]["used"] == "float32"
    for name in (BF16, BF16 + "_auto"):
        prob, record = results[name]
        assert record["used"] == "bfloat16" and "bfloat16" in record["reason"], record
        assert mask_dice(prob, results["saved_model"][0]) >= 0.99
        assert (prob >= 0.5).any()
    assert not np.array_equal(results[BF16][0], results["saved_model"][0])  # it did compute in bfloat16

    # --precision bfloat16 through segment: allowed for the bfloat16 SavedModel; refused for the float32
    # one before any work, naming the bfloat16 one
    assert segment(out / BF16, [flair], tmp_path / "bf16_asked", SegmentSettings(precision="bfloat16")).ok
    (prob,) = (tmp_path / "bf16_asked").glob("*_wmh_prob.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(str(prob)).dataobj), results[BF16][0])
    for model in (out / "saved_model", out):
        with pytest.raises(ConfigError, match=f"segment with {out / BF16}"):
            segment(model, [flair], tmp_path / "refused", SegmentSettings(precision="bfloat16"))
        assert not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_native_bfloat16_default_is_float32_alone_whatever_the_speed(tiny_run, tmp_path, monkeypatch, caplog):
    """On a machine with native bfloat16 and bfloat16 faster, the default export is still float32 alone
    (its content does not depend on a timing); the log says how to ask for bfloat16."""
    monkeypatch.setenv("WMHKERAS_BF16", "1")
    _ratio(monkeypatch, 2.0)
    run, _, _ = tiny_run
    out = tmp_path / "exp"
    with caplog.at_level("INFO", logger="wmhkeras.export.runner"):
        report = runner.export(run.path, out, tflite=())
    assert report.passed and [a.name for a in report.artifacts] == ["keras", "saved_model", "segment_volume"]
    assert BF16 not in report.skipped
    assert any("--saved-model float32,bfloat16" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "model_card.json", "saved_model"]
    assert set(ModelCard.read(out / "model_card.json").saved_models) == {"float32"}
    with pytest.raises(ConfigError, match=r"\(use --precision auto or float32\)"):
        precision.check_precision("bfloat16", "saved_model", out / "saved_model")  # no bfloat16 export to name


@pytest.mark.slow
def test_asked_for_it_is_kept_even_when_slower_and_fails_like_any_artifact(tiny_run, tmp_path, monkeypatch):
    """WMHKERAS_BF16=0 (no native bfloat16) and 0.5x: written all the same; a tolerance nothing in bfloat16
    meets (max |diff| 0) fails the export, as any artifact would (exit code 1 in the CLI)."""
    _ratio(monkeypatch, 0.5)
    run, _, _ = tiny_run
    out = tmp_path / "exp"
    report = runner.export(run.path, out, tflite=(), saved_models="float32,bfloat16",
                           tolerances={"saved_model_bf16": {"max_abs_diff": 0.0}})
    assert not report.passed and report.failures == [BF16]
    assert BF16 not in report.skipped and (out / BF16 / "saved_model.pb").is_file()
    assert (out / BF16 / "assets.extra" / "model_card.json").is_file()


def test_a_report_without_runtime_columns_reads_and_prints(tmp_path):
    """export_report.json written before the runtime, threads and speed fields: read with them empty."""
    old = {"out_dir": "x", "source": "m.keras", "created": "2025-01-01T00:00:00Z", "passed": True, "skipped": {},
           "verification": {"slices": 2, "source": "synthetic"}, "calibration": {},
           "artifacts": [{"name": "keras", "path": "m.keras", "size_bytes": 2048, "latency_ms": 1.5,
                          "max_abs_diff": 0.0, "mask_dice": 1.0, "tolerance": {}, "passed": True}]}
    (tmp_path / "export_report.json").write_text(json.dumps(old))
    report = ExportReport.read(tmp_path)
    assert report.artifacts == [ArtifactCheck("keras", "m.keras", 2048, 1.5, 0.0, 1.0)]
    row = format_table(report).splitlines()[2].split()
    assert row == ["keras", "-", "-", "2.0", "KB", "1.50", "-", "0.00e+00", "1.0000", "reference", "yes"]
