"""``segment``'s output folder left as it was found when no subject succeeds.

A run writes its shared files (``segment.json``, ``summary.csv``) only once a subject succeeded (or was
kept from an earlier run), and removes the outputs an earlier run left for a subject that fails now only
from then on. When every subject fails, :meth:`FolderGuard.restore` undoes the rest: the output folder
is removed if this run created it (with every folder above it that it created), else only the folders
this run created inside it, once empty; a failed subject's own partial files are removed as it fails
(:func:`remove_written`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


def _first_missing(folder: Path) -> Optional[Path]:
    """The outermost folder of ``folder``'s path (``folder`` included) that does not exist yet, or None."""
    missing = None
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


class FolderGuard:
    """What an output folder held before a run, to leave it so (:meth:`restore`).

    Create it before anything is written; :meth:`expect` names the files the run may write, so that the
    folders it would create inside an existing output folder are known.
    """

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir).absolute()
        self.created = _first_missing(self.out_dir)
        self.new_dirs: set[Path] = set()

    def expect(self, files: Iterable[Path]) -> None:
        """Note the folders (inside the output folder) that writing ``files`` would create."""
        if self.created is not None:
            return
        for parent in {Path(f).absolute().parent for f in files}:
            while parent != self.out_dir and self.out_dir in parent.parents and not parent.exists():
                self.new_dirs.add(parent)
                parent = parent.parent

    def restore(self) -> None:
        """Remove the output folder if this run created it, else the folders it created there, once empty."""
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            log.info("%s: removed (created by this run, and no subject succeeded)", self.created)
            return
        for folder in sorted(self.new_dirs, key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:  # not empty (something else wrote there) or already gone: leave it
                pass


def file_stamps(paths: Iterable[Path]) -> dict[Path, tuple[int, int]]:
    """``(inode, modification time)`` of each of ``paths`` that exists: what an atomic rewrite changes."""
    stamps = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        stamps[Path(path)] = (st.st_ino, st.st_mtime_ns)
    return stamps


def remove_written(paths: Iterable[Path], before: Mapping[Path, tuple[int, int]]) -> list[Path]:
    """Remove those of ``paths`` written since ``before`` (:func:`file_stamps`): new or replaced files.

    Returns the files left untouched since then (an earlier run's outputs), for the caller to remove later.
    """
    now = file_stamps(paths)
    untouched = []
    for path, stamp in now.items():
        if before.get(path) == stamp:
            untouched.append(path)
        else:
            path.unlink(missing_ok=True)
    return untouched
