"""The model card: what an exported model needs and was made from (``model_card.json``).

Written once by ``wmhkeras export`` (:meth:`ModelCard.write`) and read once by every consumer
(:meth:`ModelCard.read`): ``wmhkeras segment`` takes the modalities, normalisation and input size of a
SavedModel or TFLite file from it, so an exported model needs no flags. No TensorFlow here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from wmhkeras.errors import InputError
from wmhkeras.io.files import atomic_write_json, read_json

#: File name of the card, beside (or inside) the exported SavedModel folder.
MODEL_CARD_NAME = "model_card.json"
MODEL_CARD_VERSION = 1
#: Modalities of a model by its number of input channels.
MODALITIES_BY_CHANNELS = {1: ("flair",), 2: ("flair", "t1")}
#: Intensity normalisations a model may record (implemented in :mod:`wmhkeras.data.preprocessing`).
NORMALISATIONS = ("max", "zscore")
#: Voxel order ``segment_volume`` expects and returns.
ORIENTATION = (
    "RAS+: voxel axes X, Y, Z point Right, Anterior, Superior (nibabel.as_closest_canonical); "
    "axial slice k is volume[:, :, k]"
)
#: Probability at and above which a voxel is lesion.
THRESHOLD = 0.5


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


@dataclass(frozen=True)
class ModelCard:
    """The fields of ``model_card.json`` (format version :data:`MODEL_CARD_VERSION`).

    ``modalities``, ``normalisation`` and ``input_size`` decide the preprocessing and are checked when
    the card is built or read; the other fields describe the export for people and tools.
    """

    modalities: tuple[str, ...]
    normalisation: str
    input_size: tuple[int, int]
    format_version: int = MODEL_CARD_VERSION
    created: Optional[str] = None
    source: Optional[str] = None
    saved_model: str = "saved_model"
    signatures: dict = field(default_factory=dict)
    orientation: str = ORIENTATION
    threshold: float = THRESHOLD
    tflite: dict = field(default_factory=dict)
    calibration: Optional[dict] = None
    training_config: Optional[dict] = None
    data: Optional[dict] = None
    validation_metrics: Optional[dict] = None
    versions: dict = field(default_factory=dict)
    verification: Optional[dict] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        where = "model card"
        object.__setattr__(self, "modalities", check_modalities(self.modalities, where))
        if self.normalisation not in NORMALISATIONS:
            raise InputError(f"{where}: normalisation {self.normalisation!r} is not known; use one of "
                             f"{', '.join(NORMALISATIONS)}")
        try:
            size = tuple(int(s) for s in self.input_size)
        except (TypeError, ValueError):
            size = ()
        if len(size) != 2 or min(size) < 1:
            raise InputError(f"{where}: input_size {self.input_size!r} must be [height, width]")
        object.__setattr__(self, "input_size", size)

    @classmethod
    def from_dict(cls, data: dict, source: Any = MODEL_CARD_NAME) -> ModelCard:
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a JSON object")
        names = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("modalities", "normalisation", "input_size") if k not in data]
        if missing:
            raise InputError(f"{source}: expected JSON with modalities, normalisation and input_size "
                             f"(missing {', '.join(missing)})")
        known = {k: v for k, v in data.items() if k in names}
        try:
            return cls(**known, extra={k: v for k, v in data.items() if k not in names})
        except InputError as err:
            raise InputError(f"{source}: {str(err).removeprefix('model card: ')}") from None

    def to_dict(self) -> dict:
        out = asdict(self)
        extra = out.pop("extra")
        out["modalities"] = list(self.modalities)
        out["input_size"] = list(self.input_size)
        return {**out, **extra}

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        return cls.from_dict(read_json(path), path)

    def write(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @staticmethod
    def find(folder: str | Path) -> Optional[Path]:
        """The card of an exported SavedModel folder: inside it, or beside it (the export's layout)."""
        folder = Path(folder)
        return next((p for p in (folder / MODEL_CARD_NAME, folder.parent / MODEL_CARD_NAME) if p.is_file()), None)
