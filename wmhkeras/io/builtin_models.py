"""The built-in models: the exported models the package carries, found by name (``wmhkeras models``).

The models live in the repository's ``saved_models/`` folder, which the wheel installs as the package data
``wmhkeras/saved_models/`` (``setup.py``). Its index, :data:`INDEX_NAME`, names the built-in models (each a
folder written by ``wmhkeras export``: ``model_card.json`` and ``saved_model/``) and the default one;
other export folders there (``saved_models/demo/`` after ``make demo``) are not built-in. Everything said
about a model (what it was trained on, the input it expects, its hold-out figures, its licence) is read
from its own ``model_card.json``, so a retrained model needs no change here.

A MODEL argument is a path or a built-in name (:func:`resolve_model`): a path that exists wins over a
name (with a warning), and ``builtin:NAME`` always means the built-in model. No TensorFlow here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import wmhkeras
from wmhkeras.errors import InputError
from wmhkeras.io.files import read_json
from wmhkeras.io.model_card import MODEL_CARD_NAME, NOT_STATED, ModelCard

log = logging.getLogger(__name__)

#: The index of the built-in models in the models folder: ``{"default": NAME, "models": [NAME, ...]}``.
INDEX_NAME = "builtin_models.json"
#: Prefix that names a built-in model even where a path of the same name exists.
BUILTIN_PREFIX = "builtin:"
#: Hold-out metrics shown by the listing (``holdout_metrics`` of the card), with their labels.
LISTED_METRICS = (("dice", "Dice"), ("lesion_recall", "lesion recall"))


def models_folder() -> Optional[Path]:
    """The folder holding the built-in models: ``wmhkeras/saved_models/`` of an installed wheel, else the
    ``saved_models/`` of the checkout the package runs from; ``None`` when neither has an index."""
    package = Path(wmhkeras.__file__).resolve().parent
    candidates = [package / "saved_models"]
    if (package.parent / "setup.py").is_file():  # a checkout (editable install, or run in place)
        candidates.append(package.parent / "saved_models")
    return next((c for c in candidates if (c / INDEX_NAME).is_file()), None)


@dataclass(frozen=True)
class BuiltinModel:
    """One built-in model: its ``name`` and export ``folder``; ``default``: used when no model is named."""

    name: str
    folder: Path
    default: bool = False

    @property
    def card_path(self) -> Path:
        return self.folder / MODEL_CARD_NAME

    def card(self) -> ModelCard:
        """The model's card (raises :class:`InputError` when it is missing or malformed)."""
        if not self.card_path.is_file():
            raise InputError(f"built-in model {self.name}: {self.card_path} is missing; the installation is incomplete")
        return ModelCard.read(self.card_path)

    @property
    def saved_model(self) -> Path:
        """The SavedModel folder (``saved_model/``, or where the card says)."""
        recorded = read_json(self.card_path).get("saved_model") if self.card_path.is_file() else None
        return self.folder / (recorded if isinstance(recorded, str) and recorded else "saved_model")


def _index(folder: Path) -> tuple[list[str], Optional[str]]:
    data = read_json(folder / INDEX_NAME)
    names, default = data.get("models"), data.get("default")
    if not isinstance(names, list) or not all(isinstance(n, str) and n and "/" not in n for n in names):
        raise InputError(f"{folder / INDEX_NAME}: 'models' must be a list of folder names")
    if default is not None and default not in names:
        raise InputError(f"{folder / INDEX_NAME}: the default {default!r} is not among the models {names}")
    return names, default


def builtin_models() -> list[BuiltinModel]:
    """Every built-in model, in the index's order (none when the package carries no models folder)."""
    folder = models_folder()
    if folder is None:
        return []
    names, default = _index(folder)
    return [BuiltinModel(name, folder / name, name == default) for name in names]


def _known() -> str:
    names = [m.name for m in builtin_models()]
    return ", ".join(names) if names else "none: this installation carries no built-in model"


def builtin_model(name: str) -> BuiltinModel:
    """The built-in model ``name`` (``builtin:`` prefix allowed).

    Raises:
        InputError: no built-in model has that name (the message lists them).
    """
    name = name.removeprefix(BUILTIN_PREFIX)
    found = next((m for m in builtin_models() if m.name == name), None)
    if found is None:
        raise InputError(f"{name}: no built-in model of that name; built-in models: {_known()} (wmhkeras models)")
    return found


def default_model() -> BuiltinModel:
    """The model used when none is named.

    Raises:
        InputError: the installation has no default model.
    """
    found = next((m for m in builtin_models() if m.default), None)
    if found is None:
        raise InputError(f"no model given and no default built-in model ({_known()}); name a MODEL")
    return found


def is_builtin_name(value: str | Path) -> bool:
    """Whether ``value`` names a built-in model (``builtin:NAME`` or a bare ``NAME``), whatever exists on disk."""
    text = str(value)
    return text.startswith(BUILTIN_PREFIX) or text in {m.name for m in builtin_models()}


def resolve_model(value: str | Path) -> tuple[Path, Optional[BuiltinModel]]:
    """A MODEL argument as ``(path, built-in model or None)``.

    ``builtin:NAME`` is always the built-in model; a path that exists is that path, also when a built-in
    model has its name (logged as a warning); otherwise a built-in name is the built-in model's SavedModel.
    Anything else is returned as a path, for the caller to report as missing.

    Raises:
        InputError: ``builtin:NAME`` with an unknown name.
    """
    text = str(value)
    if text.startswith(BUILTIN_PREFIX):
        model = builtin_model(text)
        return model.saved_model, model
    path = Path(value)
    if "/" not in text:
        model = next((m for m in builtin_models() if m.name == text), None)
        if model is not None and not path.exists():
            return model.saved_model, model
        if model is not None:
            log.warning("%s: a path of this name exists here and is used, not the built-in model %s "
                        "(write %s%s for the built-in model)", text, text, BUILTIN_PREFIX, text)
    return path, None


