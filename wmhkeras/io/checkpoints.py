"""The checkpoint files of a run folder: how an epoch is committed, and which state a resume starts from.

``checkpoints/`` holds ``last.keras`` (model and optimizer after the last committed epoch),
``best.keras``, ``state.json`` (:class:`~wmhkeras.io.run_folder.RunState`: the counters, and the SHA-256
of the ``last.keras`` and ``best.keras`` it describes) and the previous generation of each,
``last.prev.keras``, ``best.prev.keras`` and ``state.prev.json``.

Committing epoch ``e`` (:func:`save_keeping_previous`, :func:`commit_state`), in this order:

1. ``last.keras`` is saved to a temporary file, read back (its zip checksums) and hashed; the current
   ``last.keras`` is renamed to ``last.prev.keras``, then the new one renamed onto ``last.keras``;
2. the same for ``best.keras`` when the epoch improved it;
3. ``state.json`` is renamed to ``state.prev.json`` and the new state written (atomically). This write
   is the commit: until it is complete, the folder's state is that of epoch ``e - 1``.

Every step is a rename, so a process killed at any moment (SIGKILL, out of memory, a preempted node)
leaves whole files only: a state that was committed, with the checkpoint its hash names either as
``last.keras`` or, when the kill fell between steps 1 and 3, as ``last.prev.keras``.
:func:`choose_resume_point` finds it: the newest readable state (``state.json``, else
``state.prev.json``) whose ``last_sha256`` matches ``last.keras`` or ``last.prev.keras``. A truncated or
corrupt ``last.keras`` or ``state.json`` therefore falls back to the previous epoch (which is trained
again, with the same batches: same seed, same result); with nothing intact left, an
:class:`~wmhkeras.errors.InputError` names the file. :func:`restore` then puts the chosen files back
under their own names (copies: ``*.prev`` stay until the next commit).

Test hook: ``WMHKERAS_TEST_KILL_AT=<point>:<epoch>`` makes the process SIGKILL itself at that point
of that epoch (1-based); the points are :data:`KILL_POINTS`, and :func:`kill_point` is the only code
that reads the variable. ``tests/training/test_faults_sigkill.py`` uses it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from wmhkeras.errors import InputError
from wmhkeras.io.files import atomic_path, atomic_write_json, read_json, sha256
from wmhkeras.io.run_folder import RunFolder, RunState

log = logging.getLogger(__name__)

#: Environment variable of the test hook (:func:`kill_point`).
KILL_ENV = "WMHKERAS_TEST_KILL_AT"
#: Where the hook can kill: in the middle of an epoch's batches; after the new ``last.keras`` (``best.keras``)
#: is written to its temporary file; after the old one moved to ``*.prev`` and before the new one is in
#: place; after ``state.json`` moved to ``state.prev.json`` and before the new one is written; while the
#: TensorBoard image summary is written (before its flush).
KILL_POINTS = ("mid-epoch", "checkpoint-write", "checkpoint-rename", "best-write", "best-rename", "state-write",
               "tensorboard")


def kill_point(point: str, epoch: int) -> None:
    """Test hook: SIGKILL this process when ``WMHKERAS_TEST_KILL_AT`` is ``<point>:<epoch>``."""
    if os.environ.get(KILL_ENV) == f"{point}:{epoch}":
        _die()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# === Writing ===


def verified_sha256(path: Path) -> str:
    """The SHA-256 of a just-written ``.keras`` file, once its zip checksums read back right."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile) as err:
        raise OSError(f"{path.name} does not read back ({err})") from None
    if bad is not None:
        raise OSError(f"{path.name} does not read back ({bad} is corrupt)")
    return sha256(path)


def save_keeping_previous(path: Path, previous: Path, write: Callable[[Path], object], point: str,
                          epoch: int) -> str:
    """Write ``path`` with ``write(tmp)`` and return its SHA-256; the file it replaces becomes ``previous``.

    ``point`` (``checkpoint``, ``best``) names the test kill points ``<point>-write`` and ``<point>-rename``.
    """
    with atomic_path(path) as tmp:
        write(tmp)
        digest = verified_sha256(tmp)
        kill_point(f"{point}-write", epoch)
        if path.exists():
            os.replace(path, previous)
        kill_point(f"{point}-rename", epoch)
    return digest


