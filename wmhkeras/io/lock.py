"""One process per output folder: the lock file ``<folder>/.wmhkeras.lock``.

``wmhkeras segment`` holds its ``--out`` folder and ``wmhkeras train`` its run folder (``--resume``
too) for as long as they write into it; a second process that wants the same folder is refused at once
with :class:`~wmhkeras.errors.FolderInUseError` (exit code 2), one line naming the holder's pid, host,
command and start time.

How: an exclusive ``fcntl.flock`` on the open lock file. The kernel drops it when the holder exits,
however it exits (SIGKILL and out-of-memory kills included), so a lock is never left stuck: a lock file
that nobody holds is stale and is simply taken over. The pid, host, command and start time written in
the file only name the holder in the message. On release the file is removed (while still locked, so a
process that opened it just before sees that it was replaced and opens the new one); a killed
holder leaves the hidden file behind, harmless, and never mistaken for an output (BIDS: listed in
``.bidsignore``).

Network file systems: on Linux NFS (v4, or v3 with ``lockd``) ``flock`` is forwarded to the server, so
the lock holds across hosts, and the server releases the lock of a crashed client after its lease
(about 90 s). An NFS mount with ``nolock`` keeps locks local to each host: two hosts are then not kept
apart. Where ``flock`` is refused (``ENOLCK``, ``EOPNOTSUPP``: some NFS v3 and FUSE mounts) the lock
falls back to the file's existence (``O_EXCL``): a lock file naming a pid that is gone *on this host* is
stale and taken over; one from another host is treated as held, for as long as it exists (a training
can run for days, so no age makes it stale); the message says which file to remove once that process
is known to be gone. A forked child (``os.fork`` without ``exec``) shares its parent's lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from wmhkeras.errors import FolderInUseError, InputError
from wmhkeras.io.files import make_folder
from wmhkeras.io.provenance import utc_now

log = logging.getLogger(__name__)

#: Name of the lock file inside the held folder.
LOCK_NAME = ".wmhkeras.lock"

#: ``flock`` errors that mean "not supported here" (fall back to the file's existence), not "held".
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@dataclass(frozen=True)
class Holder:
    """Who holds a folder, as its lock file says (``pid`` None when the file could not be read)."""

    pid: Optional[int] = None
    host: str = ""
    command: str = ""
    started: str = ""

    @classmethod
    def read(cls, path: Path) -> Holder:
        try:
            data = json.loads(path.read_text())
            return cls(int(data["pid"]), str(data.get("host", "")), str(data.get("command", "")),
                       str(data.get("started", "")))
        except (OSError, ValueError, TypeError, KeyError):  # being written, or not ours: the pid is unknown
            return cls()

    def describe(self) -> str:
        if self.pid is None:
            return "another process"
        return f"wmhkeras {self.command or 'process'} (pid {self.pid} on {self.host or '?'}, since {self.started or '?'})"

    def alive_here(self) -> bool:
        """False only when this host is the holder's and no process has its pid."""
        if self.pid is None or self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists, as another user
            return True
        return True


class _Held(Exception):
    """The lock is held (internal); ``by_existence`` when this file system has no ``flock``."""

    def __init__(self, by_existence: bool = False):
        super().__init__()
        self.by_existence = by_existence


def _in_use(folder: Path, holder: Holder, hint: str, by_existence: bool = False) -> FolderInUseError:
    if by_existence:
        hint += f" (this file system has no flock: once that process is gone, remove {folder / LOCK_NAME})"
    return FolderInUseError(f"{folder}: in use by {holder.describe()}; {hint}")


