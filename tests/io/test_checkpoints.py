"""The checkpoint commit protocol of a run folder: a kill at every step of a commit, and truncated or corrupt
``last.keras`` / ``state.json``, each resumed from the right state.

Epochs are committed by the real :class:`~wmhkeras.training.callbacks.RunCheckpoint` (its ``on_epoch_begin``
and ``on_epoch_end``), given stand-ins for the Keras models whose ``save`` writes a small zip with a tag, so
every kill point fires inside the callback's own order and no model is built.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.io.helpers import _generator_saved_as_is, fake_run, write_zip  # noqa: F401  (the autouse fixture)
from wmhkeras.errors import InputError
from wmhkeras.io import checkpoints
from wmhkeras.io.checkpoints import (
    KILL_ENV,
    KILL_POINTS,
    choose_resume_point,
    kill_point,
    restore,
    sha256,
    verified_sha256,
)
from wmhkeras.io.run_folder import RunFolder, RunState

#: The epochs of the fake runs (:data:`tests.io.helpers.VAL_DICE`) that improve best.keras.
IMPROVING = {1, 3}


class Killed(BaseException):
    """Stands for SIGKILL: passes through every ``except Exception``."""


def tag(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        return archive.read("model").decode()


def killed_run(tmp_path, monkeypatch, point: str, at: int, epochs: int = 3) -> RunFolder:
    """A fake run killed at ``point`` of epoch ``at``."""
    def die():
        raise Killed

    monkeypatch.setattr(checkpoints, "_die", die)
    monkeypatch.setenv(KILL_ENV, f"{point}:{at}")
    with pytest.raises(Killed):
        fake_run(tmp_path, epochs)
    monkeypatch.delenv(KILL_ENV)
    return RunFolder(tmp_path / "run")


def resumed(run: RunFolder) -> tuple[int, str, str]:
    """Resume: the chosen epoch, and the tags of last.keras and best.keras once restored."""
    point = choose_resume_point(run)
    restore(run, point)
    assert RunState.from_dict(checkpoints.read_json(run.state)) == point.state
    return point.epochs, tag(run.last), tag(run.best)


# === A kill at every step of a commit ===


COMMIT_POINTS = [p for p in KILL_POINTS if p not in ("mid-epoch", "tensorboard")]
#: Every commit step, in an epoch that keeps best.keras (2) and in one that improves it (3).
KILLS = [(p, at) for p in COMMIT_POINTS for at in (2, 3) if at in IMPROVING or not p.startswith("best")]


@pytest.mark.parametrize(("point", "at"), KILLS)
def test_a_kill_during_a_commit_resumes_from_the_epoch_before(tmp_path, monkeypatch, point, at):
    run = killed_run(tmp_path, monkeypatch, point, at)
    # the previous epoch, its checkpoint, and the best.keras its state names (epoch 1's, not the uncommitted 3)
    assert resumed(run) == (at - 1, f"last{at - 1}", "best1")


def test_a_commit_is_complete_once_state_json_is_written(tmp_path):
    run = fake_run(tmp_path, 3)
    assert resumed(run) == (3, "last3", "best3")
    assert tag(run.last_prev) == "last2" and tag(run.best_prev) == "best1"
    assert RunState.from_dict(checkpoints.read_json(run.state_prev)).epochs == 2
    state = RunState.from_dict(checkpoints.read_json(run.state))
    assert (state.iterations, state.best_epoch, state.best, state.running_epoch) == (9, 3, 0.6, None)


def test_a_kill_in_the_first_commit_starts_again_at_epoch_1(tmp_path, monkeypatch):
    run = killed_run(tmp_path, monkeypatch, "state-write", 1)
    point = choose_resume_point(run)
    assert (point.epochs, point.checkpoint) == (0, None)


def test_restore_removes_what_a_killed_writer_left(tmp_path, monkeypatch):
    run = killed_run(tmp_path, monkeypatch, "checkpoint-write", 2)
    (run.path / ".tmp-summary-1234.json").write_text("{")
    # atomic_path removes its temporary file on the way out of an exception; a SIGKILL leaves it
    (run.checkpoints / ".tmp-last-abcd.keras").write_bytes(b"PK")
    restore(run, choose_resume_point(run))
    assert not list(run.path.rglob(".tmp-*"))


# === Truncated or corrupt files ===


def truncate(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_a_truncated_last_keras_falls_back_to_the_previous_checkpoint(tmp_path, caplog):
    run = fake_run(tmp_path, 3)
    truncate(run.last)
    assert resumed(run) == (2, "last2", "best1")
    assert "last.keras: missing, truncated or corrupt" in caplog.text
    assert sha256(run.last) == sha256(run.last_prev)  # restored as a copy: *.prev stays until the next commit


def test_a_corrupt_state_json_falls_back_to_the_previous_state(tmp_path, caplog):
    run = fake_run(tmp_path, 3)
    run.state.write_text('{"epochs": 3, "iter')
    assert resumed(run) == (2, "last2", "best1")
    assert "state.json: cannot read" in caplog.text
    run.state.write_text('{"epochs": -1}')  # valid JSON, impossible value
    assert choose_resume_point(run).epochs == 2


def test_read_state_falls_back_too(tmp_path):
    run = fake_run(tmp_path, 2)
    run.state.write_text("")
    assert run.read_state().epochs == 1
    run.state_prev.unlink()
    with pytest.raises(InputError, match="state.json: cannot read"):
        run.read_state()


def test_nothing_intact_left_is_one_error_naming_the_file(tmp_path):
    run = fake_run(tmp_path, 3)
    truncate(run.last)
    run.last_prev.unlink()
    with pytest.raises(InputError, match=r"last\.keras: missing, truncated or corrupt") as err:
        choose_resume_point(run)
    assert "no intact earlier state" in str(err.value) and "\n" not in str(err.value)

    run = fake_run(tmp_path / "b", 3)
    run.state.write_text("not json")
    run.state_prev.unlink()
    with pytest.raises(InputError, match=r"state\.json: cannot read"):
        choose_resume_point(run)
    before = sorted(p.name for p in run.checkpoints.iterdir())
    with pytest.raises(InputError):
        choose_resume_point(run)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == before  # choosing changes nothing


def test_without_any_checkpoint_a_bad_state_starts_again(tmp_path):
    run = RunFolder(tmp_path)
    run.checkpoints.mkdir()
    assert choose_resume_point(run).epochs == 0  # no state at all
    run.state.write_text("{")
    assert choose_resume_point(run).epochs == 0  # nothing was ever saved: nothing to lose


def test_a_state_without_checksums_trusts_last_keras(tmp_path):
    """State files written before checksums were kept (the step counter is checked when it is loaded)."""
    run = fake_run(tmp_path, 2)
    run.write_state(RunState(epochs=2, iterations=6))
    point = choose_resume_point(run)
    assert (point.epochs, point.checkpoint) == (2, run.last)


# === The writer and the test hook ===


def test_a_checkpoint_that_does_not_read_back_is_refused(tmp_path):
    path = tmp_path / "m.keras"
    write_zip("x")(path)
    assert verified_sha256(path) == sha256(path)
    truncate(path, 30)
    with pytest.raises(OSError, match="does not read back"):
        verified_sha256(path)


def test_kill_point_fires_only_at_its_point_and_epoch(monkeypatch):
    fired = []
    monkeypatch.setattr(checkpoints, "_die", lambda: fired.append(True))
    monkeypatch.delenv(KILL_ENV, raising=False)
    kill_point("state-write", 2)
    monkeypatch.setenv(KILL_ENV, "state-write:2")
    kill_point("state-write", 1)
    kill_point("checkpoint-write", 2)
    assert fired == []
    kill_point("state-write", 2)
    assert fired == [True]
