"""The run folder (:mod:`wmhkeras.io.run_folder`): a staged new run, an absent or empty folder, the log trimmed to
saved epochs, a folder to resume."""

import pytest

from tests.training.helpers import read_log
from wmhkeras.errors import InputError
from wmhkeras.io.run_folder import RunFolder, check_new_run_dir, staged_run_folder, trim_log


def test_staged_run_folder_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "run"
    with pytest.raises(InputError), staged_run_folder(target) as staged:
        assert staged.path.parent == tmp_path and staged.path.name.startswith(".tmp-run-")
        raise InputError("bad input")
    assert list(tmp_path.iterdir()) == []
    with staged_run_folder(target) as staged:
        (staged.path / "a.txt").write_text("x")
        staged.commit()
    assert (target / "a.txt").read_text() == "x" and len(list(tmp_path.iterdir())) == 1


def test_new_run_dir_must_be_absent_or_empty(tmp_path):
    assert check_new_run_dir(tmp_path / "new") == tmp_path / "new"
    assert check_new_run_dir(tmp_path) == tmp_path  # empty
    (tmp_path / "x").write_text("")
    with pytest.raises(InputError, match="--resume"):
        check_new_run_dir(tmp_path)


def test_trim_log_keeps_complete_rows_of_saved_epochs(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,loss\r\n0,0.9\r\n1,0.8\r\n2,0.7\r\n3,0.")  # epoch 3 cut by a kill
    trim_log(log, 2)
    assert [row["epoch"] for row in read_log(log)] == ["0", "1"]
    trim_log(tmp_path / "missing.csv", 1)  # nothing to do


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(InputError, match="not found"):
        RunFolder(tmp_path / "nope").check_resumable()
    with pytest.raises(InputError, match="config.yaml"):
        RunFolder(tmp_path).check_resumable()