class FolderLock:
    """The lock of one folder: ``with FolderLock(folder, "segment"): ...`` (or :meth:`acquire` / :meth:`release`).

    Args:
        folder: the folder to hold.
        command: what holds it, for the message another process shows (``segment``, ``train``).
        create: make the folder (and missing parents) if needed; :meth:`release` removes the ones it made
            when they are empty again, so a run refused before writing anything leaves no folder.
        hint: the end of the refusal message (what the user can do).
    """

    def __init__(self, folder: str | Path, command: str, create: bool = False,
                 hint: str = "wait for it to finish, or choose another folder"):
        self.folder = Path(folder)
        self.command = command
        self.create = create
        self.hint = hint
        self.fd: Optional[int] = None
        self.created: list[Path] = []

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> FolderLock:
        """Take the lock, or raise :class:`FolderInUseError` naming the holder (nothing changed then)."""
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder}: not a folder")
        if self.create and not self.folder.is_dir():
            self.created = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
            make_folder(self.folder)
        try:
            self.fd = _take(self.path)
            info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "started": utc_now()}
            os.ftruncate(self.fd, 0)
            os.write(self.fd, (json.dumps(info) + "\n").encode())
        except _Held as held:
            self._remove_created()
            raise _in_use(self.folder, Holder.read(self.path), self.hint, held.by_existence) from None
        except BaseException:
            self.release()
            self._remove_created()
            raise
        log.debug("%s: locked (%s)", self.folder, self.path)
        return self

    def moved(self, folder: str | Path) -> Path:
        """The held folder was renamed to ``folder`` (a staged run folder committed): the lock goes with it."""
        self.folder = Path(folder)
        self.created = []
        return self.folder

    def release(self) -> None:
        """Remove the lock file (if it is still ours) and unlock; remove the folders ``create`` made if empty."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if _same_file(self.fd, self.path):
                self.path.unlink()
        os.close(self.fd)
        self.fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self.created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        self.created = []


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _take(path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive lock; :class:`_Held` when another process has it."""
    for _ in range(100):
        try:
            fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
        except FileExistsError:
            try:
                fd, created = os.open(path, os.O_RDWR), False
            except FileNotFoundError:  # removed by its holder in between
                continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _Held() from None
        except OSError as err:
            if err.errno not in _UNSUPPORTED:
                os.close(fd)
                raise
            log.warning("%s: this file system has no flock (%s); locking by the file's existence", path, err)
            if created:  # created exclusively: ours
                return fd
            os.close(fd)
            return _take_exclusive(path)
        if _same_file(fd, path):
            return fd
        os.close(fd)  # its holder removed the file between our open and our lock: open the new one
    raise _Held()


def _take_exclusive(path: Path) -> int:
    """The fallback without ``flock``: create the file exclusively; a stale one (its pid gone on this host)
    is taken over."""
    for _ in range(2):
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            holder = Holder.read(path)
            if holder.alive_here():
                raise _Held(by_existence=True) from None
            log.warning("%s: stale lock of pid %d (gone), taken over", path, holder.pid)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    raise _Held(by_existence=True)


def holder(folder: str | Path) -> Optional[Holder]:
    """The process that holds ``folder`` now, or None (no lock file, or a stale one)."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return Holder.read(path)
    except OSError as err:
        if err.errno not in _UNSUPPORTED:
            raise
        found = Holder.read(path)
        return found if found.alive_here() else None
    finally:
        os.close(fd)  # also drops the shared lock just taken
    return None


def check_free(folder: str | Path, hint: str = "wait for it to finish, or choose another folder") -> None:
    """Raise :class:`FolderInUseError` naming the holder when another process holds ``folder`` (changes nothing)."""
    found = holder(folder)
    if found is not None:
        raise _in_use(Path(folder), found, hint)


def holds_folder(argument: str, command: str):
    """Decorate a function so that it runs holding the folder passed as ``argument`` (created if missing,
    removed again if it is still empty at the end): ``@holds_folder("out_dir", "segment")``."""

    def decorate(func):
        signature = inspect.signature(func)

        @functools.wraps(func)
        def locked(*args, **kwargs):
            folder = signature.bind(*args, **kwargs).arguments[argument]
            with FolderLock(folder, command, create=True):
                return func(*args, **kwargs)

        return locked

    return decorate
