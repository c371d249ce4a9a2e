"""Resume faults that need no training: nothing intact left is one error naming the file (exit 2, nothing
changed); early stopping keeps its count across a resume. The fallbacks themselves: every commit window in
``tests/io/test_checkpoints.py``, a truncated ``last.keras`` and a corrupt ``state.json`` on a tiny real run
after real SIGKILLs in ``test_faults_sigkill.py``."""

from __future__ import annotations

import keras
import pytest
from click.testing import CliRunner

from tests.io.helpers import _generator_saved_as_is, fake_run  # noqa: F401 (the fixture: fake checkpoints)
from tests.training.helpers import tiny_config
from wmhkeras.config import save_config
from wmhkeras.data.datasets import read_manifest
from wmhkeras.data.splits import make_split
from wmhkeras.data.synth import make_cohort
from wmhkeras.io.lock import LOCK_NAME
from wmhkeras.io.run_folder import RunFolder
from wmhkeras.training.callbacks import RunEarlyStopping


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cohort"), subjects=3, sites=1, seed=0).manifest


@pytest.fixture
def run_folder(manifest, tmp_path) -> RunFolder:
    """A run folder (config, split of a real cohort) with three committed epochs of (fake) checkpoints."""
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    cfg = tiny_config(manifest, train={"epochs": 5})
    save_config(cfg, run.config)
    run.write_split(make_split(read_manifest(manifest), cfg.data.split, cfg.train.seed))
    fake_run(tmp_path, 3)
    return run


def resume(run: RunFolder):
    from wmhkeras.cli.train import train_command

    return CliRunner().invoke(train_command, ["--resume", str(run.path)])


@pytest.mark.parametrize("damage", ["last.keras", "state.json"])
def test_nothing_intact_is_one_error_naming_the_file(run_folder, damage):
    run = run_folder
    if damage == "last.keras":
        run.last.write_bytes(run.last.read_bytes()[:40])
        run.last_prev.unlink()
    else:
        run.state.write_text('{"epochs": 3, "iterat')
        run.state_prev.unlink()
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    result = resume(run)
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"{run.checkpoints / damage}:" in error[0] and "no intact earlier" in error[0]
    assert {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()} == before  # nothing changed
    assert not (run.path / LOCK_NAME).exists()


def test_early_stopping_keeps_its_count_across_a_resume():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    resumed = RunEarlyStopping({"wait": 1, "best": 0.5}, monitor="val_dice", mode="max", patience=2)
    resumed.set_model(model)
    resumed.on_train_begin()
    resumed.on_epoch_end(3, {"val_dice": 0.4})  # a second epoch without improvement: patience 2 is used up
    assert model.stop_training and resumed.saved_state() == {"wait": 2, "best": 0.5}

    model.stop_training = False
    fresh = RunEarlyStopping(None, monitor="val_dice", mode="max", patience=2)
    fresh.set_model(model)
    fresh.on_train_begin()
    fresh.on_epoch_end(3, {"val_dice": 0.4})  # what a resume without the count would do: go on
    assert not model.stop_training and fresh.saved_state() == {"wait": 0, "best": 0.4}
