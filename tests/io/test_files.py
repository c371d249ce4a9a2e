"""The one set of atomic writers (wmhkeras.io.files): strict JSON, CSV rows, text; no temporary file left;
files and folders with the modes a plain open / mkdir gives under the umask; a failed write is one
WriteError naming the file and leaves nothing behind."""

import errno
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from wmhkeras.errors import WriteError
from wmhkeras.io.files import (
    StagedFolder,
    atomic_path,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    make_folder,
    staged_folder,
    tf_write_error,
)


def test_atomic_writers(tmp_path):
    out = atomic_write_json(tmp_path / "s.json", {"a": float("nan"), "b": np.float32(1.5), "c": [np.int64(2)]})
    assert json.loads(out.read_text()) == {"a": None, "b": 1.5, "c": [2]}
    out = atomic_write_csv(tmp_path / "rows.csv", [{"x": 1, "y": 2.5}, {"x": 3, "z": "q"}])
    assert out.read_text().splitlines() == ["x,y,z", "1,2.5,", "3,,q"]
    atomic_write_text(atomic_write_text(tmp_path / "t.md", "v1\n"), "v2\n")
    assert (tmp_path / "t.md").read_text() == "v2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv", "s.json", "t.md"]


# === Permissions: what a plain open / mkdir gives under the umask ===


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request):
    """The process umask for one test (restored after it)."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_files_and_staged_folders_get_the_umask_modes(tmp_path, umask):
    text = atomic_write_text(tmp_path / "a" / "t.md", "x\n")  # and its parent, made on the way
    with atomic_path(tmp_path / "b.npy") as tmp:
        np.save(tmp, np.zeros(3))
    with staged_folder(tmp_path / "run") as staged:
        assert _mode(staged.path) == 0o777 & ~umask  # already while it is being built
        atomic_write_json(staged.path / "s.json", {})
        staged.commit()
    assert [_mode(p) for p in (text, tmp_path / "b.npy", tmp_path / "run" / "s.json")] == [0o666 & ~umask] * 3
    assert [_mode(p) for p in (tmp_path / "a", tmp_path / "run")] == [0o777 & ~umask] * 2
    assert _mode(make_folder(tmp_path / "c" / "d")) == 0o777 & ~umask


def test_the_modes_follow_the_umask_of_the_moment(tmp_path):
    old = os.umask(0o077)
    try:
        private = atomic_write_text(tmp_path / "p.txt", "x")
        os.umask(0o002)
        shared = atomic_write_text(tmp_path / "s.txt", "x")
    finally:
        os.umask(old)
    assert (_mode(private), _mode(shared)) == (0o600, 0o664)


# === Writes that fail ===


def _fill_then_fail(code: int):
    """A writer that puts half a file on disk, then fails as the system would (e.g. disk full)."""
    def write(path: Path) -> None:
        path.write_bytes(b"half a fi")
        raise OSError(code, os.strerror(code))
    return write


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_a_failed_write_names_the_file_and_leaves_nothing(tmp_path, code):
    final = atomic_write_text(tmp_path / "summary.csv", "the earlier, complete table\n")
    with pytest.raises(WriteError) as info, atomic_path(final) as tmp:
        _fill_then_fail(code)(tmp)
    assert str(info.value) == f"cannot write {final}: {os.strerror(code)}" and info.value.errno == code
    assert final.read_text() == "the earlier, complete table\n"  # the last complete version stays
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]  # no temporary file left


def test_a_folder_that_cannot_be_made_is_a_write_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(WriteError, match=r"cannot write .*file/x\.json: "):
        atomic_write_json(tmp_path / "file" / "x.json", {})
    with pytest.raises(WriteError, match=r"cannot write .*file/sub: "):
        make_folder(tmp_path / "file" / "sub")
    with pytest.raises(WriteError, match=r"cannot write .*file/run: "):
        StagedFolder(tmp_path / "file" / "run")


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(ValueError, match="bad data"), atomic_path(tmp_path / "x.txt"):
        raise ValueError("bad data")
    assert list(tmp_path.iterdir()) == []


def test_a_staged_folder_that_cannot_be_renamed_is_removed(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    with pytest.raises(WriteError, match=r"cannot write .*/export: Permission denied"):
        with staged_folder(tmp_path / "export") as staged:
            atomic_write_text(staged.path / "model_card.json", "{}")
            monkeypatch.setattr(os, "replace", refuse)
            staged.commit()
    assert list(tmp_path.iterdir()) == []


def test_replacing_a_folder_keeps_the_old_one_when_the_rename_fails(tmp_path, monkeypatch):
    old = make_folder(tmp_path / "export")
    atomic_write_text(old / "model_card.json", "old")
    real_replace = os.replace

    def refuse_the_new(src, dst):
        if Path(src).name.startswith(".tmp-export-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse_the_new)
    with pytest.raises(WriteError, match="No space left on device"):
        with staged_folder(old, replace=True) as staged:
            atomic_write_text(staged.path / "model_card.json", "new")
            staged.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["export"] and (old / "model_card.json").read_text() == "old"


def test_a_failed_write_in_a_staged_folder_names_the_final_path(tmp_path):
    with pytest.raises(WriteError) as info, staged_folder(tmp_path / "export") as staged:
        with atomic_path(staged.path / "tflite" / "model.tflite") as tmp:
            _fill_then_fail(errno.ENOSPC)(tmp)
    assert str(info.value) == f"cannot write {tmp_path / 'export' / 'tflite' / 'model.tflite'}: No space left on device"
    assert list(tmp_path.iterdir()) == []


class _OpError(Exception):
    """Stands for TensorFlow's OpError: the text is in ``message``."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


@pytest.mark.parametrize(("message", "file", "reason"), [
    # seen on a full 200 kB tmpfs: tf.saved_model.save, then a TensorBoard writer
    ("{{function_node __wrapped__SaveV2_dtypes_65_device_/job:localhost/replica:0/task:0/device:CPU:0}} "
     "/m/sm/variables/variables_temp/part-00000-of-00001.data-00000-of-00001.tempstate1; No space left on device "
     "[Op:SaveV2]", "/m/sm/variables/variables_temp/part-00000-of-00001.data-00000-of-00001.tempstate1",
     "No space left on device"),
    ("{{function_node __wrapped__WriteSummary_device_/job:localhost/replica:0/task:0/device:CPU:0}} "
     "/run/tensorboard/train/events.out.tfevents.1.vm.2.0.v2; Permission denied",
     "/run/tensorboard/train/events.out.tfevents.1.vm.2.0.v2", "Permission denied"),
])
def test_tensorflow_errors_for_a_file_are_write_errors(message, file, reason):
    error = tf_write_error(_OpError(message))
    assert str(error) == f"cannot write {file}: {reason}" and error.errno in (errno.ENOSPC, errno.EACCES)


def test_other_tensorflow_errors_are_not_write_errors():
    oom = "OOM when allocating tensor with shape[8,64,224,224] and type float on /job:localhost/device:CPU:0"
    assert tf_write_error(_OpError(oom)) is None and tf_write_error(ValueError("x")) is None
