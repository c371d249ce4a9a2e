"""Export a trained generator for deployment: a SavedModel for TensorFlow apps, and TFLite variants.

``export(model_or_run_dir, out_dir)`` writes (see ``docs/export.md``)::

    OUT_DIR/saved_model/             tf.saved_model.load(...) works without wmhkeras or Keras objects
    OUT_DIR/tflite/model_<v>.tflite  fp32, fp16, dynamic (int8 weights), int8 (full integer)
    OUT_DIR/model_card.json          signatures, orientation, preprocessing, training config, data, metrics
    OUT_DIR/export_report.json       how each artifact compares with the Keras model

SavedModel signatures:

* ``serving_default``: ``slices`` float32 ``(batch, H, W, C)``, preprocessed as in training
  (:func:`wmhkeras.data.preprocessing.preprocess_volume`) -> ``probabilities`` float32 ``(batch, H, W, 1)``.
* ``segment_volume``: ``flair`` (and ``t1`` for two-channel models) float32 ``[X, Y, Z]``, raw scanner
  values in canonical RAS+ voxel order (nibabel's ``as_closest_canonical``) -> ``probabilities``
  float32 ``[X, Y, Z]`` on the same grid. Normalisation and slice resizing run inside the graph through
  the same :func:`~wmhkeras.data.preprocessing.preprocess_volume` / :func:`~wmhkeras.data.preprocessing.restore_volume`
  that training and ``wmhkeras segment`` use: one implementation of preprocessing (style guide, point 4).

Every artifact is reloaded and run on slices held back from training before the export is accepted; the
tolerances are in :data:`DEFAULT_TOLERANCES`. Everything is built in a hidden folder beside ``out_dir`` and
renamed onto it at the end, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from wmhkeras.data.preprocessing import preprocess_volume, restore_volume
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.io.files import atomic_write_json
from wmhkeras.io.provenance import package_versions, utc_now

log = logging.getLogger(__name__)

#: TFLite variants, in the order they are written.
TFLITE_VARIANTS = ("fp32", "fp16", "dynamic", "int8")
#: What each variant is (also written to the model card).
TFLITE_DESCRIPTIONS = {
    "fp32": "float32 weights and activations",
    "fp16": "float16 weights (dequantised to float32 when run on CPU), float32 activations",
    "dynamic": "dynamic-range quantisation: int8 weights, activations quantised on the fly",
    "int8": "full-integer quantisation: int8 weights and activations (calibrated), float32 input/output",
}
#: Acceptance limits per artifact: ``max_abs_diff`` of probabilities and/or ``mask_dice`` (threshold 0.5)
#: against the Keras model on held-back slices; ``segment_volume`` against the eager pipeline.
DEFAULT_TOLERANCES = {
    "saved_model": {"max_abs_diff": 1e-4},
    "segment_volume": {"max_abs_diff": 1e-4},
    "fp32": {"max_abs_diff": 1e-4},
    "fp16": {"mask_dice": 0.99},
    "dynamic": {"mask_dice": 0.99},
    "int8": {"mask_dice": 0.95},
}
#: Voxel order ``segment_volume`` expects and returns.
ORIENTATION = (
    "RAS+: voxel axes X, Y, Z point Right, Anterior, Superior (nibabel.as_closest_canonical); "
    "axial slice k is volume[:, :, k]"
)
THRESHOLD = 0.5
#: Slices run through the network at once inside ``segment_volume`` (bounds its memory).
VOLUME_BATCH = 8
#: Most slices used for verification, and for int8 calibration; most subjects read for each.
MAX_VERIFY_SLICES = 48
MAX_CALIBRATION_SLICES = 128
MAX_SUBJECTS = 8
#: Synthetic verification subject for a bare ``.keras`` file (wmhkeras.data.synth, first site preset).
SYNTHETIC_SEED = 0
MODEL_CARD_VERSION = 1


# === Report ===


@dataclass
class ArtifactCheck:
    """How one artifact compares with the Keras model (``reference``) on the verification slices.

    ``latency_ms``: median wall time of one slice (batch of 1) on this machine, ``segment_volume``: of the
    whole volume divided by its slice count. ``size_bytes`` is ``None`` for a signature of an artifact.
    """

    name: str
    path: str
    size_bytes: int | None
    latency_ms: float
    max_abs_diff: float
    mask_dice: float
    tolerance: dict[str, float] = field(default_factory=dict)
    passed: bool = True


@dataclass
class ExportReport:
    """What :func:`export` wrote and how every artifact verified. ``passed``: all within tolerance."""

    out_dir: Path
    source: str
    created: str
    artifacts: list[ArtifactCheck]
    skipped: dict[str, str]
    verification: dict
    calibration: dict

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.artifacts)

    @property
    def failures(self) -> list[str]:
        return [a.name for a in self.artifacts if not a.passed]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["out_dir"] = str(self.out_dir)
        out["passed"] = self.passed
        return out


_LIMIT_TEXT = {"max_abs_diff": "diff <=", "mask_dice": "Dice >="}


def format_table(report: ExportReport) -> str:
    """The report as a plain-text table (the CLI prints it)."""
    head = f"{'artifact':<16} {'size':>10} {'ms/slice':>9} {'max|diff|':>10} {'mask Dice':>9}  {'tolerance':<16} ok"
    lines = [head, "-" * len(head)]
    for a in report.artifacts:
        size = "-" if a.size_bytes is None else _human_size(a.size_bytes)
        tol = ", ".join(f"{_LIMIT_TEXT[k]} {v:g}" for k, v in a.tolerance.items())
        tol = tol or ("reference" if a.name == "keras" else "none")
        lines.append(f"{a.name:<16} {size:>10} {a.latency_ms:>9.2f} {a.max_abs_diff:>10.2e} {a.mask_dice:>9.4f}  "
                     f"{tol:<16} {'yes' if a.passed else 'NO'}")
    for name, why in report.skipped.items():
        lines.append(f"{name:<16} skipped: {why}")
    v = report.verification
    lines.append(f"verified on {v['slices']} slices from {v['source']}")
    return "\n".join(lines)


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


# === Options ===


def parse_variants(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``'fp32,int8'`` or a sequence -> checked variant names; ``None`` stays ``None`` (the default set);
    ``'none'`` or ``''`` -> no TFLite variant.

    Raises:
        ConfigError: an unknown variant name.
    """
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [str(n).strip() for n in text]
    names = [n for n in names if n and n.lower() != "none"]
    for n in names:
        if n not in TFLITE_VARIANTS:
            raise ConfigError(f"tflite variant {n!r} is not known; use any of {', '.join(TFLITE_VARIANTS)} (or none)")
    return tuple(dict.fromkeys(names))


