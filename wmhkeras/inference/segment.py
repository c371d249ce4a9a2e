"""Whole-volume WMH segmentation of FLAIR (+ T1) files: the library behind ``wmhkeras segment``.

Per subject: :func:`~wmhkeras.data.preprocessing.preprocess_volume` (the one preprocessing shared with
training and the exported model) -> the model on batches of axial slices -> optional left-right flip
test-time augmentation -> :func:`~wmhkeras.data.preprocessing.restore_volume` -> a float32 probability map
and a uint8 mask (probability >= threshold, then 26-connected components smaller than a volume in mm^3
removed) -> both written with :func:`~wmhkeras.io.save_like` on the input's exact grid (shape, voxel
order, affine, qform/sform codes), plus a per-lesion CSV and one ``summary.csv`` across subjects.

Model sources (:func:`load_segmenter`): a ``.keras`` file, a training run folder (its
``checkpoints/best.keras`` or ``last.keras`` and its ``config.yaml``), or an exported SavedModel folder
with its ``model_card.json``. Input size, channels and normalisation always come from the model.

Order of work, so that mistakes cost nothing: the model source is inspected without TensorFlow, the
inputs are resolved and every file is read and checked (a cheap pass), then the model is loaded, and
only then is anything written. A subject whose files are broken is reported as failed and the others
still complete. TensorFlow is imported inside the functions that run the model, so the naming helpers
here (:func:`subject_id`) are cheap to import (``wmhkeras evaluate`` uses them without TensorFlow).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from wmhkeras.data.datasets import MANIFEST_NAME, Subject, check_subject, load_dataset, read_manifest
from wmhkeras.errors import ConfigError, InputError, WmhError
from wmhkeras.io import check_same_grid, load_volume, save_like
from wmhkeras.io.naming import (
    LESIONS_SUFFIX,
    MASK_SUFFIX,
    PROB_SUFFIX,
    SUMMARY_NAME,
    is_nifti,
    strip_nifti,
    subject_id,
    swap_tag,
)

log = logging.getLogger(__name__)

#: Provenance of a segmentation run (model, settings, versions), written beside the outputs.
RUN_RECORD_NAME = "segment.json"
#: The SavedModel's description written by the export (modalities, normalisation, input size).
MODEL_CARD_NAME = "model_card.json"
#: Modalities of a model by its number of input channels, when nothing else records them.
MODALITIES_BY_CHANNELS = {1: ("flair",), 2: ("flair", "t1")}


# === Model sources ===


@dataclass(frozen=True)
class ModelSpec:
    """A model source and the preprocessing it needs, read without TensorFlow (:func:`inspect_model`).

    ``format``: ``keras`` (a ``.keras`` file), ``run`` (a training run folder) or ``saved_model``.
    ``path``: the ``.keras`` file or SavedModel folder that is loaded. ``modalities`` and
    ``input_size`` are ``None`` when only loading the model can tell.
    """

    source: Path
    format: str
    path: Path
    modalities: Optional[tuple[str, ...]]
    normalisation: str
    input_size: Optional[tuple[int, int]]


def _modalities_for(channels: int, where) -> tuple[str, ...]:
    if channels not in MODALITIES_BY_CHANNELS:
        raise InputError(f"{where}: the model takes {channels} input channels; wmhkeras models take 1 (FLAIR) or 2 (FLAIR, T1)")
    return MODALITIES_BY_CHANNELS[channels]


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


def _spec_from_run_config(config_path: Path):
    from wmhkeras.config import load_config

    cfg = load_config(config_path)
    return tuple(cfg.data.modalities), cfg.data.normalisation, tuple(cfg.model.input_size)


def _read_model_card(folder: Path) -> tuple[tuple[str, ...], str, tuple[int, int]]:
    from wmhkeras.data.preprocessing import NORMALISATIONS

    card_path = next((p for p in (folder / MODEL_CARD_NAME, folder.parent / MODEL_CARD_NAME) if p.is_file()), None)
    if card_path is None:
        raise InputError(f"{folder}: SavedModel without {MODEL_CARD_NAME} (looked inside and beside it); "
                         "it records the modalities, normalisation and input size")
    try:
        card = json.loads(card_path.read_text())
        modalities = tuple(card["modalities"])
        normalisation = card["normalisation"]
        input_size = tuple(int(s) for s in card["input_size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{card_path}: expected JSON with modalities, normalisation and input_size ({exc!r})") from None
    if modalities not in MODALITIES_BY_CHANNELS.values():
        raise InputError(f"{card_path}: modalities {list(modalities)} are not allowed; use [flair] or [flair, t1]")
    if normalisation not in NORMALISATIONS:
        raise InputError(f"{card_path}: normalisation {normalisation!r} is not known; use one of {', '.join(NORMALISATIONS)}")
    if len(input_size) != 2 or min(input_size) < 1:
        raise InputError(f"{card_path}: input_size {list(input_size)} must be [height, width]")
    return modalities, normalisation, input_size


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
        InputError: the path is missing or is none of these; ConfigError: a bad ``config.yaml``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: model not found; expected a .keras file, a run folder, a SavedModel folder or a .tflite file")
    if path.is_dir() and (path / "saved_model" / "saved_model.pb").is_file():
        path = path / "saved_model"  # the folder `wmhkeras export` writes: saved_model/ + model_card.json
    if path.is_file() and path.suffix == ".tflite":
        modalities, normalisation, size = _read_model_card(path.parent)
        return ModelSpec(path, "tflite", path, modalities, normalisation, size)
    if path.is_file():
        if path.suffix != ".keras":
            raise InputError(f"{path}: not a model; expected a .keras file, a run folder, a SavedModel folder or a .tflite file")
        shape = _keras_input_shape(path)
        run_config = path.parent.parent / "config.yaml"
        if path.parent.name == "checkpoints" and run_config.is_file():
            modalities, normalisation, size = _spec_from_run_config(run_config)
        else:
            modalities = _modalities_for(shape[2], path) if shape else None
            normalisation, size = "max", shape[:2] if shape else None
        spec = ModelSpec(path, "keras", path, modalities, normalisation, size)
    elif (path / "saved_model.pb").is_file():
        modalities, normalisation, size = _read_model_card(path)
        return ModelSpec(path, "saved_model", path, modalities, normalisation, size)
    elif (path / "checkpoints").is_dir() or (path / "config.yaml").is_file():
        from wmhkeras.io.run_folder import RunFolder

        run = RunFolder(path)
        checkpoint = next((c for c in (run.best, run.last) if c.is_file()), None)
        if checkpoint is None:
            raise InputError(f"{path}: run folder without checkpoints/best.keras or checkpoints/last.keras")
        if not run.config.is_file():
            raise InputError(f"{path}: run folder without config.yaml (it records the model's preprocessing)")
        modalities, normalisation, size = _spec_from_run_config(run.config)
        shape = _keras_input_shape(checkpoint)
        spec = ModelSpec(path, "run", checkpoint, modalities, normalisation, size)
    else:
        raise InputError(f"{path}: folder is not a model; expected a run folder (with checkpoints/) or a SavedModel (saved_model.pb)")
    if shape and spec.modalities and (tuple(shape[:2]) != tuple(spec.input_size) or shape[2] != len(spec.modalities)):
        raise ConfigError(
            f"{spec.path}: the model takes {shape} inputs but the run config says input_size {list(spec.input_size)} "
            f"with modalities {list(spec.modalities)}"
        )
    return spec


@dataclass
class Segmenter:
    """A loaded model plus the preprocessing it was trained with.

    ``segmenter(slices)`` maps preprocessed float32 slices ``(batch, H, W, C)`` (see :meth:`preprocess`)
    to probabilities ``(batch, H, W, 1)``. ``predict_fn`` is the raw callable (TensorFlow tensors in
    and out); tests and the export may build a Segmenter around any such function.
    """

    predict_fn: Callable
    modalities: tuple[str, ...]
    normalisation: str
    input_size: tuple[int, int]
    source: str = ""
    #: The Keras model or loaded SavedModel, kept so that its variables stay alive.
    model: Any = None

    @property
    def channels(self) -> int:
        return len(self.modalities)

    def __call__(self, slices) -> np.ndarray:
        return np.asarray(self.predict_fn(slices), dtype=np.float32)

    def preprocess(self, images: Sequence[np.ndarray]):
        """One ``[X, Y, Z]`` array per modality (in :attr:`modalities` order) -> slices ``(Z, H, W, C)``."""
        from wmhkeras.data.preprocessing import preprocess_volume

        if len(images) != self.channels:
            raise InputError(f"the model takes {self.channels} modalities ({', '.join(self.modalities)}), got {len(images)}")
        return preprocess_volume(images, self.input_size, self.normalisation)


def _keras_predict_fn(model, input_shape):
    import tensorflow as tf

    # A fixed signature (batch left free) traces once: the last, smaller batch reuses the graph.
    @tf.function(input_signature=[tf.TensorSpec((None, *input_shape), tf.float32)])
    def predict(x):
        return model(x, training=False)

    return predict


def tflite_predict_fn(path: Path):
    """Slices ``(batch, H, W, C)`` float32 -> probabilities with an exported TFLite file (ai-edge-litert)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    return lambda x: runner(slices=x)["probabilities"]


