"""The typed sections of the model card (:mod:`wmhkeras.io.model_card`, format version 3): the input
requirements, training data, hold-out metrics, serving layout and parent model, each a frozen dataclass
checked when built, and :func:`section`, which builds one from the card's JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

from wmhkeras.errors import InputError

#: The value of a free-text field nobody filled in.
NOT_STATED = "not stated"
#: Modalities of a model by its number of input channels.
MODALITIES_BY_CHANNELS = {1: ("flair",), 2: ("flair", "t1")}

Stated = Union[bool, str]


def check_modalities(modalities, where: Any) -> tuple[str, ...]:
    modalities = tuple(modalities)
    if modalities not in MODALITIES_BY_CHANNELS.values():
        raise InputError(f"{where}: modalities {list(modalities)} are not allowed; use [flair] or [flair, t1]")
    return modalities


def modalities_for(channels: int, where: Any) -> tuple[str, ...]:
    """The modalities of a model with ``channels`` input channels."""
    if channels not in MODALITIES_BY_CHANNELS:
        raise InputError(f"{where}: the model takes {channels} input channels; wmhkeras models take 1 (FLAIR) "
                         "or 2 (FLAIR, T1)")
    return MODALITIES_BY_CHANNELS[channels]


def require(ok: bool, where: str, value, what: str) -> None:
    """Refuse (InputError) a card field ``where`` whose ``value`` is not ``what``."""
    if not ok:
        raise InputError(f"model card: {where} {value!r} must be {what}")


def require_text(obj, name: str, optional: bool = False) -> None:
    value = getattr(obj, name)
    require(isinstance(value, str) and bool(value.strip()) or optional and value is None,
           ".".join(filter(None, (obj.WHERE, name))), value, "a non-empty text" + (" or null" if optional else ""))


def require_typed(obj, name: str, kind: type) -> None:
    value = getattr(obj, name)
    require(isinstance(value, kind), f"{obj.WHERE}.{name}", value, f"a {'mapping' if kind is dict else 'list'}")


def triple(value, where: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    require(len(out) == 3 and min(out) > 0, where, value, "[x, y, z] in mm > 0")
    return out


@dataclass(frozen=True)
class VoxelSize:
    """Voxel sizes of the training subjects' FLAIR volumes in mm, along the canonical (RAS+) X, Y, Z axes,
    read from their NIfTI headers at export: the smallest, largest and median per axis, over ``subjects``."""

    min: tuple[float, float, float]
    max: tuple[float, float, float]
    median: tuple[float, float, float]
    subjects: int
    WHERE = "input_requirements.voxel_size_mm"

    def __post_init__(self):
        for name in ("min", "max", "median"):
            object.__setattr__(self, name, triple(getattr(self, name), f"{self.WHERE}.{name}"))
        n = self.subjects
        require(isinstance(n, int) and not isinstance(n, bool) and n >= 1, f"{self.WHERE}.subjects", n,
               "an integer >= 1")


@dataclass(frozen=True)
class InputRequirements:
    """What an input must be like: ``modalities`` (the model's), whether the training scans were
    ``skull_stripped`` and ``bias_corrected`` (``true``/``false`` or :data:`NOT_STATED`), the training data's
    voxel sizes (``voxel_size_mm``, ``None`` when the export could not read them) and free-text ``notes``
    (e.g. what happens with other inputs)."""

    modalities: tuple[str, ...] = ()
    skull_stripped: Stated = NOT_STATED
    bias_corrected: Stated = NOT_STATED
    voxel_size_mm: Optional[VoxelSize] = None
    notes: str = NOT_STATED
    WHERE = "input_requirements"

    def __post_init__(self):
        object.__setattr__(self, "modalities", tuple(self.modalities))
        if self.modalities:
            check_modalities(self.modalities, f"model card: {self.WHERE}")
        for name in ("skull_stripped", "bias_corrected"):
            value = getattr(self, name)
            require(isinstance(value, bool) or value == NOT_STATED, f"{self.WHERE}.{name}", value,
                   f"true, false or {NOT_STATED!r}")
        object.__setattr__(self, "voxel_size_mm", section(VoxelSize, self.voxel_size_mm, optional=True))
        require_text(self, "notes")


@dataclass(frozen=True)
class TrainingData:
    """What the model was trained on: ``dataset`` (its path relative to the exporting folder, or a name),
    subject counts per split set and sites per set (from the run), and what the exporter states:
    ``description``, ``licence`` and ``citation``."""

    dataset: Optional[str] = None
    description: str = NOT_STATED
    subjects: dict = field(default_factory=dict)
    sites: dict = field(default_factory=dict)
    licence: str = NOT_STATED
    citation: str = NOT_STATED
    WHERE = "training_data"

    def __post_init__(self):
        require_text(self, "dataset", optional=True)
        for name in ("description", "licence", "citation"):
            require_text(self, name)
        require_typed(self, "subjects", dict)
        require_typed(self, "sites", dict)


@dataclass(frozen=True)
class HoldoutMetrics:
    """Scores on data the model never trained on: ``source`` (an ``evaluate`` summary, relative, or who
    stated them), the ``protocol``, and either the ``evaluate`` summary's ``overall`` and ``by_site``
    statistics (metric -> mean, SD, n, ...) over ``n_subjects``, or rows of a protocol's ``results``."""

    source: str
    protocol: str = NOT_STATED
    n_subjects: Optional[int] = None
    overall: dict = field(default_factory=dict)
    by_site: dict = field(default_factory=dict)
    results: list = field(default_factory=list)
    WHERE = "holdout_metrics"

    def __post_init__(self):
        require_text(self, "source")
        require_text(self, "protocol")
        n = self.n_subjects
        require(n is None or isinstance(n, int) and not isinstance(n, bool) and n >= 0, f"{self.WHERE}.n_subjects", n,
               "an integer >= 0 or null")
        require_typed(self, "overall", dict)
        require_typed(self, "by_site", dict)
        require_typed(self, "results", list)


@dataclass(frozen=True)
class ServingLayout:
    """The TensorFlow Serving layout of an export: the SavedModel at ``path`` (``<name>/<version>``,
    relative to the export folder) with the warm-up requests at ``<path>/<warmup>``."""

    name: str
    version: int
    path: str
    warmup: str
    WHERE = "serving"

    def __post_init__(self):
        for name in ("name", "path", "warmup"):
            require_text(self, name)
        v = self.version
        require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{self.WHERE}.version", v,
               "an integer >= 1")


