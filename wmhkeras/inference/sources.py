"""Model sources: what a model path is and which preprocessing it needs, found without TensorFlow.

A model source is a built-in model's name (:mod:`wmhkeras.io.builtin_models`; a path of the same name wins),
a ``.keras`` file, a training run folder (its ``checkpoints/best.keras`` or
``last.keras`` and its ``config.yaml``), an exported SavedModel folder (with ``model_card.json`` in its
``assets.extra/``, or only beside it) or an export's ``.tflite`` file (with the export's
``model_card.json``). :func:`inspect_model` reads the modalities, normalisation,
resampling (:class:`~wmhkeras.data.preprocessing.Resampling`) and 2.5D context of each, so that a wrong
source costs nothing before the model is loaded (:func:`wmhkeras.inference.loaders.load_segmenter`).
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

from wmhkeras import KERAS_PACKAGE
from wmhkeras.config import load_run_config
from wmhkeras.data.preprocessing import Resampling, input_channels, resampling_for, slices_per_modality
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.io.builtin_models import BuiltinModel, builtin_models, is_builtin_name, resolve_model
from wmhkeras.io.files import path_sha256, read_json
from wmhkeras.io.model_card import MODEL_CARD_NAME, ModelCard, modalities_for
from wmhkeras.io.naming import is_nifti
from wmhkeras.io.run_folder import InitRecord, RunFolder

log = logging.getLogger(__name__)

_EXPECTED = "expected a .keras file, a run folder, a SavedModel folder, a .tflite file or a built-in model's name"


@dataclass(frozen=True)
class ModelSpec:
    """A model source and the preprocessing it needs, read without TensorFlow (:func:`inspect_model`).

    ``format``: ``keras`` (a ``.keras`` file), ``run`` (a training run folder), ``saved_model`` or
    ``tflite``. ``path``: the ``.keras``, SavedModel folder or ``.tflite`` file that is loaded.
    ``input_size``: the model's fixed slice size, ``None`` for a model that takes any size.
    ``resampling``: how slices reach the model's grid; ``context_slices``: ``k`` of the 2.5D input (the
    model takes ``len(modalities) * (2k + 1)`` channels). ``modalities`` and ``resampling`` are ``None``
    when only loading the model can tell. ``card``: the model card of an exported model. ``builtin``: the
    built-in model it is, when it was named by name.
    """

    source: Path
    format: str
    path: Path
    modalities: Optional[tuple[str, ...]]
    normalisation: str
    input_size: Optional[tuple[int, int]]
    resampling: Optional[Resampling] = None
    context_slices: int = 0
    card: Optional[ModelCard] = None
    builtin: Optional[BuiltinModel] = None


@dataclass(frozen=True)
class KerasInfo:
    """What a ``.keras`` file's ``config.json`` tells: ``shape`` ``(height, width, channels)`` of its one
    input (height and width ``None`` for a model that takes any size; ``None`` when the config does not
    name exactly one input) and ``depth``, its number of ``MaxPooling2D`` layers."""

    shape: Optional[tuple[Optional[int], Optional[int], int]]
    depth: int

    @property
    def free(self) -> bool:
        return self.shape is not None and self.shape[:2] == (None, None)


def refused_object(node: dict) -> Optional[str]:
    """Why wmhkeras refuses an object of a ``.keras`` file's ``config.json``, or None.

    Refused: Python code (a ``Lambda`` layer, a serialised ``__lambda__``), and a class that is neither
    built into Keras (``module`` ``keras...``) nor registered by wmhkeras (``registered_name``
    ``wmhkeras>...``), which ``safe_mode`` loading would refuse as well (or, if something else in the
    process registered it, run). Keras's markers for serialised values (``__keras_tensor__`` ...) are data.
    """
    name, module, registered = node.get("class_name"), node.get("module") or "", node.get("registered_name") or ""
    if name in ("Lambda", "__lambda__"):
        return "a Lambda layer (Python code)"
    if not isinstance(name, str) or name.startswith("__") and name.endswith("__"):
        return None
    if module == "keras" or module.startswith("keras.") or registered.startswith(f"{KERAS_PACKAGE}>"):
        return None
    return f"the class {name!r} ({f'module {module}' if module else 'no module'}), neither built into Keras nor registered by wmhkeras"


def keras_info(path: Path) -> KerasInfo:
    """Read a ``.keras`` zip's ``config.json`` without Keras (see :class:`KerasInfo`).

    Raises:
        InputError: not a readable ``.keras`` file, or one holding an object wmhkeras never loads
            (:func:`refused_object`: Python code or an unknown class).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .keras model file ({exc.__class__.__name__}: {exc})") from None

    shapes, pools = set(), [0]

    def walk(node) -> None:
        if isinstance(node, dict):
            refused = refused_object(node)
            if refused:
                raise InputError(f"{path}: refused: the model holds {refused}; wmhkeras loads only Keras's own "
                                 "layers and the objects it registers (safe_mode), never code from a model file")
            cfg = node.get("config") or {}
            if node.get("class_name") == "InputLayer":
                shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
                if shape:
                    shapes.add(tuple(shape[1:]))
            elif node.get("class_name") == "MaxPooling2D":
                pools[0] += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    shape = next(iter(shapes)) if len(shapes) == 1 else None
    ok = shape is not None and len(shape) == 3 and isinstance(shape[2], int) and (
        all(isinstance(s, int) for s in shape[:2]) or shape[:2] == (None, None))
    return KerasInfo(shape if ok else None, pools[0])


