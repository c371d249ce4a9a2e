"""SIGKILL at the named points of an epoch (WMHKERAS_TEST_KILL_AT, :mod:`wmhkeras.io.checkpoints`), each
followed by ``wmhkeras train --resume``, then a truncated ``last.keras`` and a corrupt ``state.json``: the run
ends with the same epochs, the same best validation Dice and the same weights as an uninterrupted run with
the same seed.

One tiny run is killed four times in a row (each resume is killed again at a later point), which costs one
process per kill; the uninterrupted run trains meanwhile in a parallel process. Every commit window of the
file protocol is tested without processes in ``tests/io/test_checkpoints.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import yaml

from tests.training.helpers import TINY
from wmhkeras.data.synth import make_cohort
from wmhkeras.io.checkpoints import KILL_ENV
from wmhkeras.io.lock import LOCK_NAME
from wmhkeras.io.run_folder import RunFolder

pytestmark = pytest.mark.slow

#: ``wmhkeras train`` without relying on its registration in cli/main.py.
TRAIN = "from wmhkeras.cli.train import train_command; train_command()"

#: (kill point, epoch, the epochs that process runs): in the middle of epoch 1's batches (nothing committed
#: yet); while epoch 2's checkpoint is written (the resume starts again at epoch 1, and commits it); after
#: epoch 3's best.keras is in place but before its state.json (the commit window: the resume starts after
#: epoch 1, and the next one after epoch 2, with its best.keras); while epoch 4's TensorBoard images are
#: written (before its checkpoint: epoch 3 is the last committed).
KILLS = [("mid-epoch", 1, [1]), ("checkpoint-write", 2, [1, 2]), ("state-write", 3, [2, 3]), ("tensorboard", 4, [3, 4])]


def start(*args, kill: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop(KILL_ENV, None)
    if kill:
        env[KILL_ENV] = kill
    return subprocess.Popen([sys.executable, "-c", TRAIN, *map(str, args), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc: subprocess.Popen) -> str:
    try:
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return output


def epochs_run(output: str) -> list[int]:
    """The epochs a ``train --quiet`` process started, from its ``Epoch N/4`` lines (flushed as printed)."""
    return [int(n) for n in re.findall(r"^Epoch (\d+)/4$", output, flags=re.M)]


def weights(path) -> list[np.ndarray]:
    return keras.saving.load_model(path, compile=False).get_weights()


def test_sigkill_at_every_named_point_then_resume_ends_as_the_uninterrupted_run(tmp_path):
    manifest = make_cohort(tmp_path / "cohort", subjects=5, sites=1, seed=0).manifest
    config = tmp_path / "cfg.yaml"
    # validation Dice 0, 0, 0.149, 0.123: epoch 3 improves best.keras, 2 and 4 do not
    config.write_text(yaml.safe_dump({
        **TINY,
        "model": {**TINY["model"], "arch": "unet"},
        "loss": {"name": "dice_bce", "weights": "random"},
        "train": {**TINY["train"], "epochs": 4, "image_summary_every": 1},
    }))
    reference, run = RunFolder(tmp_path / "reference"), RunFolder(tmp_path / "run")
    uninterrupted = start(config, "--data", manifest, "--out", reference.path)

    for i, (point, epoch, expected_epochs) in enumerate(KILLS):
        args = ("--resume", run.path) if i else (config, "--data", manifest, "--out", run.path)
        proc = start(*args, kill=f"{point}:{epoch}")
        output = finish(proc)
        assert proc.returncode == -signal.SIGKILL, f"not killed at {point}:{epoch}:\n{output}"
        assert epochs_run(output) == expected_epochs, f"killed at {point}:{epoch}:\n{output}"
        assert (run.path / LOCK_NAME).is_file()  # left by the kill; the next process takes it over
        state = json.loads(run.state.read_text()) if run.state.is_file() else None
        if point == "checkpoint-write":
            assert list(run.checkpoints.glob(".tmp-last-*.keras"))  # killed with the new checkpoint unrenamed
        if point == "state-write":  # killed inside the commit: state.json is moved away, epoch 3 not committed
            assert state is None and json.loads(run.state_prev.read_text())["epochs"] == 2
            assert run.best_prev.is_file()  # epoch 3's best.keras is in place, epoch 1's kept beside it

    # and the files of the last commit (epoch 3) damaged: back to epoch 2 (*.prev), epochs 3 and 4 again
    run.last.write_bytes(run.last.read_bytes()[:1000])
    run.state.write_text('{"epochs": 3, "iterat')
    last = start("--resume", run.path)
    output = finish(last)
    assert last.returncode == 0, output
    assert epochs_run(output) == [3, 4], output
    reference_output = finish(uninterrupted)
    assert uninterrupted.returncode == 0 and epochs_run(reference_output) == [1, 2, 3, 4], reference_output

    # the promise: the same number of epochs and exactly the same best validation Dice (summary.json)
    summary, expected = run.read_summary(), reference.read_summary()
    assert (summary.epochs, summary.best_epoch, summary.finished) == (expected.epochs, expected.best_epoch, True) == (
        4, 3, True)
    assert summary.best_val_dice == expected.best_val_dice > 0
    # ... with every epoch's numbers and the weights the same to the bit, and log.csv one row per epoch
    assert run.log.read_text() == reference.log.read_text()
    for mine, theirs in ((run.last, reference.last), (run.best, reference.best)):
        for a, b in zip(weights(mine), weights(theirs), strict=True):
            np.testing.assert_array_equal(a, b)
    assert not list(run.path.rglob(".tmp-*")) and not (run.path / LOCK_NAME).exists()