def _load_keras(spec: ModelSpec) -> Segmenter:
    import keras

    from wmhkeras.registration import load_model

    try:
        model = load_model(spec.path, compile=False)
    except Exception as exc:  # Keras raises many types for foreign, unsafe or broken files
        raise InputError(f"{spec.path}: cannot load the model ({exc.__class__.__name__}: {exc})") from None
    # A training wrapper (e.g. the adversarial ablation) holds the segmentation network as .generator.
    if isinstance(getattr(model, "generator", None), keras.Model):
        model = model.generator
    in_shape, out_shape = tuple(model.input_shape), tuple(model.output_shape)
    if len(in_shape) != 4 or None in in_shape[1:] or out_shape[1:] != (*in_shape[1:3], 1):
        raise InputError(f"{spec.path}: expected a model (batch, H, W, C) -> (batch, H, W, 1), got {in_shape} -> {out_shape}")
    modalities = spec.modalities or _modalities_for(in_shape[3], spec.path)
    if len(modalities) != in_shape[3] or (spec.input_size and tuple(spec.input_size) != in_shape[1:3]):
        raise ConfigError(f"{spec.path}: the model takes {in_shape[1:]} inputs, the recorded settings say "
                          f"input_size {list(spec.input_size or ())} with modalities {list(modalities)}")
    return Segmenter(_keras_predict_fn(model, in_shape[1:]), tuple(modalities), spec.normalisation,
                     tuple(in_shape[1:3]), str(spec.source), model)


