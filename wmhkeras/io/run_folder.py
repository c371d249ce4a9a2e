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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from wmhkeras.errors import ConfigError, InputError
from wmhkeras.io.files import atomic_write_json, atomic_write_text, check_new_folder, read_json, staged_folder
from wmhkeras.io.model_card import ParentModel

log = logging.getLogger(__name__)


# === Split ===


@dataclass(frozen=True)
class Split:
    """Subject ids of the training, validation and hold-out sets (``split.json``).

    Constructing one checks only its structure (lists of ids, no id in two sets); whether the ids are
    in a cohort is :func:`wmhkeras.data.splits.check_split`'s job.
    """

    train: tuple[str, ...]
    validation: tuple[str, ...] = ()
    holdout: tuple[str, ...] = ()

    KEYS = ("train", "validation", "holdout")

    def __post_init__(self):
        seen: dict[str, str] = {}
        for key in self.KEYS:
            ids = getattr(self, key)
            if isinstance(ids, str) or not all(isinstance(i, str) for i in ids):
                raise InputError(f"split: {key} must be a list of subject ids, got {ids!r}")
            object.__setattr__(self, key, tuple(ids))
            for sid in ids:
                if sid in seen:
                    raise InputError(f"split: subject {sid!r} is listed in both {seen[sid]} and {key}")
                seen[sid] = key

    @classmethod
    def from_dict(cls, data, source: Any = "split") -> Split:
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in cls.KEYS):
            raise InputError(f"{source}: expected a JSON object with lists {', '.join(cls.KEYS)}")
        try:
            return cls(**{k: tuple(data[k]) for k in cls.KEYS})
        except InputError as err:
            raise InputError(f"{source}: {str(err).removeprefix('split: ')}") from None

    def to_dict(self) -> dict[str, list[str]]:
        return {k: list(getattr(self, k)) for k in self.KEYS}

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in self.KEYS}

    @property
    def subjects(self) -> tuple[str, ...]:
        return self.train + self.validation + self.holdout

    @classmethod
    def read(cls, path: str | Path) -> Split:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: split file not found")
        return cls.from_dict(read_json(path), path)

    def write(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())


# === State and summary ===


def _from_known(cls, data: dict, path: Any):
    """Build dataclass ``cls`` from the keys of ``data`` it knows; unknown keys go to ``extra`` if it has one."""
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    names = {f.name for f in fields(cls)}
    known = {k: v for k, v in data.items() if k in names and k != "extra"}
    if "extra" in names:
        known["extra"] = {k: v for k, v in data.items() if k not in names}
    try:
        return cls(**known)
    except TypeError as err:
        raise InputError(f"{path}: malformed ({err})") from None


@dataclass(frozen=True)
class RunState:
    """``checkpoints/state.json``: where ``last.keras`` stands, written after it (epochs count from 1).

    ``last_sha256`` / ``best_sha256``: the SHA-256 of the ``last.keras`` / ``best.keras`` this state
    describes (None before the first checkpoint, and in a state without checksums);
    ``early_stopping``: the early-stopping count (``wait``) and its ``best``, restored on resume.
    The commit order and the resume rules are in :mod:`wmhkeras.io.checkpoints`.
    """

    epochs: int = 0
    iterations: Optional[int] = None
    running_epoch: Optional[int] = None
    monitor: Optional[str] = None
    best: Optional[float] = None
    best_epoch: Optional[int] = None
    wall_time_s: float = 0.0
    started: Optional[str] = None
    updated: Optional[str] = None
    last_sha256: Optional[str] = None
    best_sha256: Optional[str] = None
    early_stopping: Optional[dict] = None

    @classmethod
    def from_dict(cls, data: dict, path: Any = "state.json") -> RunState:
        state = _from_known(cls, data, path)
        if not isinstance(state.epochs, int) or state.epochs < 0:
            raise InputError(f"{path}: epochs must be a whole number >= 0, got {state.epochs!r}")
        if state.early_stopping is not None and not isinstance(state.early_stopping, dict):
            raise InputError(f"{path}: early_stopping must be an object, got {state.early_stopping!r}")
        return state

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunSummary:
    """``summary.json``: what a run did so far (rewritten every epoch, final when ``finished``).

    ``best_val_dice`` is ``None`` when ``best.keras`` is chosen by another quantity (``monitor``).
    Fields written by newer versions and not known here are kept in ``extra``.
    """

    run_dir: str = ""
    loss: str = ""
    arch: str = ""
    subjects: dict = field(default_factory=dict)
    sites: list = field(default_factory=list)
    cache: Optional[str] = None
    data: dict = field(default_factory=dict)
    epochs_planned: int = 0
    steps_per_epoch: int = 0
    global_batch_size: int = 0
    replicas: int = 1
    distribution: str = "none"
    precision: str = "float32"
    started: Optional[str] = None
    epochs: int = 0
    best_val_dice: Optional[float] = None
    best_epoch: Optional[int] = None
    monitor: Optional[str] = None
    best: Optional[float] = None
    wall_time_s: float = 0.0
    last_epoch_logs: dict = field(default_factory=dict)
    finished: bool = False
    stopped_early: Optional[bool] = None
    updated: Optional[str] = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict, path: Any = "summary.json") -> RunSummary:
        return _from_known(cls, data, path)

    def to_dict(self) -> dict:
        out = asdict(self)
        extra = out.pop("extra")
        return {**out, **extra}


@dataclass(frozen=True)
class InitRecord:
    """``init.json``: the model a fine-tuning run started from (``wmhkeras train --init MODEL``).

    ``model``: as it was named (a built-in name or a path); ``builtin``: the built-in model's name, when it
    was one; ``format``: ``saved_model`` or ``keras``; ``path``: what was loaded (absolute); ``sha256``:
    of that file or folder (:func:`~wmhkeras.io.files.path_sha256`); ``config``: the config it was trained
    with (a run's ``config.yaml``, an export's ``training_config``; None for a ``.keras`` file outside a run);
    ``settings``: the preprocessing its source records (modalities, normalisation, resample, spacing,
    input_size, context_slices; None when unknown); ``training_data``: what it was trained on
    (:class:`~wmhkeras.io.model_card.TrainingData` fields, licence included); ``parent``: the model it was
    itself fine-tuned from (a :class:`~wmhkeras.io.model_card.ParentModel` mapping), if any.
    """

    model: str
    format: str
    path: str
    sha256: str
    builtin: Optional[str] = None
    config: Optional[dict] = None
    settings: Optional[dict] = None
    training_data: dict = field(default_factory=dict)
    parent: Optional[dict] = None

    @property
    def name(self) -> str:
        """How messages name it: the built-in name, else the path as given."""
        return self.builtin or self.model

    def parent_model(self) -> ParentModel:
        """The ``parent`` section of the model cards of models trained from it."""
        return ParentModel(model=self.name, sha256=self.sha256, format=self.format, builtin=self.builtin,
                           training_data=self.training_data, parent=self.parent)

    @classmethod
    def from_dict(cls, data: dict, path: Any = "init.json") -> InitRecord:
        record = _from_known(cls, data, path)
        for name in ("model", "format", "path", "sha256"):
            if not isinstance(getattr(record, name), str):
                raise InputError(f"{path}: {name} must be a text, got {getattr(record, name)!r}")
        return record

    def to_dict(self) -> dict:
        return asdict(self)


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
