"""The model card: what an exported model needs, what it is for, and what it was made from (``model_card.json``).

Written once by ``wmhkeras export`` (:meth:`ModelCard.write`) into the export folder and into the
SavedModel itself (``saved_model/assets.extra/model_card.json``, so a copied SavedModel folder keeps it),
and read by every consumer (:meth:`ModelCard.read`, found by :meth:`ModelCard.find`): ``wmhkeras segment``
takes the modalities, normalisation and input size of a SavedModel or TFLite file from it, so an exported
model needs no flags, and warns when an input's voxel size is far from the training data's. No TensorFlow here.

The card is format version 3 (:data:`MODEL_CARD_VERSION`): the fields the segmenter needs (modalities,
normalisation, ``input_size``, ``resample``, ``context_slices``), the typed sections for people
(:class:`InputRequirements`, :class:`TrainingData`, :class:`HoldoutMetrics`, :class:`ServingLayout`, the
free texts, :data:`NOT_STATED` unless stated) and the optional ``parent`` (:class:`ParentModel`: the model
a fine-tuned one started from), ``precision`` and ``saved_models`` (an export's SavedModels by precision;
absent: float32) and ``backbone`` (the content loss's backbone). Cards of versions 1 and 2 are read too:
:meth:`ModelCard.from_dict` maps them onto version 3, and keys without a typed home stay in ``extra``.
Every field is described in docs/export.md, "The model card".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional

from wmhkeras.errors import InputError
from wmhkeras.io.card_sections import (  # noqa: F401  (the sections and their names: public here too)
    MODALITIES_BY_CHANNELS,
    NOT_STATED,
    HoldoutMetrics,
    InputRequirements,
    ParentModel,
    ServingLayout,
    Stated,
    TrainingData,
    VoxelSize,
    check_modalities,
    modalities_for,
    require,
    require_text,
    section,
)
from wmhkeras.io.files import atomic_write_json, read_json
from wmhkeras.vocabulary import NORMALISATIONS, RESAMPLE_MODES  # noqa: F401  (the names a card may record)

#: File name of the card, beside (or inside) the exported SavedModel folder.
MODEL_CARD_NAME = "model_card.json"
#: Folder of a SavedModel for files that are not part of the graph (TensorFlow Serving's convention); the
#: card is written there too, so that the SavedModel folder alone carries it.
ASSETS_EXTRA = "assets.extra"
MODEL_CARD_VERSION = 3
#: Voxel order ``segment_volume`` expects and returns.
ORIENTATION = (
    "RAS+: voxel axes X, Y, Z point Right, Anterior, Superior (nibabel.as_closest_canonical); "
    "axial slice k is volume[:, :, k]"
)
#: Probability at and above which a voxel is lesion.
THRESHOLD = 0.5
#: Largest ``context_slices`` a card may record (``data.context_slices``).
MAX_CONTEXT_SLICES = 7
#: Fields of format version 3 (``precision``, ``saved_models``, ``backbone`` and ``parent`` optional); in a
#: card of version 1 or 2 these keys are left in ``extra``.
V3_FIELDS = ("project_version", "intended_use", "not_intended_for", "limitations", "input_requirements",
             "training_data", "holdout_metrics", "serving", "precision", "saved_models", "backbone", "parent")
#: What an exported SavedModel may compute in (float32 inputs and outputs either way), and the folder
#: ``wmhkeras export`` writes each to.
SAVED_MODEL_PRECISIONS = ("float32", "bfloat16")
SAVED_MODEL_FOLDERS = {"float32": "saved_model", "bfloat16": "saved_model_bf16"}

# === The card ===


@dataclass(frozen=True)
class ModelCard:
    """The fields of ``model_card.json`` (format version :data:`MODEL_CARD_VERSION`).

    ``modalities``, ``normalisation``, ``input_size``, ``resample`` (``{"mode", "spacing", "multiple"}``;
    ``None``: ``fixed`` at ``input_size``) and ``context_slices`` decide the preprocessing and are checked
    when the card is built or read; the other fields describe the export for people and tools. Every path
    in a card is relative: to the export folder for its own files (``saved_model``, ``tflite``), else to
    the folder the export ran in.
    """

    modalities: tuple[str, ...]
    normalisation: str
    input_size: Optional[tuple[int, int]]
    resample: Optional[dict] = None
    context_slices: int = 0
    format_version: int = MODEL_CARD_VERSION
    created: Optional[str] = None
    source: Optional[str] = None
    project_version: Optional[str] = None
    intended_use: str = NOT_STATED
    not_intended_for: str = NOT_STATED
    limitations: str = NOT_STATED
    input_requirements: InputRequirements = field(default_factory=InputRequirements)
    training_data: TrainingData = field(default_factory=TrainingData)
    holdout_metrics: Optional[HoldoutMetrics] = None
    saved_model: str = "saved_model"
    precision: str = "float32"
    saved_models: dict = field(default_factory=dict)
    serving: Optional[ServingLayout] = None
    parent: Optional[ParentModel] = None
    signatures: dict = field(default_factory=dict)
    orientation: str = ORIENTATION
    threshold: float = THRESHOLD
    tflite: dict = field(default_factory=dict)
    calibration: Optional[dict] = None
    training_config: Optional[dict] = None
    backbone: Optional[dict] = None
    validation_metrics: Optional[dict] = None
    versions: dict = field(default_factory=dict)
    verification: Optional[dict] = None
    extra: dict = field(default_factory=dict)
    WHERE = None

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
        self._check_sections()

    def _check_sections(self) -> None:
        for name in ("intended_use", "not_intended_for", "limitations"):
            require_text(self, name)
        require_text(self, "project_version", optional=True)
        req = section(InputRequirements, self.input_requirements)
        object.__setattr__(self, "input_requirements", req if req.modalities else replace(req, modalities=self.modalities))
        object.__setattr__(self, "training_data", section(TrainingData, self.training_data))
        object.__setattr__(self, "holdout_metrics", section(HoldoutMetrics, self.holdout_metrics, optional=True))
        object.__setattr__(self, "serving", section(ServingLayout, self.serving, optional=True))
        object.__setattr__(self, "parent", section(ParentModel, self.parent, optional=True))
        require(self.precision in SAVED_MODEL_PRECISIONS, "precision", self.precision,
               f"one of {', '.join(SAVED_MODEL_PRECISIONS)}")
        require(isinstance(self.saved_models, dict) and set(self.saved_models) <= set(SAVED_MODEL_PRECISIONS)
               and all(isinstance(v, dict) and isinstance(v.get("path"), str) and v["path"]
                       for v in self.saved_models.values()),
               "saved_models", self.saved_models, "a mapping of float32/bfloat16 to {path, ...}")
        require(self.backbone is None or isinstance(self.backbone, dict), "backbone", self.backbone,
               "a mapping or null")

    @property
    def mode(self) -> str:
        """The resampling mode: ``fixed`` when the card records none (format version 1)."""
        return "fixed" if self.resample is None else self.resample["mode"]

    @classmethod
    def from_dict(cls, data: dict, source: Any = MODEL_CARD_NAME) -> ModelCard:
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a JSON object")
        missing = [k for k in ("modalities", "normalisation", "input_size") if k not in data]
        if missing:
            raise InputError(f"{source}: expected JSON with modalities, normalisation and input_size "
                             f"(missing {', '.join(missing)})")
        version = data.get("format_version", 1)
        legacy = not isinstance(version, int) or version < 3
        names = {f.name for f in fields(cls)} - {"extra"} - (set(V3_FIELDS) if legacy else set())
        known = {k: v for k, v in data.items() if k in names} | {"format_version": version}
        extra = {k: v for k, v in data.items() if k not in names and not (legacy and k == "data")}
        if legacy and isinstance(data.get("data"), dict):  # version 2's data: dataset, subjects, sites
            known["training_data"] = {k: v for k, v in data["data"].items() if k in ("dataset", "subjects", "sites")}
        try:
            return cls(**known, extra=extra)
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
        """The card of an exported model whose files are in ``folder`` (a SavedModel folder, or an export's
        ``tflite/``): in the SavedModel's ``assets.extra/`` first, then inside or beside ``folder`` (older
        exports), then in the ``saved_model/assets.extra/`` of the folder above (a TFLite file's export)."""
        folder = Path(folder)
        candidates = (folder / ASSETS_EXTRA / MODEL_CARD_NAME, folder / MODEL_CARD_NAME,
                      folder.parent / MODEL_CARD_NAME, folder.parent / "saved_model" / ASSETS_EXTRA / MODEL_CARD_NAME)
        return next((p for p in candidates if p.is_file()), None)


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
