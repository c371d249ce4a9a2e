"""Model sources: what a model path is and which preprocessing it needs, found without TensorFlow.

A model source is a ``.keras`` file, a training run folder (its ``checkpoints/best.keras`` or
``last.keras`` and its ``config.yaml``), an exported SavedModel folder or an export's ``.tflite`` file
(both with the export's ``model_card.json``). :func:`inspect_model` reads the modalities, normalisation
and input size of each, so that a wrong source costs nothing before the model is loaded
(:func:`wmhkeras.inference.loaders.load_segmenter`).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from wmhkeras.config import load_config
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.io.model_card import MODEL_CARD_NAME, ModelCard, modalities_for
from wmhkeras.io.run_folder import RunFolder

_EXPECTED = "expected a .keras file, a run folder, a SavedModel folder or a .tflite file"


@dataclass(frozen=True)
class ModelSpec:
    """A model source and the preprocessing it needs, read without TensorFlow (:func:`inspect_model`).

    ``format``: ``keras`` (a ``.keras`` file), ``run`` (a training run folder), ``saved_model`` or
    ``tflite``. ``path``: the ``.keras``, SavedModel folder or ``.tflite`` file that is loaded.
    ``modalities`` and ``input_size`` are ``None`` when only loading the model can tell.
    """

    source: Path
    format: str
    path: Path
    modalities: Optional[tuple[str, ...]]
    normalisation: str
    input_size: Optional[tuple[int, int]]


def _keras_input_shape(path: Path) -> Optional[tuple[int, ...]]:
    """``(height, width, channels)`` from the ``config.json`` inside a ``.keras`` zip, without Keras.

    Returns None when the config does not name exactly one input shape (e.g. a nested model); the
    model is then checked after loading.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .keras model file ({exc.__class__.__name__}: {exc})") from None

    shapes = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "InputLayer":
                cfg = node.get("config") or {}
                shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
                if shape:
                    shapes.add(tuple(shape[1:]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    if len(shapes) == 1:
        shape = next(iter(shapes))
        if len(shape) == 3 and all(isinstance(s, int) for s in shape):
            return shape
    return None


def _run_config_settings(config_path: Path) -> tuple[tuple[str, ...], str, tuple[int, ...]]:
    """``(modalities, normalisation, input_size)`` of a run's ``config.yaml``."""
    cfg = load_config(config_path)
    return tuple(cfg.data.modalities), cfg.data.normalisation, tuple(cfg.model.input_size)


def _exported(path: Path, folder: Path, fmt: str) -> ModelSpec:
    """An exported model (SavedModel or TFLite) with the settings of the model card in or beside ``folder``."""
    card_path = ModelCard.find(folder)
    if card_path is None:
        raise InputError(f"{folder}: SavedModel without {MODEL_CARD_NAME} (looked inside and beside it); "
                         "it records the modalities, normalisation and input size")
    card = ModelCard.read(card_path)
    return ModelSpec(path, fmt, path, card.modalities, card.normalisation, card.input_size)


def _keras_file(path: Path) -> tuple[ModelSpec, Optional[tuple[int, ...]]]:
    """A ``.keras`` file: settings of its run folder when it sits in ``checkpoints/``, else from the file."""
    if path.suffix != ".keras":
        raise InputError(f"{path}: not a model; {_EXPECTED}")
    shape = _keras_input_shape(path)
    run = RunFolder(path.parent.parent)
    if path.parent.name == "checkpoints" and run.config.is_file():
        modalities, normalisation, size = _run_config_settings(run.config)
    else:
        modalities = modalities_for(shape[2], path) if shape else None
        normalisation, size = "max", shape[:2] if shape else None
    return ModelSpec(path, "keras", path, modalities, normalisation, size), shape


def _run_folder(path: Path) -> tuple[ModelSpec, Optional[tuple[int, ...]]]:
    """A training run folder: its best (else last) checkpoint with the settings of its ``config.yaml``."""
    run = RunFolder(path)
    checkpoint = next((c for c in (run.best, run.last) if c.is_file()), None)
    if checkpoint is None:
        raise InputError(f"{path}: run folder without checkpoints/best.keras or checkpoints/last.keras")
    if not run.config.is_file():
        raise InputError(f"{path}: run folder without config.yaml (it records the model's preprocessing)")
    modalities, normalisation, size = _run_config_settings(run.config)
    return ModelSpec(path, "run", checkpoint, modalities, normalisation, size), _keras_input_shape(checkpoint)


def inspect_model(path: str | Path) -> ModelSpec:
    """Identify a model source and read its preprocessing settings, without TensorFlow.

    - ``*.keras`` file: the input size and channels are read from the file's config; normalisation
      is ``max`` (the paper's) unless the file sits in a run folder's ``checkpoints/``, whose
      ``config.yaml`` is then used.
    - run folder (holds ``checkpoints/`` or ``config.yaml``): ``checkpoints/best.keras``, else
      ``checkpoints/last.keras``; modalities, normalisation and input size from ``config.yaml``.
    - SavedModel folder (holds ``saved_model.pb``), or an export folder holding ``saved_model/``:
      settings from ``model_card.json`` inside or beside the SavedModel.
    - ``*.tflite`` file of an export (``tflite/model_<variant>.tflite``): settings from the export's
      ``model_card.json``; run with ai-edge-litert.

    Raises:
        InputError: the path is missing or is none of these, or a bad model card;
        ConfigError: a bad ``config.yaml``, or one that disagrees with the checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: model not found; {_EXPECTED}")
    if path.is_dir() and (path / "saved_model" / "saved_model.pb").is_file():
        path = path / "saved_model"  # the folder `wmhkeras export` writes: saved_model/ + model_card.json
    if path.is_file() and path.suffix == ".tflite":
        return _exported(path, path.parent, "tflite")
    if path.is_file():
        spec, shape = _keras_file(path)
    elif (path / "saved_model.pb").is_file():
        return _exported(path, path, "saved_model")
    elif (path / "checkpoints").is_dir() or (path / "config.yaml").is_file():
        spec, shape = _run_folder(path)
    else:
        raise InputError(f"{path}: folder is not a model; expected a run folder (with checkpoints/) or a SavedModel (saved_model.pb)")
    if shape and spec.modalities and (tuple(shape[:2]) != tuple(spec.input_size) or shape[2] != len(spec.modalities)):
        raise ConfigError(
            f"{spec.path}: the model takes {shape} inputs but the run config says input_size {list(spec.input_size)} "
            f"with modalities {list(spec.modalities)}"
        )
    return spec