def resolve_tolerances(tolerances: dict | None) -> dict[str, dict[str, float]]:
    """:data:`DEFAULT_TOLERANCES` updated by ``tolerances`` (``{"int8": {"mask_dice": 0.9}}``)."""
    merged = {k: dict(v) for k, v in DEFAULT_TOLERANCES.items()}
    for name, limits in (tolerances or {}).items():
        if name not in merged:
            raise ConfigError(f"tolerances: {name!r} is not an artifact; use any of {', '.join(merged)}")
        if not isinstance(limits, dict):
            raise ConfigError(f"tolerances.{name}: expected a mapping like {{'mask_dice': 0.95}}, got {limits!r}")
        for key, value in limits.items():
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key == "max_abs_diff" and ok and value >= 0 or key == "mask_dice" and ok and 0 <= value <= 1:
                continue
            raise ConfigError(f"tolerances.{name}.{key}: {value!r} is not allowed; use max_abs_diff >= 0 "
                              "or mask_dice in [0, 1]")
        merged[name] = {k: float(v) for k, v in limits.items()}
    return merged


def default_out_dir(model_or_run_dir, root: str | Path = "saved_models") -> Path:
    """``saved_models/<run name>``: the run folder's name, or a bare checkpoint's file stem."""
    return Path(root) / _run_name(Path(model_or_run_dir))


