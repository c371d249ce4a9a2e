"""Keras' progress output of ``wmhkeras train`` in a log file: one line per epoch, never a redrawn bar."""

import pytest
import yaml
from click.testing import CliRunner

from wmhkeras.cli.train import train_command
from wmhkeras.data.synth import make_cohort


@pytest.mark.slow
def test_training_into_a_log_prints_one_line_per_epoch(tmp_path):
    """CliRunner's stdout is not a terminal, as in a batch job's log: Keras' bar (verbose 1) would redraw
    itself with backspaces and carriage returns; the trainer asks for one line per epoch instead."""
    manifest = make_cohort(tmp_path / "cohort", subjects=4, sites=1, seed=0).manifest
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"split": [0.5, 0.25, 0.25], "lesion_fraction": 0.7},
        "model": {"arch": "unet", "input_size": [32, 32], "depth": 2, "base_filters": 4},
        "loss": {"name": "dice", "weights": "random"},
        "train": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 2, "validation_steps": 1},
    }))
    res = CliRunner().invoke(train_command, [str(config), "--data", str(manifest), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "Epoch 1/2" in res.output and "Epoch 2/2" in res.output
    assert "\x08" not in res.output and "\r" not in res.output
    epoch_lines = [line for line in res.output.splitlines() if line.lstrip().startswith("2/2 - ")]
    assert len(epoch_lines) == 2  # one summary line per epoch