def _load_tflite(spec: ModelSpec) -> Segmenter:
    try:
        predict = tflite_predict_fn(spec.path)
    except ImportError:
        raise InputError(f"{spec.path}: TFLite models need ai-edge-litert: pip install 'wmhkeras[litert]'") from None
    except Exception as exc:
        raise InputError(f"{spec.path}: cannot load the TFLite model ({exc.__class__.__name__}: {exc})") from None
    return Segmenter(lambda x: predict(np.asarray(x, np.float32)), spec.modalities, spec.normalisation,
                     tuple(spec.input_size), str(spec.source))


def _load_saved_model(spec: ModelSpec) -> Segmenter:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(spec.path))
    except Exception as exc:
        raise InputError(f"{spec.path}: cannot load the SavedModel ({exc.__class__.__name__}: {exc})") from None
    fn = loaded.signatures.get("serving_default")
    if fn is None:
        raise InputError(f"{spec.path}: the SavedModel has no serving_default signature")
    inputs = fn.structured_input_signature[1]
    if len(inputs) != 1:
        raise InputError(f"{spec.path}: serving_default must take one input, takes {sorted(inputs)}")
    (name, tensor_spec), = inputs.items()
    expected = (*spec.input_size, len(spec.modalities))
    if not tf.TensorShape(tensor_spec.shape[1:]).is_compatible_with(expected):
        raise InputError(f"{spec.path}: serving_default takes {tensor_spec.shape}, the model card says {expected}")

    def predict(x):
        (out,) = fn(**{name: tf.convert_to_tensor(x, tf.float32)}).values()
        return out

    return Segmenter(predict, spec.modalities, spec.normalisation, tuple(spec.input_size), str(spec.source), loaded)