def _run_name(path: Path) -> str:
    if path.suffix == ".keras" and path.parent.name == "checkpoints":
        return path.parent.parent.name
    return path.stem if path.suffix == ".keras" else path.name


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder; choose another output folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise InputError(f"{out_dir}: already exists and is not empty; choose another output folder or use --force")


# === Source: the model and what the run folder says about it ===


@dataclass
class _Source:
    """The Keras model (as a :class:`wmhkeras.inference.segment.Segmenter`) and its run folder, if any."""

    segmenter: object  # wmhkeras.inference.segment.Segmenter
    checkpoint: Path
    run_dir: Path | None
    config: object | None  # wmhkeras.config.Config

    @property
    def model(self) -> keras.Model:
        return self.segmenter.model

    @property
    def modalities(self) -> list[str]:
        return list(self.segmenter.modalities)

    @property
    def normalisation(self) -> str:
        return self.segmenter.normalisation

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.segmenter.input_size)

    @property
    def channels(self) -> int:
        return self.segmenter.channels

    @property
    def description(self) -> str:
        return str(self.checkpoint)


def _resolve_source(model_or_run_dir) -> _Source:
    """Load the generator the way ``wmhkeras segment`` does (same checks, same settings).

    Raises:
        InputError: missing, unreadable, truncated or foreign checkpoint (not ``(b, H, W, C) -> (b, H, W, 1)``),
            or an already exported SavedModel.
    """
    from wmhkeras.inference.segment import inspect_model, load_segmenter
    from wmhkeras.io.run_folder import RunFolder

    spec = inspect_model(model_or_run_dir)
    if spec.format in ("saved_model", "tflite"):
        raise InputError(f"{spec.path}: this is an exported model ({spec.format}); export needs the .keras "
                         "checkpoint or its run folder")
    segmenter = load_segmenter(spec)
    run_dir = None
    if spec.format == "run":
        run_dir = Path(spec.source)
    elif spec.path.parent.name == "checkpoints" and RunFolder(spec.path.parent.parent).config.is_file():
        run_dir = spec.path.parent.parent
    cfg = None
    if run_dir is not None:
        from wmhkeras.config import load_config

        cfg = load_config(RunFolder(run_dir).config)
    else:
        log.info("no run folder: %s normalisation (the paper's), modalities %s from the model's channels",
                 segmenter.normalisation, list(segmenter.modalities))
    return _Source(segmenter, Path(spec.path), run_dir, cfg)


# === Data: calibration and verification slices ===


def _subject_slices(subject, src: _Source) -> tuple[np.ndarray, list[np.ndarray]]:
    """Preprocessed slices ``[Z, H, W, C]`` of one subject, and its raw RAS channels ``[X, Y, Z]``."""
    from wmhkeras.data.datasets import check_subject

    images, _ = check_subject(subject, src.modalities)
    channels = [im.data for im in images]
    return src.segmenter.preprocess(channels).numpy(), channels


def _evenly(items: Sequence, n: int) -> list:
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]


def _pick_slices(stacks: list[np.ndarray], n: int) -> np.ndarray:
    allslices = np.concatenate(stacks, axis=0)
    return allslices[np.asarray(_evenly(range(len(allslices)), n), dtype=int)]


def _run_data(src: _Source) -> dict | None:
    """The run's dataset split into subjects (``{"train": [...], ...}`` of Subjects), or None if unreachable."""
    if src.config is None or src.run_dir is None:
        return None
    from wmhkeras.data.datasets import load_dataset
    from wmhkeras.data.splits import SPLIT_KEYS, load_split
    from wmhkeras.io.run_folder import RunFolder

    try:
        subjects = load_dataset(src.config.data.path)
        split = load_split(RunFolder(src.run_dir).split, subjects)
    except InputError as exc:
        log.warning("the run's data is not available (%s): no calibration from training data, "
                    "verification on synthetic slices", exc)
        return None
    by_id = {s.subject: s for s in subjects}
    return {key: [by_id[i] for i in split[key]] for key in SPLIT_KEYS}