# === What `wmhkeras models` shows ===


@dataclass(frozen=True)
class ModelSummary:
    """One line of ``wmhkeras models``: everything read from the model's card."""

    name: str
    default: bool
    trained_on: str
    expects: str
    holdout: str
    licence: str


def _figure(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and math.isfinite(value) else "n/a"


def holdout_summary(card: ModelCard) -> str:
    """The card's hold-out figures in one line: the ``overall`` means of an ``evaluate`` summary, or the
    mean of each protocol arm's rows (``results``), for :data:`LISTED_METRICS`."""
    h = card.holdout_metrics
    if h is None:
        return "none recorded"
    if h.overall:
        parts = [f"{label} {_figure((h.overall.get(key) or {}).get('mean'))}" for key, label in LISTED_METRICS]
        return ", ".join(parts) + (f" over {h.n_subjects} subjects" if h.n_subjects else "")
    arms: dict[str, list[dict]] = {}
    for row in h.results:  # an arm is named with its config, when the rows give one
        if isinstance(row, dict):
            label = " ".join(str(row[k]) if k == "arm" else f"({row[k]})" for k in ("arm", "config") if row.get(k))
            arms.setdefault(label, []).append(row)
    if not arms:
        return "none recorded"

    def mean(rows, key):
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        return sum(values) / len(values) if values else None

    return "; ".join(
        f"{arm + ': ' if arm else ''}" + ", ".join(f"{label} {_figure(mean(rows, key))}" for key, label in LISTED_METRICS)
        + f" (mean of {len(rows)} scored subject{'s' if len(rows) != 1 else ''})"
        for arm, rows in arms.items())


def _expects(card: ModelCard) -> str:
    req = card.input_requirements
    voxel = req.voxel_size_mm
    parts = ["+".join(m.upper() for m in card.modalities)]
    if voxel is not None:
        parts.append("voxels about " + " x ".join(f"{v:g}" for v in voxel.median) + " mm")
    for name, label in (("skull_stripped", "skull-stripped"), ("bias_corrected", "bias-corrected")):
        value = getattr(req, name)
        if isinstance(value, bool):
            parts.append(label if value else f"not {label}")
    return ", ".join(parts)


def summarize_model(model: BuiltinModel) -> ModelSummary:
    """What ``wmhkeras models`` lists for ``model``, from its card."""
    card = model.card()
    data = card.training_data
    trained_on = data.description if data.description != NOT_STATED else data.dataset or NOT_STATED
    return ModelSummary(model.name, model.default, trained_on, _expects(card), holdout_summary(card), data.licence)


def _wrap(label: str, text) -> str:
    return f"  {label}: {text}"


def card_lines(model: BuiltinModel) -> list[str]:
    """``wmhkeras models show NAME``: the model's card as text, section by section."""
    card = model.card()
    req, data, h = card.input_requirements, card.training_data, card.holdout_metrics
    resample = card.resample or {"mode": "fixed"}
    lines = [f"{model.name}{' (the default model)' if model.default else ''}: {model.folder}",
             _wrap("intended use", card.intended_use), _wrap("not intended for", card.not_intended_for),
             _wrap("limitations", card.limitations), "input:",
             _wrap("modalities", ", ".join(m.upper() for m in card.modalities)),
             _wrap("preprocessing", f"{card.normalisation} normalisation, resample {resample['mode']}"
                   + (f" to {resample['spacing'][0]:g} x {resample['spacing'][1]:g} mm" if resample.get("spacing") else "")
                   + (f" at {card.input_size[0]} x {card.input_size[1]}" if card.input_size else "")
                   + f", context slices {card.context_slices}"),
             _wrap("skull-stripped", req.skull_stripped), _wrap("bias-corrected", req.bias_corrected)]
    if req.voxel_size_mm is not None:
        v = req.voxel_size_mm
        lines.append(_wrap("training voxel sizes (mm)", f"{' x '.join(f'{x:g}' for x in v.min)} to "
                           f"{' x '.join(f'{x:g}' for x in v.max)} over {v.subjects} subjects"))
    lines += [_wrap("notes", req.notes), "training data:", *_training_lines(data)]
    parent = card.parent
    while parent is not None:
        lines += [f"fine-tuned from: {parent.model} (sha256 {parent.sha256[:12]}...), itself trained on:",
                  *_training_lines(parent.training_data)]
        parent = parent.ancestor()
    lines.append(f"hold-out figures: {holdout_summary(card)}")
    if h is not None:
        lines.append(_wrap("protocol", h.protocol))
        for row in h.results:
            if isinstance(row, dict):
                cells = [f"{k} {row[k]}" for k in ("arm", "train_on", "test_on") if k in row]
                cells += [f"{label} {_figure(row.get(key))}" for key, label in LISTED_METRICS]
                lines.append("  - " + ", ".join(cells))
    cfg = card.training_config or {}
    m = cfg.get("model") or {}
    if m:
        lines.append(f"architecture: {m.get('arch')}, depth {m.get('depth')}, base filters {m.get('base_filters')}")
    lines.append(f"made by wmhkeras {card.project_version or 'unknown'}, {card.created or 'date unknown'}")
    return lines


def _training_lines(data) -> list[str]:
    lines = [_wrap("dataset", data.dataset or NOT_STATED), _wrap("description", data.description)]
    if data.subjects:
        lines.append(_wrap("subjects", ", ".join(f"{k} {v}" for k, v in data.subjects.items())))
    return lines + [_wrap("licence", data.licence), _wrap("citation", data.citation)]