def load_segmenter(path: str | Path | ModelSpec) -> Segmenter:
    """Load a model source (see :func:`inspect_model`) as a :class:`Segmenter`.

    ``.keras`` files load with ``safe_mode=True``, no ``custom_objects`` (every wmhkeras object is
    registered) and ``compile=False`` (the content loss's backbone weights are not needed).
    """
    spec = path if isinstance(path, ModelSpec) else inspect_model(path)
    loaders = {"saved_model": _load_saved_model, "tflite": _load_tflite}
    segmenter = loaders.get(spec.format, _load_keras)(spec)
    log.info("loaded %s model %s: modalities %s, normalisation %s, input %s", spec.format, spec.path,
             ",".join(segmenter.modalities), segmenter.normalisation, "x".join(map(str, segmenter.input_size)))
    return segmenter


# === One volume ===


def predict_volume(segmenter: Segmenter, images: Sequence[np.ndarray], batch_size: int = 8,
                   tta_flip: bool = False) -> np.ndarray:
    """Probability map ``[X, Y, Z]`` float32 of one subject.

    Args:
        images: one canonical ``[X, Y, Z]`` array per modality of the model (FLAIR first).
        batch_size: slices per model call (memory vs. speed).
        tta_flip: also segment the left-right mirrored slices (in RAS the first slice axis, height, is
            left-right) and average the two probability maps.
    """
    import tensorflow as tf

    from wmhkeras.data.preprocessing import restore_volume

    slices = segmenter.preprocess(images)
    outputs = []
    for start in range(0, int(slices.shape[0]), batch_size):
        batch = slices[start : start + batch_size]
        prob = tf.convert_to_tensor(segmenter.predict_fn(batch), tf.float32)
        if tta_flip:
            flipped = tf.convert_to_tensor(segmenter.predict_fn(tf.reverse(batch, [1])), tf.float32)
            prob = 0.5 * (prob + tf.reverse(flipped, [1]))
        outputs.append(prob)
    return np.asarray(restore_volume(tf.concat(outputs, 0), images[0].shape), dtype=np.float32)


def lesion_mask(prob: np.ndarray, threshold: float = 0.5, min_lesion_mm3: float = 0.0,
                voxel_volume_mm3: float = 1.0) -> np.ndarray:
    """Binary mask ``[X, Y, Z]`` uint8: ``prob >= threshold``, then 26-connected components smaller
    than ``min_lesion_mm3`` (voxel count times ``voxel_volume_mm3``) removed."""
    from wmhkeras.evaluation.metrics import lesion_components

    mask = np.asarray(prob) >= threshold
    if min_lesion_mm3 > 0 and mask.any():
        labels, n = lesion_components(mask)
        sizes_mm3 = np.bincount(labels.ravel(), minlength=n + 1) * voxel_volume_mm3
        keep = sizes_mm3 >= min_lesion_mm3 * (1 - 1e-6)  # a 3-voxel lesion of 1 mm^3 voxels stays at 3 mm^3
        keep[0] = False
        mask = keep[labels]
    return mask.astype(np.uint8)


# === Inputs ===


@dataclass(frozen=True)
class SegmentInput:
    """One subject to segment: its files (absolute paths)."""

    subject: str
    flair: Path
    t1: Optional[Path] = None
    brain_mask: Optional[Path] = None
    site: str = "site0"