def _calibration_slices(calibration_data, src: _Source, run_data: dict | None):
    """``(slices [N, H, W, C], description)`` for int8 calibration, or ``(None, reason)``."""
    h, w = src.input_size
    if calibration_data is None:
        if run_data is None or not run_data["train"]:
            return None, "no calibration data: export a run folder with its data, or pass --calibration DATA"
        subjects = _evenly(run_data["train"], MAX_SUBJECTS)
        stacks = [_subject_slices(s, src)[0] for s in subjects]
        return _pick_slices(stacks, MAX_CALIBRATION_SLICES), {
            "source": "training subjects of the run's split", "subjects": [s.subject for s in subjects]}
    if isinstance(calibration_data, (str, Path)) and Path(calibration_data).suffix == ".npy":
        if not Path(calibration_data).is_file():
            raise InputError(f"{calibration_data}: calibration file not found")
        arr, desc = np.load(calibration_data), {"source": str(calibration_data)}
    elif isinstance(calibration_data, (str, Path)):
        from wmhkeras.data.datasets import load_dataset

        subjects = _evenly(load_dataset(calibration_data), MAX_SUBJECTS)
        stacks = [_subject_slices(s, src)[0] for s in subjects]
        return _pick_slices(stacks, MAX_CALIBRATION_SLICES), {
            "source": str(calibration_data), "subjects": [s.subject for s in subjects]}
    else:
        arr, desc = np.asarray(calibration_data), {"source": "array passed in"}
    if arr.ndim != 4 or arr.shape[1:] != (h, w, src.channels) or len(arr) == 0:
        raise InputError(f"calibration data: slices of shape {arr.shape}; expected preprocessed slices "
                         f"(N, {h}, {w}, {src.channels}) with N >= 1")
    return _pick_slices([arr.astype(np.float32)], MAX_CALIBRATION_SLICES), desc


def _synthetic_channels(src: _Source) -> list[np.ndarray]:
    from wmhkeras.data.synth import SITE_PRESETS, make_subject

    flair, t1, _, _ = make_subject(SYNTHETIC_SEED, SITE_PRESETS[0], lesion_fraction=(0.005, 0.01))
    return [flair, t1][: src.channels]


