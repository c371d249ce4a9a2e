"""``wmhkeras export``: default output folder, --force, the printed table and the exit codes."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from click.testing import CliRunner  # noqa: E402

from tests.export.helpers import leftovers  # noqa: E402
from wmhkeras.cli.export import export_command  # noqa: E402
from wmhkeras.export import options  # noqa: E402


@pytest.mark.slow
def test_cli_default_out_force_and_table(tmp_path, bare_keras, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "saved_models" / "model"
    old.mkdir(parents=True)
    (old / "stale.txt").write_text("old export")
    result = CliRunner().invoke(export_command, [str(bare_keras), "--tflite", "none"])
    assert result.exit_code == 2 and "--force" in result.output
    result = CliRunner().invoke(export_command, [str(bare_keras), "--tflite", "none", "--force"])
    assert result.exit_code == 0, result.output
    assert "saved_model" in result.output and "segment_volume" in result.output and "max|diff|" in result.output
    assert sorted(p.name for p in old.iterdir()) == ["export_report.json", "model_card.json", "saved_model"]
    assert not leftovers(tmp_path / "saved_models")


@pytest.mark.slow
def test_cli_exits_1_when_outside_tolerance(tmp_path, bare_keras, monkeypatch):
    monkeypatch.setitem(options.DEFAULT_TOLERANCES, "saved_model", {"max_abs_diff": -1.0})  # nothing can pass
    out = tmp_path / "out"
    result = CliRunner().invoke(export_command, [str(bare_keras), "--out", str(out), "--tflite", "none"])
    assert result.exit_code == 1
    assert "outside tolerance: saved_model" in result.output
    assert json.loads((out / "export_report.json").read_text())["passed"] is False


def test_cli_bad_variant_exits_2(tmp_path, bare_keras):
    result = CliRunner().invoke(export_command, [str(bare_keras), "--out", str(tmp_path / "o"), "--tflite", "int3"])
    assert result.exit_code == 2 and "int3" in result.output
    assert not (tmp_path / "o").exists()


def test_library_calls_are_reachable_from_the_package():
    """``wmhkeras.export.export(...)`` (docs/export.md) resolves to the runner's function."""
    import wmhkeras.export as package
    from wmhkeras.export.runner import export

    assert package.export is export and package.DEFAULT_TOLERANCES is options.DEFAULT_TOLERANCES


@pytest.mark.parametrize("args, message", [
    (["--serving-name", "wmh"], "--serving-name needs --serving-version"),
    (["--serving-version", "0"], "0 is not in the range x>=1"),
    (["--serving-version", "1", "--serving-name", "tflite"], "serving name (--serving-name): 'tflite' is not allowed"),
    (["--serving-version", "1", "--serving-name", "a/b"], "'a/b' is not allowed"),
    (["--card-info", "{info}"], "info.yaml: 'licence' is not a card-info key"),
    (["--metrics", "{info}"], "info.yaml: cannot read"),
])
def test_cli_card_and_serving_options_are_checked_before_any_work(tmp_path, bare_keras, args, message):
    info = tmp_path / "info.yaml"
    info.write_text("licence: MIT\n")
    args = [a.replace("{info}", str(info)) for a in args]
    result = CliRunner().invoke(export_command, [str(bare_keras), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "o").exists()