def _flat_folder(folder: Path) -> list[SegmentInput]:
    """The NIfTI files directly in ``folder`` (rule: see :func:`resolve_inputs`)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith("."))
    files = [p for p in files if not re.search(r"_wmh_(prob|mask)$", strip_nifti(p.name))]
    flairs = [p for p in files if re.search(r"flair$", strip_nifti(p.name), flags=re.IGNORECASE)]
    if not flairs:
        return [SegmentInput(subject_id(p), p.resolve()) for p in files]
    inputs = []
    for p in flairs:
        t1 = swap_tag(p, "FLAIR", "T1")
        inputs.append(SegmentInput(subject_id(p), p.resolve(), t1.resolve() if t1 is not None and t1.is_file() else None))
    return inputs


def _manifest_inputs(path: Path) -> list[SegmentInput]:
    """Subjects of a manifest; an optional ``brain_mask`` column beside the standard ones is honoured."""
    subjects = read_manifest(path)
    with open(path, newline="") as f:
        masks = [(row.get("brain_mask") or "").strip() for row in csv.DictReader(f)]
    return [
        SegmentInput(s.subject, s.flair, s.t1, (path.parent / m).resolve() if m else None, s.site)
        for s, m in zip(subjects, masks, strict=True)
    ]


def resolve_inputs(inputs: Sequence[str | Path], t1: Sequence[str | Path] = (),
                   brain_mask: Sequence[str | Path] = ()) -> list[SegmentInput]:
    """Turn the command line's inputs into subjects (no volume is read here).

    Each input is one of:

    - a FLAIR file ``*.nii``/``*.nii.gz``; its subject id is :func:`subject_id` of it;
    - a manifest CSV (``subject,site,flair,t1,label``, optionally a ``brain_mask`` column);
    - a folder: its ``manifest.csv`` if there is one; else the NIfTI files directly inside it, where our
      outputs (``*_wmh_prob``, ``*_wmh_mask``) are skipped and, if some names end with ``FLAIR``, only
      those are FLAIR images and the file with ``FLAIR`` replaced by ``T1`` is the T1; else every file
      is a FLAIR image; else the MICCAI 2017 layout (``<site>/<subject>/pre/FLAIR.nii.gz``).

    ``t1`` and ``brain_mask``: one file per input, in the inputs' order; only with FLAIR files given
    one by one (manifests carry their own columns).

    Raises:
        InputError: an input path does not exist, no subject is found, a subject id repeats, or the
            ``t1``/``brain_mask`` lists do not pair with the inputs.
    """
    if not inputs:
        raise InputError("no input given: name FLAIR files, a folder or a manifest CSV")
    resolved: list[SegmentInput] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"{path}: input not found")
        if path.is_dir():
            if (path / MANIFEST_NAME).is_file():
                found = _manifest_inputs(path / MANIFEST_NAME)
            else:
                found = _flat_folder(path) or [SegmentInput(s.subject, s.flair, s.t1, None, s.site) for s in load_dataset(path)]
        elif path.suffix.lower() == ".csv":
            found = _manifest_inputs(path)
        elif is_nifti(path):
            found = [SegmentInput(subject_id(path), path.resolve())]
        else:
            raise InputError(f"{path}: not a NIfTI file (.nii, .nii.gz), a folder or a manifest CSV")
        resolved.extend(found)

    for option, files in (("--t1", t1), ("--brain-mask", brain_mask)):
        if not files:
            continue
        if not all(Path(p).is_file() and is_nifti(p) for p in inputs):
            raise InputError(f"{option} pairs with FLAIR files given one by one; for folders and manifests use the manifest's columns")
        if len(files) != len(resolved):
            raise InputError(f"{option} is given {len(files)} times for {len(resolved)} FLAIR files; give one per FLAIR file, in order")
        for p in files:
            if not Path(p).is_file():
                raise InputError(f"{p}: {option} file not found")
        key = "t1" if option == "--t1" else "brain_mask"
        resolved = [SegmentInput(**{**r.__dict__, key: Path(p).resolve()}) for r, p in zip(resolved, files, strict=True)]

    seen: dict[str, Path] = {}
    for r in resolved:
        if r.subject in seen:
            raise InputError(f"subject id {r.subject!r} is given twice ({seen[r.subject]}, {r.flair}); rename the files or use a manifest")
        seen[r.subject] = r.flair
    return resolved


def _load_subject(item: SegmentInput, modalities: Sequence[str]):
    """Read and check one subject's volumes: ``(images, brain_mask or None)``, all on the FLAIR grid."""
    images, _ = check_subject(Subject(item.subject, item.site, item.flair, item.t1), modalities)
    brain = None
    if item.brain_mask is not None:
        brain = load_volume(item.brain_mask)
        check_same_grid(images[0], brain)
    return images, brain


# === Many subjects ===


@dataclass
class SubjectResult:
    """Outcome of one subject: ``status`` ``ok`` or ``failed`` (with ``error``), volumes and files."""

    subject: str
    flair: Path
    status: str = "ok"
    error: str = ""
    lesion_volume_ml: Optional[float] = None
    lesion_count: Optional[int] = None
    brain_volume_ml: Optional[float] = None
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class SegmentResult:
    """What :func:`segment` did: one :class:`SubjectResult` per subject, in input order."""

    out_dir: Path
    subjects: list[SubjectResult]
    summary_csv: Path
    record_json: Path

    @property
    def n_failed(self) -> int:
        return sum(not s.ok for s in self.subjects)

    @property
    def ok(self) -> bool:
        return self.n_failed == 0


