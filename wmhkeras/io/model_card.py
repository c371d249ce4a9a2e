"""The model card: what an exported model needs and was made from (``model_card.json``).

Written once by ``wmhkeras export`` (:meth:`ModelCard.write`) and read once by every consumer
(:meth:`ModelCard.read`): ``wmhkeras segment`` takes the modalities, normalisation and input size of a
SavedModel or TFLite file from it, so an exported model needs no flags. No TensorFlow here.

Format version 2 adds ``resample`` (``{mode, spacing, multiple}``: how slices reach the model's grid, see
:class:`wmhkeras.data.preprocessing.Resampling`) and ``context_slices`` (2.5D input). A card without them
(version 1) means ``fixed`` resampling at ``input_size`` and no context; ``input_size`` is ``null`` for a
model that takes slices of any size (``spacing`` and ``none`` modes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from wmhkeras.errors import InputError
from wmhkeras.io.files import atomic_write_json, read_json

#: File name of the card, beside (or inside) the exported SavedModel folder.
MODEL_CARD_NAME = "model_card.json"
MODEL_CARD_VERSION = 2
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
#: How slices are brought to the model's grid (``data.resample``; :class:`wmhkeras.data.preprocessing.Resampling`).
RESAMPLE_MODES = ("fixed", "spacing", "none")
#: Largest ``context_slices`` a card may record (``data.context_slices``).
MAX_CONTEXT_SLICES = 7


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

    ``modalities``, ``normalisation``, ``input_size``, ``resample`` (``{"mode", "spacing", "multiple"}``;
    ``None``: ``fixed`` at ``input_size``) and ``context_slices`` decide the preprocessing and are checked
    when the card is built or read; the other fields describe the export for people and tools.
    """

    modalities: tuple[str, ...]
    normalisation: str
    input_size: Optional[tuple[int, int]]
    resample: Optional[dict] = None
    context_slices: int = 0
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
        object.__setattr__(self, "resample", _check_resample(self.resample))
        if self.input_size is not None or self.mode == "fixed":
            try:
                size = tuple(int(s) for s in self.input_size)
            except (TypeError, ValueError):
                size = ()
            if len(size) != 2 or min(size) < 1:
                raise InputError(f"{where}: input_size {self.input_size!r} must be [height, width]"
                                 + (" (resample 'fixed' needs it)" if self.input_size is None else ""))
            object.__setattr__(self, "input_size", size)
        k = self.context_slices
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_CONTEXT_SLICES:
            raise InputError(f"{where}: context_slices {k!r} must be an integer in [0, {MAX_CONTEXT_SLICES}]")

    @property
    def mode(self) -> str:
        """The resampling mode: ``fixed`` when the card records none (format version 1)."""
        return "fixed" if self.resample is None else self.resample["mode"]

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
        out["input_size"] = None if self.input_size is None else list(self.input_size)
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


def _check_resample(resample) -> Optional[dict]:
    """``{"mode", "spacing", "multiple"}`` checked and normalised (``spacing`` a list of 2 floats or None)."""
    if resample is None:
        return None
    where = "model card: resample"
    if not isinstance(resample, dict) or resample.get("mode") not in RESAMPLE_MODES:
        raise InputError(f"{where} {resample!r} must be {{mode, spacing, multiple}} with mode one of "
                         f"{', '.join(RESAMPLE_MODES)}")
    spacing = resample.get("spacing")
    if spacing is not None or resample["mode"] == "spacing":
        try:
            spacing = [float(v) for v in spacing]
        except (TypeError, ValueError):
            spacing = []
        if len(spacing) != 2 or min(spacing) <= 0:
            raise InputError(f"{where}: spacing {resample.get('spacing')!r} must be [x, y] in mm > 0")
    multiple = resample.get("multiple", 1)
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise InputError(f"{where}: multiple {multiple!r} must be an integer >= 1")
    return {"mode": resample["mode"], "spacing": spacing, "multiple": multiple}
