"""The run folder: what one training run writes, where, and how it is created and read back.

Layout (``RUN_DIR``)::

    config.yaml               the resolved config (what ``wmhkeras train --resume`` reads back)
    split.json                the subjects of train / validation / hold-out
    versions.json             package versions (``wmhkeras.utils.package_versions``)
    summary.json              epochs completed, best validation Dice and its epoch, wall time, ...
    log.csv                   one row per epoch (Keras ``CSVLogger``; epoch column 0-based)
    checkpoints/best.keras    the generator at the best validation Dice (inference: no optimizer, no loss)
    checkpoints/last.keras    the full training state after the last completed epoch (with optimizer)
    checkpoints/state.json    the epoch counter of ``last.keras``, written after it
    tensorboard/              TensorBoard event files (``train/``, ``validation/``, ``images/``)

Every file but ``log.csv`` and the event files is written atomically (temp file beside, then
``os.replace``), so a killed run never leaves a truncated file under a final name. A new run folder is
built under a hidden temporary name beside ``RUN_DIR`` and renamed onto it only once every input has been
validated and the model has been built: a run that fails early leaves no folder behind.

Epochs in ``summary.json`` and ``state.json`` count from 1 (epoch 3 is the third epoch, as the progress bar
shows); ``log.csv`` and TensorBoard keep Keras' 0-based epoch index.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from wmhkeras.errors import InputError
from wmhkeras.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run folder (nothing is created by constructing it)."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def split(self) -> Path:
        return self.path / "split.json"

    @property
    def versions(self) -> Path:
        return self.path / "versions.json"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def log(self) -> Path:
        return self.path / "log.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.keras"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.keras"

    @property
    def state(self) -> Path:
        return self.checkpoints / "state.json"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def read_state(self) -> dict:
        """``checkpoints/state.json``, or ``{}`` when no epoch was ever started."""
        return _read_json(self.state) if self.state.is_file() else {}

    def write_state(self, state: dict) -> None:
        atomic_write_json(self.state, state)

    def read_summary(self) -> dict:
        return _read_json(self.summary)

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.summary, summary)

    def check_resumable(self) -> None:
        """Raise :class:`InputError` unless this folder holds a run that can be resumed."""
        if not self.path.is_dir():
            raise InputError(f"{self.path}: run folder not found (--resume needs a folder written by wmhkeras train)")
        for need in (self.config, self.split):
            if not need.is_file():
                raise InputError(f"{self.path}: not a wmhkeras run folder ({need.name} is missing)")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read ({err})") from None


def check_new_run_dir(out_dir: str | Path) -> Path:
    """The folder a new run will be written to; it must not exist yet (or be empty)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(
            f"{out_dir}: already exists and is not empty; choose another --out, or continue that run "
            f"with --resume {out_dir}"
        )
    return out_dir


class StagedRunFolder:
    """A hidden folder beside ``out_dir`` that becomes ``out_dir`` on :meth:`commit`."""

    def __init__(self, out_dir: Path):
        self.target = Path(out_dir)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".tmp-{self.target.name}-", dir=self.target.parent))
        self.committed = False

    def commit(self) -> Path:
        """Rename the staged folder onto ``out_dir`` (which must be absent or an empty folder)."""
        check_new_run_dir(self.target)
        os.replace(self.path, self.target)
        self.committed = True
        self.path = self.target
        return self.target


@contextlib.contextmanager
def staged_run_folder(out_dir: str | Path):
    """Yield a :class:`StagedRunFolder`; if the block raises before ``commit()``, the folder is removed.

    After ``commit()`` the folder is the run folder and stays, whatever happens (it can be resumed).
    """
    staged = StagedRunFolder(check_new_run_dir(out_dir))
    try:
        yield staged
    finally:
        if not staged.committed:
            shutil.rmtree(staged.path, ignore_errors=True)


def trim_log(path: Path, epochs: int) -> None:
    """Keep the header and the rows of the first ``epochs`` epochs of a ``CSVLogger`` file.

    On resume the run restarts after epoch ``epochs``; rows written for a later epoch (the process died
    after logging it but before its checkpoint was complete) or a row cut short by the kill would
    otherwise be duplicated or malformed.
    """
    if not path.is_file():
        return
    rows = list(csv.reader(io.StringIO(path.read_text())))
    if not rows:
        return
    header, kept = rows[0], [rows[0]]
    for row in rows[1:]:
        try:
            complete = len(row) == len(header) and int(row[0]) < epochs
        except ValueError:
            complete = False
        if complete:
            kept.append(row)
    if len(kept) != len(rows):
        log.info("log.csv: dropped %d row(s) of epochs not in the checkpoint", len(rows) - len(kept))
    out = io.StringIO()
    # CSVLogger writes with the default excel dialect ("\r\n" line ends); keep them for its appends.
    csv.writer(out).writerows(kept)
    atomic_write_text(path, out.getvalue())