def _output_paths(out_dir: Path, subject: str) -> dict[str, Path]:
    return {
        "prob": out_dir / f"{subject}{PROB_SUFFIX}",
        "mask": out_dir / f"{subject}{MASK_SUFFIX}",
        "lesions": out_dir / f"{subject}{LESIONS_SUFFIX}",
    }


def _segment_one(segmenter: Segmenter, item: SegmentInput, out_dir: Path, threshold: float,
                 min_lesion_mm3: float, tta_flip: bool, batch_size: int) -> SubjectResult:
    from wmhkeras.evaluation.metrics import lesion_table
    from wmhkeras.evaluation.reports import write_csv

    start = time.perf_counter()
    images, brain = _load_subject(item, segmenter.modalities)
    flair = images[0]
    prob = predict_volume(segmenter, [v.data for v in images], batch_size, tta_flip)
    mask = lesion_mask(prob, threshold, min_lesion_mm3, flair.voxel_volume_ml * 1000.0)
    lesions = lesion_table(mask, flair.affine)
    paths = _output_paths(out_dir, item.subject)
    save_like(prob, flair, paths["prob"], np.float32)
    save_like(mask, flair, paths["mask"], np.uint8)
    write_csv(lesions, paths["lesions"], columns=("lesion", "voxels", "volume_ml", "x_mm", "y_mm", "z_mm"))
    return SubjectResult(
        item.subject,
        item.flair,
        lesion_volume_ml=float(np.count_nonzero(mask) * flair.voxel_volume_ml),
        lesion_count=len(lesions),
        brain_volume_ml=None if brain is None else float(np.count_nonzero(brain.data > 0.5) * brain.voxel_volume_ml),
        files=paths,
        seconds=time.perf_counter() - start,
    )


def _write_summary(results: list[SubjectResult], path: Path, with_brain: bool) -> Path:
    from wmhkeras.evaluation.reports import write_csv

    columns = ["subject", "lesion_volume_ml", "lesion_count"] + (["brain_volume_ml"] if with_brain else [])
    columns += ["status", "error", "flair"]
    rows = [
        {
            "subject": r.subject,
            "lesion_volume_ml": "" if r.lesion_volume_ml is None else f"{r.lesion_volume_ml:.4f}",
            "lesion_count": "" if r.lesion_count is None else r.lesion_count,
            "brain_volume_ml": "" if r.brain_volume_ml is None else f"{r.brain_volume_ml:.4f}",
            "status": r.status,
            "error": r.error,
            "flair": str(r.flair),
        }
        for r in results
    ]
    return write_csv(rows, path, columns=columns)


def _check_options(threshold: float, min_lesion_mm3: float, batch_size: int) -> None:
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold (--threshold): {threshold!r} is not allowed; use a value in (0, 1]")
    if not min_lesion_mm3 >= 0.0:
        raise ConfigError(f"min_lesion_mm3 (--min-lesion-mm3): {min_lesion_mm3!r} is not allowed; use 0 or more")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ConfigError(f"batch_size (--batch-size): {batch_size!r} is not allowed; use an integer >= 1")


