"""The folder lock: one holder at a time, the holder named, never stuck after a SIGKILL, the no-flock fallback."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from wmhkeras.errors import FolderInUseError, InputError
from wmhkeras.io import lock as lock_module
from wmhkeras.io.lock import LOCK_NAME, FolderLock, check_free, holder, holds_folder


def test_one_holder_at_a_time_and_nothing_left_after(tmp_path):
    with FolderLock(tmp_path, "segment") as held:
        info = json.loads(held.path.read_text())
        assert (info["pid"], info["host"], info["command"]) == (os.getpid(), socket.gethostname(), "segment")
        with pytest.raises(FolderInUseError) as err:
            FolderLock(tmp_path, "train").acquire()
        message = str(err.value)
        assert f"pid {os.getpid()}" in message and "wmhkeras segment" in message and "\n" not in message
        assert holder(tmp_path).pid == os.getpid()
        with pytest.raises(FolderInUseError, match="choose another --out"):
            check_free(tmp_path, "choose another --out")
    assert list(tmp_path.iterdir()) == []  # the lock file is removed: never mistaken for an output
    assert holder(tmp_path) is None
    check_free(tmp_path)
    check_free(tmp_path / "missing")


def test_a_killed_holder_never_leaves_the_folder_stuck(tmp_path, other_process):
    proc = other_process(tmp_path)
    with pytest.raises(FolderInUseError, match=f"pid {proc.pid} on {socket.gethostname()}"):
        FolderLock(tmp_path, "segment").acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK_NAME).is_file()  # left behind by the kill ...
    assert holder(tmp_path) is None  # ... but nobody holds it
    with FolderLock(tmp_path, "segment"):  # taken over
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_created_folders_are_removed_again_when_empty(tmp_path, other_process):
    out = tmp_path / "a" / "b"
    with FolderLock(out, "segment", create=True):
        assert out.is_dir()
    assert list(tmp_path.iterdir()) == []  # a run that wrote nothing leaves nothing
    with FolderLock(out, "segment", create=True):
        (out / "mask.nii.gz").write_bytes(b"x")
    assert [p.name for p in out.iterdir()] == ["mask.nii.gz"]  # outputs stay, the lock file goes

    proc = other_process(tmp_path / "held")
    with pytest.raises(FolderInUseError, match=f"pid {proc.pid}"):
        FolderLock(tmp_path / "held", "segment", create=True).acquire()
    assert (tmp_path / "held" / LOCK_NAME).is_file()  # the holder's folder is left alone
    with pytest.raises(InputError, match="not a folder"):
        FolderLock(out / "mask.nii.gz", "segment", create=True).acquire()


def test_the_lock_follows_a_renamed_folder(tmp_path):
    staged, final = tmp_path / ".tmp-run", tmp_path / "run"
    staged.mkdir()
    held = FolderLock(staged, "train").acquire()
    os.replace(staged, final)
    held.moved(final)
    with pytest.raises(FolderInUseError):
        FolderLock(final, "train").acquire()
    held.release()
    assert list(final.iterdir()) == []


def test_release_leaves_a_lock_file_that_is_not_its_own(tmp_path):
    held = FolderLock(tmp_path, "segment").acquire()
    held.path.unlink()
    held.path.write_text("someone else's")
    held.release()
    assert held.path.read_text() == "someone else's"


def test_holds_folder_decorator(tmp_path):
    calls = []

    @holds_folder("out_dir", "segment")
    def work(inputs, out_dir, threshold=0.5):
        calls.append(holder(out_dir).pid)
        return threshold

    assert work([], out_dir=tmp_path / "out", threshold=0.3) == 0.3
    assert calls == [os.getpid()] and not (tmp_path / "out").exists()
    with FolderLock(tmp_path, "segment"), pytest.raises(FolderInUseError):
        work([], tmp_path)
    assert len(calls) == 1


# === File systems without flock ===


@pytest.fixture
def no_flock(monkeypatch):
    def refuse(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_module.fcntl, "flock", refuse)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_without_flock_the_file_itself_is_the_lock(tmp_path, no_flock):
    with FolderLock(tmp_path, "segment"):
        with pytest.raises(FolderInUseError, match=f"pid {os.getpid()}.*remove .*{LOCK_NAME}"):
            FolderLock(tmp_path, "segment").acquire()
        assert holder(tmp_path).pid == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_without_flock_a_dead_pid_on_this_host_is_stale(tmp_path, no_flock):
    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "command": "segment"}))
    assert holder(tmp_path) is None
    with FolderLock(tmp_path, "segment"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    # another host's lock is held for as long as it exists: its pid cannot be checked from here
    path.write_text(json.dumps({"pid": dead_pid(), "host": "elsewhere", "command": "train"}))
    with pytest.raises(FolderInUseError, match="on elsewhere"):
        FolderLock(tmp_path, "segment").acquire()
