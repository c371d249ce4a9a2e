"""The ``wmhkeras`` group: every command registered, ``--help`` without TensorFlow, ``config`` prints YAML."""

import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from wmhkeras.cli.main import main

COMMANDS = ["check", "config", "evaluate", "experiment", "export", "models", "segment", "summarize", "synth", "train"]


def test_help_lists_every_command_without_importing_tensorflow():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from wmhkeras.cli.main import main\n"
        "res = CliRunner().invoke(main, ['--help'])\n"
        "assert res.exit_code == 0, res.output\n"
        "print(res.output)\n"
        "loaded = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = [line.split()[0] for line in proc.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == COMMANDS == sorted(main.commands)


def test_config_prints_the_resolved_config_and_refuses_a_bad_override():
    res = CliRunner().invoke(main, ["config", "--set", "train.epochs=3"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.output)["train"]["epochs"] == 3
    bad = CliRunner().invoke(main, ["config", "--set", "train.nonsense=1"])
    assert bad.exit_code == 2 and "error:" in bad.output


@pytest.mark.parametrize("args", [
    ["synth", ""],
    ["train", "configs/demo.yaml", "--out", ""],
    ["experiment", "configs/demo.yaml", "--out", ""],
    ["export", "model.keras", "--out", ""],
    ["segment", "model.keras", "flair.nii.gz", "--out", ""],
    ["segment", "model.keras", "flair.nii.gz", "--out", " "],
    ["evaluate", "--pred", "p", "--truth", "t", "--out", ""],
    ["summarize", "configs", "--out", ""],
    ["summarize", "configs", "--out", "all.csv", "--qc-html", ""],
])
def test_an_empty_out_is_refused_before_any_work(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.yaml").write_text("version: 1\n")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert "an empty path: name the output" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]   # nothing written