def _verification_data(src: _Source, run_data: dict | None, calibration):
    """``(slices [N, H, W, C], volume channels, description)``: what every artifact is checked on.

    A run folder: its validation and hold-out subjects (never trained on). Otherwise the calibration slices
    when given (not held back: the check then shows fidelity on the calibration inputs) or a synthetic
    subject from :mod:`wmhkeras.data.synth`; ``segment_volume`` is checked on the first held-back (else synthetic)
    volume.
    """
    held = [] if run_data is None else run_data["holdout"] + run_data["validation"]
    if held:
        subjects = _evenly(held, MAX_SUBJECTS // 2)
        loaded = [_subject_slices(s, src) for s in subjects]
        slices = _pick_slices([sl for sl, _ in loaded], MAX_VERIFY_SLICES)
        return slices, loaded[0][1], {"source": "held-out and validation subjects of the run's split",
                                      "subjects": [s.subject for s in subjects], "slices": len(slices)}
    channels = _synthetic_channels(src)
    if calibration is not None:
        slices = _pick_slices([calibration], MAX_VERIFY_SLICES)
        return slices, channels, {"source": "the calibration slices (not held back); volume check on a "
                                  "synthetic subject", "slices": len(slices)}
    slices = _pick_slices([src.segmenter.preprocess(channels).numpy()], MAX_VERIFY_SLICES)
    return slices, channels, {"source": f"a synthetic subject (wmhkeras.data.synth, seed {SYNTHETIC_SEED})",
                              "slices": len(slices)}


# === Artifacts ===


def _batched(model: keras.Model, slices, batch: int = VOLUME_BATCH):
    """Run ``model`` over ``slices (Z, H, W, C)`` ``batch`` slices at a time (graph-safe, bounded memory)."""
    n = tf.shape(slices)[0]
    padded = tf.pad(slices, [[0, (-n) % batch], [0, 0], [0, 0], [0, 0]])
    shape = tf.shape(padded)
    groups = tf.reshape(padded, tf.concat([[-1, batch], shape[1:]], axis=0))
    out = tf.map_fn(lambda b: model(b, training=False), groups,
                    fn_output_signature=tf.TensorSpec([batch, *model.outputs[0].shape[1:]], tf.float32),
                    parallel_iterations=1)
    return tf.reshape(out, tf.concat([[-1], tf.shape(out)[2:]], axis=0))[:n]


def _write_saved_model(src: _Source, path: Path) -> None:
    """Write the SavedModel with ``serving_default`` and ``segment_volume`` (plain tf.functions)."""
    model, (h, w), c = src.model, src.input_size, src.channels
    names = src.modalities

    # autograph=False: no tensor-dependent Python control flow here, and tracing is much faster without it.
    @tf.function(input_signature=[tf.TensorSpec([None, h, w, c], tf.float32, name="slices")], autograph=False)
    def serving_default(slices):
        return {"probabilities": model(slices, training=False)}

    def segment(*volumes):
        for name, other in zip(names[1:], volumes[1:], strict=True):
            tf.debugging.assert_equal(tf.shape(other), tf.shape(volumes[0]),
                                      message=f"{name} must have the FLAIR's shape")
        slices = preprocess_volume(list(volumes), (h, w), src.normalisation)
        return {"probabilities": restore_volume(_batched(model, slices), tf.shape(volumes[0]))}

    spec = [tf.TensorSpec([None, None, None], tf.float32, name=n) for n in names]

    def segment_flair(flair):
        return segment(flair)

    def segment_flair_t1(flair, t1):
        return segment(flair, t1)

    segment_volume = tf.function(segment_flair if c == 1 else segment_flair_t1, input_signature=spec, autograph=False)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving_default)
    archive.add_endpoint("segment_volume", segment_volume)
    archive.write_out(str(path), verbose=False)


