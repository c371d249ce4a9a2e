"""Helpers shared by the io tests: fake runs whose checkpoints the real training callback commits."""

import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from wmhkeras.io.run_folder import RunFolder
from wmhkeras.training import callbacks

#: The validation Dice of each epoch of the fake runs below: epochs 1 and 3 improve best.keras.
VAL_DICE = {1: 0.5, 2: 0.4, 3: 0.6}


def write_zip(tag: str):
    def write(path: Path) -> None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("model", tag)

    return write


class FakeModel:
    """What RunCheckpoint uses of a Keras model: ``save`` (a zip holding ``<prefix><epoch>``) and the
    optimizer's step counter (3 steps per epoch)."""

    def __init__(self, prefix: str):
        self.prefix, self.epoch = prefix, 0
        self.optimizer = SimpleNamespace(iterations=SimpleNamespace(numpy=lambda: 3 * self.epoch))

    def save(self, path) -> None:
        write_zip(f"{self.prefix}{self.epoch}")(path)


@pytest.fixture(autouse=True)
def _generator_saved_as_is(monkeypatch):
    """best.keras is the generator itself (the real one saves an uncompiled Keras view of it)."""
    monkeypatch.setattr(callbacks, "inference_model", lambda generator, free=True: generator)


def epoch(checkpoint: callbacks.RunCheckpoint, e: int) -> None:
    """Epoch ``e`` (1-based) as ``fit`` drives the callback: its begin, then its end with the epoch's logs."""
    checkpoint.model.epoch = checkpoint.generator.epoch = e
    checkpoint.on_epoch_begin(e - 1)
    checkpoint.on_epoch_end(e - 1, {"val_dice": VAL_DICE[e]})


def fake_run(tmp_path: Path, epochs: int) -> RunFolder:
    run = RunFolder(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    checkpoint = callbacks.RunCheckpoint(run, FakeModel("best"))
    checkpoint.set_model(FakeModel("last"))
    for e in range(1, epochs + 1):
        epoch(checkpoint, e)
    return run
