"""A training process killed with SIGKILL mid-epoch resumes from its last completed epoch."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.training.helpers import TINY
from wmhkeras.data.synth import make_cohort
from wmhkeras.io.run_folder import RunFolder

#: ``wmhkeras train`` without relying on its registration in cli/main.py.
TRAIN = "from wmhkeras.cli.train import train_command; train_command()"


def start(*args) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-c", TRAIN, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    manifest = make_cohort(tmp_path / "cohort", subjects=5, sites=1, seed=0).manifest
    config = tmp_path / "cfg.yaml"
    steps = 40  # long enough epochs to be caught in the middle
    config.write_text(yaml.safe_dump({
        **TINY,
        "model": {**TINY["model"], "arch": "unet"},
        "train": {**TINY["train"], "epochs": 3, "steps_per_epoch": steps, "image_summary_every": 0},
    }))
    run = RunFolder(tmp_path / "run")

    proc = start(config, "--data", manifest, "--out", run.path, "--quiet")
    deadline = time.monotonic() + 240
    try:
        while True:
            assert proc.poll() is None, f"training ended before it could be killed:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "no second epoch started in time"
            state = run.read_state()  # RunState() until the first epoch starts
            # An epoch finished and the next one started: kill it in the middle of that one.
            if state.epochs >= 1 and state.running_epoch == state.epochs + 1:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    done = run.read_state().epochs  # usually 1; 2 if the next epoch ended before the signal landed
    assert done in (1, 2) and run.last.is_file()
    assert json.loads(run.summary.read_text())["finished"] is False

    resumed = start("--resume", run.path, "--quiet")
    output, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, output
    epochs_run = [int(n) for n in re.findall(r"^Epoch (\d+)/3", output, flags=re.M)]
    assert epochs_run == list(range(done + 1, 4)), output  # continues right after the saved epoch

    summary = json.loads(run.summary.read_text())
    assert summary["epochs"] == 3 and summary["finished"] is True
    state = run.read_state()
    assert (state.epochs, state.iterations) == (3, 3 * steps)
    with open(run.log, newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2"]
    assert not list(run.checkpoints.glob(".tmp-*"))