def _convert_tflite(loaded, variant: str, calibration: np.ndarray | None) -> bytes:
    """Convert the reloaded SavedModel's ``serving_default`` signature (the artifact itself, not the Keras model)."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([loaded.signatures["serving_default"]], loaded)
    if variant != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        converter.representative_dataset = lambda: ([s[None]] for s in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # Input and output stay float32 (quantise/dequantise ops at the edges): same calling code for every
        # variant, preprocessing unchanged.
    return converter.convert()


def _timed(fn, slices: np.ndarray) -> tuple[np.ndarray, float]:
    """Run ``fn`` on each slice (batch of 1): stacked outputs and the median latency in ms."""
    fn(slices[:1])  # warm-up: tracing, allocation
    outs, times = [], []
    for i in range(len(slices)):
        t = time.perf_counter()
        outs.append(np.asarray(fn(slices[i:i + 1]), dtype=np.float32))
        times.append(time.perf_counter() - t)
    return np.concatenate(outs, axis=0), 1000 * statistics.median(times)


def mask_dice(a: np.ndarray, b: np.ndarray, threshold: float = THRESHOLD) -> float:
    """Dice of ``a >= threshold`` and ``b >= threshold`` over all voxels; 1.0 when both are empty."""
    ma, mb = a >= threshold, b >= threshold
    total = int(ma.sum() + mb.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(ma, mb).sum()) / total


def _check(name, path, size, latency, out, ref, tolerance) -> ArtifactCheck:
    diff = float(np.abs(out - ref).max())
    dice = mask_dice(out, ref)
    passed = diff <= tolerance.get("max_abs_diff", np.inf) and dice >= tolerance.get("mask_dice", -np.inf)
    log.info("%s: max |diff| %.3g, mask Dice %.4f, %.2f ms/slice -> %s", name, diff, dice, latency,
             "ok" if passed else "OUTSIDE TOLERANCE")
    return ArtifactCheck(name, path, size, round(latency, 3), diff, dice, tolerance, passed)


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


# === Model card ===


def _model_card(src: _Source, variants: Sequence[str], run_data: dict | None, calibration_desc) -> dict:
    from wmhkeras.io.run_folder import RunFolder

    h, w = src.input_size
    channels = {n: {"shape": [None, None, None], "dtype": "float32",
                    "description": f"raw {n.upper()} volume in scanner units, {ORIENTATION.split(':')[0]} voxel order"}
                for n in src.modalities}
    card = {
        "format_version": MODEL_CARD_VERSION,
        "created": utc_now(),
        "source": src.description,
        "saved_model": "saved_model",
        "signatures": {
            "serving_default": {
                "inputs": {"slices": {"shape": [None, h, w, src.channels], "dtype": "float32",
                                      "description": "preprocessed axial slices (see normalisation, input_size)"}},
                "outputs": {"probabilities": {"shape": [None, h, w, 1], "dtype": "float32",
                                              "description": "WMH probability per pixel"}},
            },
            "segment_volume": {
                "inputs": channels,
                "outputs": {"probabilities": {"shape": [None, None, None], "dtype": "float32",
                                              "description": "WMH probability per voxel, on the input grid"}},
            },
        },
        "orientation": ORIENTATION,
        "modalities": src.modalities,
        "normalisation": src.normalisation,
        "input_size": [h, w],
        "threshold": THRESHOLD,
        "tflite": {v: {"path": f"tflite/model_{v}.tflite", "signature": "serving_default",
                       "input_dtype": "float32", "output_dtype": "float32", "quantisation": TFLITE_DESCRIPTIONS[v]}
                   for v in variants},
        "calibration": calibration_desc if "int8" in variants else None,
        "training_config": src.config.to_dict() if src.config is not None else None,
        "data": None,
        "validation_metrics": None,
        "versions": {**package_versions(), "ai-edge-litert": _version("ai-edge-litert")},
    }
    if src.run_dir is not None:
        run = RunFolder(src.run_dir)
        if run.split.is_file():
            split = json.loads(run.split.read_text())
            card["data"] = {"dataset": src.config.data.path if src.config else None,
                            "subjects": {k: len(v) for k, v in split.items()}}
            if run_data is not None:
                card["data"]["sites"] = {k: sorted({s.site for s in v}) for k, v in run_data.items()}
        if run.summary.is_file():
            card["validation_metrics"] = run.read_summary()
    return card


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


# === Export ===


def export(
    model_or_run_dir,
    out_dir: str | Path,
    tflite: Sequence[str] | None = None,
    force: bool = False,
    tolerances: dict | None = None,
    calibration_data=None,
) -> ExportReport:
    """Export a generator as a SavedModel and TFLite variants, verify each, and write the model card.

    Args:
        model_or_run_dir: a run folder (``checkpoints/best.keras``, else ``last.keras``; its
            ``config.yaml``, ``split.json`` and ``summary.json`` feed calibration, verification and the
            model card), or a ``.keras`` checkpoint (inside ``<run>/checkpoints/`` the run is found). It is
            loaded and checked exactly as ``wmhkeras segment`` does (:func:`wmhkeras.inference.segment.load_segmenter`).
        out_dir: the export folder; must not exist or be empty unless ``force``.
        tflite: variants out of :data:`TFLITE_VARIANTS`. ``None`` (default): all four, but ``int8`` is
            skipped with a warning when no calibration data exists; asking for ``int8`` explicitly without
            calibration data is an error.
        force: replace a non-empty ``out_dir``.
        tolerances: overrides of :data:`DEFAULT_TOLERANCES`.
        calibration_data: int8 calibration slices instead of the run's training subjects: preprocessed
            slices ``(N, H, W, C)`` (array or ``.npy``), or a dataset (manifest CSV or folder) whose volumes
            are preprocessed with the model's settings.

    Returns:
        The :class:`ExportReport` (also written as ``export_report.json``); ``report.passed`` is False when
        an artifact is outside its tolerance (the files are written all the same, for inspection).

    Raises:
        InputError: missing, unreadable or foreign checkpoint; non-empty ``out_dir``; int8 without data.
        ConfigError: unknown variant or tolerance.
    """
    requested = parse_variants(tflite)
    limits = resolve_tolerances(tolerances)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, force)
    src = _resolve_source(model_or_run_dir)
    run_data = _run_data(src)
    variants = list(TFLITE_VARIANTS if requested is None else requested)
    skipped = {}
    calibration, calibration_desc = (None, None)
    if "int8" in variants:
        calibration, calibration_desc = _calibration_slices(calibration_data, src, run_data)
        if calibration is None:
            if requested is not None:
                raise InputError(f"{src.description}: int8 needs calibration slices and there are none: "
                                 "pass --calibration DATA, or leave int8 out of --tflite")
            log.warning("int8 skipped: %s", calibration_desc)
            skipped["int8"], variants = calibration_desc, [v for v in variants if v != "int8"]
    slices, volume, verification = _verification_data(src, run_data, calibration)

    created = [p for p in [out_dir.parent, *out_dir.parent.parents] if not p.exists()]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        report = _build(src, staging, out_dir, variants, limits, slices, volume, verification, calibration)
        report.skipped, report.calibration = skipped, calibration_desc or {}
        card = _model_card(src, variants, run_data, calibration_desc)
        card["verification"] = {"passed": report.passed, "report": "export_report.json"}
        atomic_write_json(staging / "model_card.json", card)
        atomic_write_json(staging / "export_report.json", report.to_dict())
        _commit(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for p in created:  # folders made for this export only
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise
    if report.passed:
        log.info("exported to %s, every artifact verified", out_dir)
    else:
        log.error("exported to %s, outside tolerance: %s", out_dir, ", ".join(report.failures))
    return report


def _build(src, staging, out_dir, variants, limits, slices, volume, verification, calibration) -> ExportReport:
    from wmhkeras.inference.segment import predict_volume, tflite_predict_fn

    ref, keras_ms = _timed(src.segmenter, slices)
    size = src.checkpoint.stat().st_size
    checks = [ArtifactCheck("keras", src.description, size, round(keras_ms, 3), 0.0, 1.0, {}, True)]

    sm_path = staging / "saved_model"
    log.info("writing the SavedModel")
    _write_saved_model(src, sm_path)
    loaded = tf.saved_model.load(str(sm_path))
    serve = loaded.signatures["serving_default"]
    out, ms = _timed(lambda x: serve(slices=tf.constant(x))["probabilities"], slices)
    checks.append(_check("saved_model", "saved_model", _tree_size(sm_path), ms, out, ref, limits["saved_model"]))

    segment = loaded.signatures["segment_volume"]
    inputs = {n: tf.constant(v, tf.float32) for n, v in zip(src.modalities, volume, strict=True)}
    segment(**inputs)  # warm-up
    t = time.perf_counter()
    vol_out = segment(**inputs)["probabilities"].numpy()
    ms = 1000 * (time.perf_counter() - t) / volume[0].shape[2]
    # The eager pipeline of `wmhkeras segment` (preprocess_volume -> Keras model -> restore_volume).
    vol_ref = predict_volume(src.segmenter, volume, batch_size=VOLUME_BATCH)
    checks.append(_check("segment_volume", "saved_model", None, ms, vol_out, vol_ref, limits["segment_volume"]))

    if variants:
        (staging / "tflite").mkdir()
    for v in variants:
        log.info("converting TFLite %s", v)
        path = staging / "tflite" / f"model_{v}.tflite"
        path.write_bytes(_convert_tflite(loaded, v, calibration))
        out, ms = _timed(tflite_predict_fn(path), slices)
        checks.append(_check(v, f"tflite/{path.name}", path.stat().st_size, ms, out, ref, limits[v]))
    return ExportReport(out_dir, src.description, utc_now(), checks, {}, verification, {})


def _commit(staging: Path, out_dir: Path) -> None:
    """Rename ``staging`` onto ``out_dir``; an existing folder (``force`` was checked) is replaced."""
    if out_dir.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-old-", dir=out_dir.parent))
        os.replace(out_dir, trash / "old")
        os.replace(staging, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out_dir)