def commit_state(run: RunFolder, state: RunState) -> None:
    """Commit an epoch: ``state.json`` becomes ``state.prev.json``, then ``state`` is written."""
    if run.state.exists():
        os.replace(run.state, run.state_prev)
    kill_point("state-write", state.epochs)
    run.write_state(state)


# === Resuming ===


@dataclass(frozen=True)
class ResumePoint:
    """Where a resume starts: ``state`` (read from ``source``) and the checkpoint file it describes
    (None: start at epoch 1)."""

    state: RunState
    checkpoint: Optional[Path] = None
    source: Optional[Path] = None

    @property
    def epochs(self) -> int:
        return self.state.epochs if self.checkpoint is not None else 0


class _Hashes:
    def __init__(self):
        self.known: dict[Path, Optional[str]] = {}

    def __call__(self, path: Path) -> Optional[str]:
        if path not in self.known:
            self.known[path] = sha256(path) if path.is_file() else None
        return self.known[path]


def _read(path: Path) -> RunState:
    return RunState.from_dict(read_json(path), path)


def choose_resume_point(run: RunFolder) -> ResumePoint:
    """The newest committed state whose checkpoint is intact (module docstring); changes nothing.

    Raises:
        InputError: a checkpoint exists but no intact state / checkpoint pair is left (names the file).
    """
    hashes, problems = _Hashes(), []
    for source in (run.state, run.state_prev):
        if not source.is_file():
            continue
        try:
            state = _read(source)
        except InputError as err:
            problems.append(str(err))
            continue
        point = _match(run, state, source, hashes)
        if point is not None:
            if problems:
                log.warning("%s; resuming from the earlier state %s (epoch %d)", problems[0], source.name, point.epochs)
            return point
        problems.append(f"{run.last}: missing, truncated or corrupt (not the checkpoint {source.name} records)")
    if not problems or not (run.last.is_file() or run.last_prev.is_file()):
        if problems:
            log.warning("%s; no checkpoint was ever saved: starting at epoch 1", problems[0])
        return ResumePoint(RunState())
    raise InputError(f"{problems[0]}; no intact earlier state and checkpoint to fall back to: start a new run, "
                     f"or remove {run.checkpoints} to train this one again from epoch 1")


def _match(run: RunFolder, state: RunState, source: Path, hashes: _Hashes) -> Optional[ResumePoint]:
    """The resume point of ``state`` if its checkpoint is intact, else None."""
    if state.last_sha256 is None:
        if state.epochs == 0:  # no epoch committed yet
            return ResumePoint(state, None, source)
        # a state without checksums: trust last.keras (its step counter is checked on load)
        return ResumePoint(state, run.last if run.last.is_file() else None, source)
    for checkpoint in (run.last, run.last_prev):
        if hashes(checkpoint) == state.last_sha256:
            return ResumePoint(state, checkpoint, source)
    return None


def restore(run: RunFolder, point: ResumePoint) -> None:
    """Put the chosen state and checkpoint back under their own names (and ``best.keras`` with them);
    remove the temporary files of a killed writer. Run by the process that holds the folder's lock."""
    if point.checkpoint is not None and point.checkpoint != run.last:
        log.warning("resuming from %s (epoch %d): %s was not committed", point.checkpoint.name, point.epochs, run.last.name)
        _copy(point.checkpoint, run.last)
    if point.source is not None and point.source != run.state:
        atomic_write_json(run.state, point.state.to_dict())
    wanted = point.state.best_sha256
    if wanted is not None and (not run.best.is_file() or sha256(run.best) != wanted):
        if run.best_prev.is_file() and sha256(run.best_prev) == wanted:
            log.warning("%s was not committed: the previous %s is restored", run.best.name, run.best.name)
            _copy(run.best_prev, run.best)
        else:
            log.warning("%s is not the one %s records; it is replaced at the next improvement", run.best, run.state.name)
    for folder in (run.path, run.checkpoints):
        for leftover in folder.glob(".tmp-*"):
            if leftover.is_file():
                log.info("removing %s, left by a killed writer", leftover)
                leftover.unlink()


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
