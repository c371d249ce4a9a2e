"""The typed files of a run folder (:mod:`wmhkeras.io.run_folder`): ``split.json`` (:class:`Split`),
``checkpoints/state.json`` (:class:`RunState`), ``summary.json`` (:class:`RunSummary`) and ``init.json``
(:class:`InitRecord`), each read and written by its own methods.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from wmhkeras.errors import InputError
from wmhkeras.io.files import atomic_write_json, read_json
from wmhkeras.io.model_card import ParentModel

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