def segment(
    model: str | Path | Segmenter,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    threshold: float = 0.5,
    min_lesion_mm3: float = 0.0,
    tta_flip: bool = False,
    batch_size: int = 8,
    brain_mask: Sequence[str | Path] | str | Path | None = None,
    t1: Sequence[str | Path] | str | Path | None = None,
    progress: Callable[..., Iterable] | None = None,
) -> SegmentResult:
    """Segment every subject of ``inputs`` and write its outputs into ``out_dir``.

    Args:
        model: a ``.keras`` file, a run folder, a SavedModel folder (:func:`inspect_model`) or a
            loaded :class:`Segmenter`.
        inputs: FLAIR files, folders or manifest CSVs (rules: :func:`resolve_inputs`).
        threshold: probability at and above which a voxel is lesion, in (0, 1].
        min_lesion_mm3: 26-connected lesions smaller than this (mm^3) are removed from the mask.
        tta_flip: average with the prediction on left-right mirrored slices.
        batch_size: slices per model call.
        brain_mask, t1: one file per FLAIR file given one by one (or a single path).
        progress: wraps the loop over subjects, called as ``progress(iterable, total=n)`` (e.g. ``tqdm``).

    Writes, per subject ``s``: ``s_wmh_prob.nii.gz`` (float32), ``s_wmh_mask.nii.gz`` (uint8), on the
    FLAIR's exact grid, and ``s_lesions.csv``; across subjects ``summary.csv`` (rewritten after every
    subject) and ``segment.json`` (model, settings, versions). A failed subject has no outputs
    (stale ones of the same name are removed) and a ``failed`` row with the error in ``summary.csv``.

    Returns:
        a :class:`SegmentResult`; ``result.n_failed`` subjects failed.

    Raises:
        InputError / ConfigError: before anything is read or written - a bad model source, inputs that
            do not exist or do not pair, a model that needs T1 for a subject without one, bad options.
    """
    from wmhkeras.io.files import atomic_write_json
    from wmhkeras.io.provenance import package_versions, utc_now

    _check_options(threshold, min_lesion_mm3, batch_size)
    as_list = lambda v: [] if v is None else [v] if isinstance(v, (str, Path)) else list(v)  # noqa: E731
    spec = None if isinstance(model, Segmenter) else inspect_model(model)
    items = resolve_inputs(inputs, as_list(t1), as_list(brain_mask))
    modalities = model.modalities if isinstance(model, Segmenter) else spec.modalities
    if modalities and "t1" in modalities:
        missing = [i.subject for i in items if i.t1 is None]
        if missing:
            raise InputError(
                f"the model uses FLAIR + T1 but no T1 is given for {', '.join(missing[:5])}"
                f"{' and others' if len(missing) > 5 else ''}; pass --t1 FILE per FLAIR file or a manifest with a t1 column"
            )

    # Cheap pass: read and check every subject's files before the model is loaded.
    failures: dict[str, str] = {}
    for item in items:
        try:
            _load_subject(item, modalities or ("flair",))
        except WmhError as exc:
            failures[item.subject] = str(exc)
            log.warning("subject %s will be skipped: %s", item.subject, exc)

    segmenter = model if isinstance(model, Segmenter) else None
    if segmenter is None and len(failures) < len(items):
        segmenter = load_segmenter(spec)
        if "t1" in segmenter.modalities and any(i.t1 is None for i in items):
            raise InputError(f"{spec.path}: the model uses FLAIR + T1 but not every input has a T1; pass --t1 FILE per FLAIR file")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_csv, record_json = out_dir / SUMMARY_NAME, out_dir / RUN_RECORD_NAME
    with_brain = any(i.brain_mask is not None for i in items)
    results: list[SubjectResult] = []
    loop = progress(items, total=len(items)) if progress else items
    for item in loop:
        if item.subject in failures:
            result = SubjectResult(item.subject, item.flair, "failed", failures[item.subject])
        else:
            try:
                result = _segment_one(segmenter, item, out_dir, threshold, min_lesion_mm3, tta_flip, batch_size)
                log.info("%s: %d lesions, %.3f mL in %.1f s", item.subject, result.lesion_count,
                         result.lesion_volume_ml, result.seconds)
            except Exception as exc:  # one broken subject must not stop the others; the error is reported
                log.warning("subject %s failed: %s", item.subject, exc, exc_info=not isinstance(exc, WmhError))
                result = SubjectResult(item.subject, item.flair, "failed", f"{exc.__class__.__name__}: {exc}"
                                       if not isinstance(exc, WmhError) else str(exc))
        if not result.ok:
            for path in _output_paths(out_dir, item.subject).values():
                path.unlink(missing_ok=True)
        results.append(result)
        _write_summary(results, summary_csv, with_brain)

    atomic_write_json(record_json, {
        "created": utc_now(),
        "model": {
            "source": str(spec.source) if spec else segmenter.source if segmenter else "",
            "format": spec.format if spec else "segmenter",
            "modalities": list(segmenter.modalities if segmenter else modalities or ()),
            "normalisation": segmenter.normalisation if segmenter else spec.normalisation,
            "input_size": list(segmenter.input_size if segmenter else spec.input_size or ()),
        },
        "settings": {"threshold": threshold, "min_lesion_mm3": min_lesion_mm3, "tta_flip": tta_flip, "batch_size": batch_size},
        "subjects": {"total": len(results), "ok": sum(r.ok for r in results), "failed": sum(not r.ok for r in results)},
        "summary": SUMMARY_NAME,
        "versions": package_versions(),
    })
    return SegmentResult(out_dir, results, summary_csv, record_json)