def modalities_of(channels: int, context_slices: int, where) -> tuple[str, ...]:
    """The modalities of a model with ``channels`` input channels and ``context_slices`` k."""
    per = slices_per_modality(context_slices)
    if channels % per:
        raise InputError(f"{where}: the model takes {channels} input channels, not a multiple of "
                         f"2 * context_slices + 1 = {per}")
    return modalities_for(channels // per, where)


def card_resampling(card: ModelCard) -> Resampling:
    """The :class:`Resampling` a model card records (``fixed`` at ``input_size`` when it records none)."""
    r = card.resample or {"mode": "fixed", "spacing": None, "multiple": 1}
    return Resampling(r["mode"], card.input_size if r["mode"] == "fixed" else None,
                      tuple(r["spacing"]) if r["mode"] == "spacing" else None, int(r["multiple"]))


def _exported(path: Path, folder: Path, fmt: str) -> ModelSpec:
    """An exported model (SavedModel or TFLite) with the settings of its model card (:meth:`ModelCard.find`)."""
    card_path = ModelCard.find(folder)
    if card_path is None:
        raise InputError(f"{folder}: SavedModel without {MODEL_CARD_NAME} (looked in its assets.extra/, inside "
                         "and beside it); it records the modalities, normalisation and input size")
    card = ModelCard.read(card_path)
    size = card.input_size if card.mode == "fixed" else None
    return ModelSpec(path, fmt, path, card.modalities, card.normalisation, size, card_resampling(card),
                     card.context_slices, card)


def _export_saved_model(folder: Path) -> Optional[Path]:
    """The SavedModel of an export folder (``saved_model/``, or where its card's ``saved_model`` says, e.g.
    the serving layout's ``<name>/<N>``), or of a TensorFlow Serving base folder (its highest version)."""
    if (folder / "saved_model" / "saved_model.pb").is_file():
        return folder / "saved_model"
    if (folder / MODEL_CARD_NAME).is_file():
        recorded = read_json(folder / MODEL_CARD_NAME).get("saved_model")
        if isinstance(recorded, str) and (folder / recorded / "saved_model.pb").is_file():
            return folder / recorded
    versions = [p for p in folder.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file()]
    return max(versions, key=lambda p: int(p.name)) if versions else None


def _run_spec(source: Path, fmt: str, checkpoint: Path, config_path: Path, info: KerasInfo) -> ModelSpec:
    """A checkpoint with the settings of its run's ``config.yaml``, checked against the checkpoint."""
    cfg = load_run_config(config_path)
    if cfg.data.sampling == "patches" and cfg.data.lesion_position == "centre":
        log.warning("%s: trained with each lesion patch's lesion voxel at the patch centre "
                    "(data.lesion_position: centre); such models learn a "
                    "centre prior and miss lesions in whole slices (docs/real_data.md, 'The centre prior'). "
                    "Retrain with data.lesion_position: random", config_path.parent)
    modalities, k = tuple(cfg.data.modalities), cfg.data.context_slices
    resampling = resampling_for(cfg.data, cfg.model)
    where = f"{checkpoint}: the model takes {info.shape} inputs but the run config says"
    if info.shape is not None:
        if info.shape[2] != input_channels(len(modalities), k):
            raise ConfigError(f"{where} modalities {list(modalities)} with context_slices {k}")
        # A checkpoint built for one size (a training-state last.keras, or a fixed-size generator) is
        # loaded as its free-size copy in the spacing and none modes (loaders.py).
        fixed_size = None if info.free else tuple(info.shape[:2])
        if fixed_size and resampling.mode == "fixed" and fixed_size != resampling.input_size:
            raise ConfigError(f"{where} input_size {list(cfg.model.input_size)}")
    size = resampling.input_size if resampling.mode == "fixed" else None
    return ModelSpec(source, fmt, checkpoint, modalities, cfg.data.normalisation, size, resampling, k)


def _bare_keras(path: Path, info: KerasInfo) -> ModelSpec:
    """A ``.keras`` file outside a run: fixed resampling at its size, or ``none`` for a free-size model."""
    if info.shape is None:
        return ModelSpec(path, "keras", path, None, "max", None)
    modalities = modalities_for(info.shape[2], path)
    if info.free:
        return ModelSpec(path, "keras", path, modalities, "max", None, Resampling("none", multiple=2**info.depth))
    size = tuple(info.shape[:2])
    return ModelSpec(path, "keras", path, modalities, "max", size, Resampling("fixed", size))


def _keras_file(path: Path) -> ModelSpec:
    """A ``.keras`` file: settings of its run folder when it sits in ``checkpoints/``, else from the file."""
    if path.suffix != ".keras":
        raise InputError(f"{path}: not a model; {_EXPECTED}")
    info = keras_info(path)
    run = RunFolder(path.parent.parent)
    if path.parent.name == "checkpoints" and run.config.is_file():
        return _run_spec(path, "keras", path, run.config, info)
    return _bare_keras(path, info)


def _run_folder(path: Path) -> ModelSpec:
    """A training run folder: its best (else last) checkpoint with the settings of its ``config.yaml``."""
    run = RunFolder(path)
    checkpoint = next((c for c in (run.best, run.last) if c.is_file()), None)
    if checkpoint is None:
        raise InputError(f"{path}: run folder without checkpoints/best.keras or checkpoints/last.keras")
    if not run.config.is_file():
        raise InputError(f"{path}: run folder without config.yaml (it records the model's preprocessing)")
    return _run_spec(path, "run", checkpoint, run.config, keras_info(checkpoint))


def inspect_model(path: str | Path) -> ModelSpec:
    """Identify a model source and read its preprocessing settings, without TensorFlow.

    - ``*.keras`` file: the input size and channels are read from the file's config; normalisation
      is ``max`` (the paper's), no context; a fixed-size model resamples ``fixed`` to its size, a
      free-size one (``(None, None, C)``) runs on the native grid (``none``) padded to ``2**depth``
      (``depth``: its ``MaxPooling2D`` layers). A file in a run folder's ``checkpoints/`` uses the run's
      ``config.yaml`` instead.
    - run folder (holds ``checkpoints/`` or ``config.yaml``): ``checkpoints/best.keras``, else
      ``checkpoints/last.keras``; modalities, normalisation, ``data.resample``/``data.spacing``
      (:func:`~wmhkeras.data.preprocessing.resampling_for`) and ``data.context_slices`` from ``config.yaml``.
    - SavedModel folder (holds ``saved_model.pb``), an export folder holding ``saved_model/`` (or the
      SavedModel its card names, e.g. ``<name>/<N>/`` of the serving layout), or a TensorFlow Serving base
      folder of numbered versions (the highest): settings from ``model_card.json`` in the SavedModel's
      ``assets.extra/``, else inside or beside it.
    - ``*.tflite`` file of an export (``tflite/model_<variant>.tflite``): settings from the export's
      ``model_card.json``; run with ai-edge-litert.

    - the name of a built-in model (``wmhkeras models``), or ``builtin:NAME``: its SavedModel, as above
      (:func:`~wmhkeras.io.builtin_models.resolve_model`: a path that exists wins over a name).

    Raises:
        InputError: the path is missing or is none of these, or a bad model card;
        ConfigError: a bad ``config.yaml``, or one that disagrees with the checkpoint.
    """
    path, builtin = resolve_model(path)
    if builtin is not None:
        if not (path / "saved_model.pb").is_file():
            raise InputError(f"built-in model {builtin.name}: {path} holds no saved_model.pb; the installation is incomplete")
        return replace(_exported(path, path, "saved_model"), builtin=builtin)
    if not path.exists():
        names = ", ".join(m.name for m in builtin_models())
        raise InputError(f"{path}: model not found; {_EXPECTED}" + (f" (built-in: {names})" if names else ""))
    if path.is_dir() and not (path / "saved_model.pb").is_file():
        path = _export_saved_model(path) or path  # the folder `wmhkeras export` writes
    if path.is_file() and path.suffix == ".tflite":
        return _exported(path, path.parent, "tflite")
    if path.is_file():
        return _keras_file(path)
    if (path / "saved_model.pb").is_file():
        return _exported(path, path, "saved_model")
    if (path / "checkpoints").is_dir() or (path / "config.yaml").is_file():
        return _run_folder(path)
    raise InputError(f"{path}: folder is not a model; expected a run folder (with checkpoints/) or a SavedModel (saved_model.pb)")


def looks_like_model(value: str | Path) -> bool:
    """Whether a command-line argument names a model rather than an input (without reading any file): a
    built-in name that is not a path here, ``builtin:NAME``, a ``.keras`` or ``.tflite`` path, or a folder
    holding a model (``saved_model.pb``, an export's ``saved_model/`` or ``model_card.json``, a run's
    ``checkpoints/`` or ``config.yaml``, TensorFlow Serving's numbered versions)."""
    path = Path(value)
    if is_builtin_name(value) and (str(value).startswith("builtin:") or not path.exists()):
        return True
    if path.suffix in (".keras", ".tflite"):
        return True
    if not path.is_dir():
        return False
    markers = ("saved_model.pb", "saved_model/saved_model.pb", MODEL_CARD_NAME, "checkpoints", "config.yaml")
    return any((path / m).exists() for m in markers) or any(
        p.name.isdigit() and (p / "saved_model.pb").is_file() for p in path.iterdir())


def split_model_argument(arguments: Sequence[str | Path]) -> tuple[Optional[str | Path], list[str | Path]]:
    """``segment [MODEL] INPUT...``: ``(model, inputs)`` from the positional arguments; ``model`` is None
    (the default built-in model) unless the first of two or more arguments names a model
    (:func:`looks_like_model`) or cannot be an input: neither a NIfTI or CSV name nor a folder (then it is
    read as a model, to be reported as missing or as no model).

    Raises:
        InputError: the only argument is a model (no input named).
    """
    arguments = list(arguments)
    if not arguments:
        raise InputError("no input given: name FLAIR files, a folder, a BIDS dataset or a manifest CSV")
    first = arguments[0]
    if len(arguments) == 1:
        if looks_like_model(first):
            raise InputError(f"{first}: a model, but no INPUT is named; give FLAIR files, a folder or a manifest after it")
        return None, arguments
    input_like = is_nifti(first) or Path(first).suffix.lower() == ".csv" or Path(first).is_dir()
    if looks_like_model(first) or not input_like:
        return first, arguments[1:]
    if is_builtin_name(first):
        log.warning("%s: read as an input (a path of this name exists here), not as the built-in model", first)
    return None, arguments


# === A model as the start of a training (`wmhkeras train --init`) ===


def _run_of(spec: ModelSpec) -> Optional[RunFolder]:
    """The run folder of a ``.keras`` source: the run itself, or the run whose ``checkpoints/`` holds the file."""
    if spec.format == "run":
        return RunFolder(spec.source)
    run = RunFolder(spec.path.parent.parent)
    return run if spec.path.parent.name == "checkpoints" and run.config.is_file() else None


def init_record(model: str | Path) -> InitRecord:
    """What ``wmhkeras train --init MODEL`` starts from, read without TensorFlow: the weights to load (a
    SavedModel folder, or a ``.keras`` file: a run folder's ``best.keras``, else its ``last.keras``), their
    SHA-256, the config and preprocessing they were trained with, and their training data and lineage (an
    export's model card, a run folder's ``config.yaml``, ``split.json`` and ``init.json``).

    Raises:
        InputError: not a model (:func:`inspect_model`), or a TFLite file (its weights are converted, not
            trainable); ConfigError: a run folder's bad ``config.yaml``.
    """
    spec = inspect_model(model)
    if spec.format == "tflite":
        raise InputError(f"{spec.path}: a TFLite file cannot start a training (its weights are converted); "
                         "use the SavedModel or the run folder it was exported from")
    config, training_data, parent, settings = None, {}, None, None
    if spec.format == "saved_model":
        card = spec.card
        config, parent = card.training_config, None if card.parent is None else asdict(card.parent)
        training_data = asdict(card.training_data)
    else:
        run = _run_of(spec)
        if run is not None:
            cfg = load_run_config(run.config)
            config = cfg.to_dict()
            training_data = {"dataset": cfg.data.path}
            if run.split.is_file():
                training_data["subjects"] = run.read_split().counts()
            earlier = run.read_init()
            parent = None if earlier is None else asdict(earlier.parent_model())
    if spec.format == "saved_model" or config is not None:  # a bare .keras file records no preprocessing
        r = spec.resampling
        settings = {"modalities": list(spec.modalities), "normalisation": spec.normalisation, "resample": r.mode,
                    "spacing": None if r.spacing is None else list(r.spacing),
                    "input_size": None if r.input_size is None else list(r.input_size),
                    "context_slices": spec.context_slices}
    return InitRecord(model=str(model), format="saved_model" if spec.format == "saved_model" else "keras",
                      path=str(Path(spec.path).resolve()), sha256=path_sha256(spec.path),
                      builtin=spec.builtin.name if spec.builtin else None, config=config, settings=settings,
                      training_data=training_data, parent=parent)