@dataclass(frozen=True)
class ParentModel:
    """The model a fine-tuned model started from (``wmhkeras train --init``): ``model`` as it was named (a
    built-in name, or a path), ``builtin`` (its built-in name, if it was one), ``format`` (``saved_model``,
    ``keras``), ``sha256`` of what was loaded (:func:`wmhkeras.io.files.path_sha256`), its ``training_data``
    (licence and citation included) and its own ``parent`` (as recorded, a mapping, or None)."""

    model: str
    sha256: str
    format: str = NOT_STATED
    builtin: Optional[str] = None
    training_data: TrainingData = field(default_factory=TrainingData)
    parent: Optional[dict] = None
    WHERE = "parent"

    def __post_init__(self):
        for name in ("model", "sha256", "format"):
            require_text(self, name)
        require_text(self, "builtin", optional=True)
        object.__setattr__(self, "training_data", section(TrainingData, self.training_data,
                                                          where=f"{self.WHERE}.training_data"))
        require(self.parent is None or isinstance(self.parent, dict), f"{self.WHERE}.parent", self.parent,
               "a mapping or null")

    def ancestor(self) -> Optional[ParentModel]:
        """The model this one started from, if it was fine-tuned too."""
        return section(ParentModel, self.parent, optional=True, where=f"{self.WHERE}.parent")


def section(cls, data, optional: bool = False, where: Optional[str] = None):
    """``data`` (a mapping, or already a ``cls``) as the typed section ``cls``; ``None`` stays ``None`` when
    ``optional``, else gives the defaults.

    Raises:
        InputError: not a mapping, an unknown key, or a value of the wrong kind.
    """
    where = where or cls.WHERE
    if data is None and optional or isinstance(data, cls):
        return data
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise InputError(f"model card: {where} must be a mapping, got {type(data).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InputError(f"model card: {where}: unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(names)}")
    try:
        return cls(**data)
    except TypeError as err:  # a required key is missing
        raise InputError(f"model card: {where}: {err}") from None
