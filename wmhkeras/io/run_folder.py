"""The run folder: what one training run writes, where, and how it is created and read back.

Layout (``RUN_DIR``)::

    config.yaml               the resolved config (what ``wmhkeras train --resume`` reads back)
    split.json                the subjects of train / validation / hold-out
    versions.json             package versions (``wmhkeras.io.provenance.package_versions``); with the
                              content loss also ``backbone``: its weights' source, file and sha256
                              (``wmhkeras.losses.backbones.weights_record``)
    summary.json              epochs completed, best validation Dice and its epoch, wall time, ...
    log.csv                   one row per epoch (Keras ``CSVLogger``; epoch column 0-based)
    checkpoints/best.keras    the generator at the best validation Dice (inference: no optimizer, no loss)
    checkpoints/last.keras    the full training state after the last completed epoch (with optimizer)
    checkpoints/state.json    the epoch counter of ``last.keras``, written after it
    tensorboard/              TensorBoard event files (``train/``, ``validation/``, ``images/``)
    init.json                 (``train --init MODEL`` only) the model the run started from, its SHA-256,
                              its training config and data (:class:`InitRecord`)

Every file but ``log.csv`` and the event files is written atomically (temp file beside, then
``os.replace``), so a killed run never leaves a truncated file under a final name. A new run folder is
built under a hidden temporary name beside ``RUN_DIR`` and renamed onto it only once every input has been
validated and the model has been built: a run that fails early leaves no folder behind.

Epochs in ``summary.json`` and ``state.json`` count from 1 (epoch 3 is the third epoch, as the progress bar
shows); ``log.csv`` and TensorBoard keep Keras' 0-based epoch index.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from wmhkeras.errors import ConfigError, InputError
from wmhkeras.io.files import atomic_write_json, atomic_write_text, check_new_folder, read_json, staged_folder
from wmhkeras.io.run_files import InitRecord, RunState, RunSummary, Split  # noqa: F401  (public here too)

log = logging.getLogger(__name__)


# === The folder ===


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run folder and the one reader and writer of each file in it (nothing is created by
    constructing it)."""

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
    def last_prev(self) -> Path:
        """The previous ``last.keras``, kept until the new one is committed (:mod:`wmhkeras.io.checkpoints`)."""
        return self.checkpoints / "last.prev.keras"

    @property
    def best_prev(self) -> Path:
        return self.checkpoints / "best.prev.keras"

    @property
    def state_prev(self) -> Path:
        return self.checkpoints / "state.prev.json"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def init(self) -> Path:
        """``init.json`` (:class:`InitRecord`), in runs started from a model's weights only."""
        return self.path / "init.json"

    def read_init(self) -> Optional[InitRecord]:
        """The model the run started from, or None for a run trained from scratch."""
        return InitRecord.from_dict(read_json(self.init), self.init) if self.init.is_file() else None

    def write_init(self, record: InitRecord) -> None:
        atomic_write_json(self.init, record.to_dict())

    def read_state(self) -> RunState:
        """``checkpoints/state.json``, or an empty :class:`RunState` when no epoch was ever started.

        A state.json that cannot be read (truncated, corrupt) gives the previous state
        (``state.prev.json``, one epoch behind) with a warning, or raises :class:`InputError` naming it.
        Resuming chooses its state with :func:`wmhkeras.io.checkpoints.choose_resume_point`.
        """
        if not self.state.is_file():
            return RunState()
        try:
            return RunState.from_dict(read_json(self.state), self.state)
        except InputError as err:
            if not self.state_prev.is_file():
                raise
            log.warning("%s; reading the previous state %s", err, self.state_prev.name)
            return RunState.from_dict(read_json(self.state_prev), self.state_prev)

    def write_state(self, state: RunState) -> None:
        atomic_write_json(self.state, state.to_dict())

    def read_summary(self) -> RunSummary:
        return RunSummary.from_dict(read_json(self.summary), self.summary)

    def write_summary(self, summary: RunSummary) -> None:
        atomic_write_json(self.summary, summary.to_dict())

    def read_split(self) -> Split:
        return Split.read(self.split)

    def write_split(self, split: Split) -> None:
        split.write(self.split)

    def check_resume(self, *, given: bool) -> None:
        """The one check of a resume request: what a resumed run reads from its folder (its config file, split
        and starting model) must not be given again (``given``: a config file, ``--out``, a split or an
        ``--init`` model was), and the folder must be resumable (:meth:`check_resumable`).

        Raises:
            ConfigError: ``given``. InputError: the folder cannot be resumed.
        """
        if given:
            raise ConfigError("--resume RUN_DIR reads the config, split and starting model from RUN_DIR: give no "
                              "CONFIG file, --out, --split or --init")
        self.check_resumable()

    def check_resumable(self) -> None:
        """Raise :class:`InputError` unless this folder holds a run that can be resumed."""
        if not self.path.is_dir():
            raise InputError(f"{self.path}: run folder not found (--resume needs a folder written by wmhkeras train)")
        for need in (self.config, self.split):
            if not need.is_file():
                raise InputError(f"{self.path}: not a wmhkeras run folder ({need.name} is missing)")


def check_new_run_dir(out_dir: str | Path) -> Path:
    """The folder a new run will be written to; it must not exist yet (or be empty)."""
    return check_new_folder(out_dir, f"choose another --out, or continue that run with --resume {out_dir}")


def staged_run_folder(out_dir: str | Path):
    """A new run folder built under a hidden name and renamed onto ``out_dir`` by ``commit()``
    (:func:`wmhkeras.io.files.staged_folder`); removed if the block raises before that."""
    return staged_folder(out_dir, hint=f"choose another --out, or continue that run with --resume {out_dir}")


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
