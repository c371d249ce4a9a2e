"""Export a trained generator for deployment: a SavedModel for TensorFlow apps, and TFLite variants.

``export(model_or_run_dir, out_dir)`` writes (see ``docs/export.md``)::

    OUT_DIR/saved_model/             tf.saved_model.load(...) works without wmhkeras or Keras objects
      assets.extra/model_card.json   the card again, so the SavedModel folder alone carries it
    OUT_DIR/saved_model_bf16/        the same signatures computing in bfloat16 (when asked for, below)
    OUT_DIR/tflite/model_<v>.tflite  fp32, fp16, dynamic (int8 weights), int8 (full integer)
    OUT_DIR/model_card.json          signatures, preprocessing, intended use, input requirements, data, metrics
    OUT_DIR/export_report.json       how each artifact compares with the Keras model

With ``serving_version=N`` the SavedModel is written at ``OUT_DIR/<name>/<N>/`` instead (TensorFlow
Serving's layout, :mod:`~wmhkeras.export.serving`), with ``assets.extra/tf_serving_warmup_requests``.

The steps live beside this module: :mod:`~wmhkeras.export.options` (variants, tolerances, the output
folder), :mod:`~wmhkeras.export.source` (the model and its run folder), :mod:`~wmhkeras.export.verification`
(calibration and verification slices, the parity check), :mod:`~wmhkeras.export.saved_model` (the two
signatures), :mod:`~wmhkeras.export.tflite`, :mod:`~wmhkeras.export.serving`, :mod:`~wmhkeras.export.report`
and :mod:`~wmhkeras.export.card` (the :class:`wmhkeras.io.model_card.ModelCard`).

Every artifact is reloaded and run on slices held back from training before the export is accepted; the
tolerances are in :data:`~wmhkeras.export.options.DEFAULT_TOLERANCES`.

The bfloat16 SavedModel is written only when asked for (``saved_models=("float32", "bfloat16")``), and
then verified and reported like any artifact: what an export holds never depends on a timing. Its speed
against the float32 SavedModel on the verification slices (:func:`bf16_speedup`) is logged, judged by the
speed rule of ``segment --precision auto`` (:func:`wmhkeras.inference.precision.bfloat16_faster`); on a
machine that computes bfloat16 natively (:func:`wmhkeras.inference.precision.native_bfloat16`) a default
export logs how to ask for it.

Everything is built in a hidden folder beside ``out_dir`` (:func:`wmhkeras.io.files.staged_folder`) and
renamed onto it at the end, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from wmhkeras.errors import InputError
from wmhkeras.export.card import build_card, find_holdout_summary, read_card_info, write_card
from wmhkeras.export.options import (
    OUT_DIR_HINT,
    TFLITE_VARIANTS,
    check_out_dir,
    check_serving_precisions,
    parse_saved_models,
    parse_variants,
    resolve_tolerances,
)
from wmhkeras.export.report import REPORT_NAME, ArtifactCheck, ExportReport
from wmhkeras.export.saved_model import (
    SAVED_MODEL_BF16_NAME,
    SAVED_MODEL_NAME,
    Reference,
    check_saved_model,
    keras_reference,
    signatures,
    tf_runtime,
    tf_threads,
    tf_writing,
    write_saved_model,
)
from wmhkeras.export.serving import serving_layout, write_warmup
from wmhkeras.export.source import ExportSource, RunSubjects, resolve_source, run_subjects
from wmhkeras.export.tflite import tflite_entries, write_tflite_variants
from wmhkeras.export.verification import VerificationVolume, calibration_slices, verification_data
from wmhkeras.inference.precision import bfloat16_faster, native_bfloat16
from wmhkeras.io.files import StagedFolder, atomic_write_json, staged_folder
from wmhkeras.io.model_card import ServingLayout
from wmhkeras.io.provenance import utc_now

log = logging.getLogger(__name__)

#: Name of the bfloat16 SavedModel in the report (its first check, ``serving_default``).
BF16_ARTIFACT = "saved_model_bf16"
#: What each SavedModel computes in, for the model card's ``saved_models``.
SAVED_MODEL_COMPUTE = {
    "float32": "float32",
    "bfloat16": "bfloat16 (the model under the Keras mixed_bfloat16 policy: float32 weights, inputs and outputs)",
}


def export(model_or_run_dir: str | Path, out_dir: str | Path, tflite: Sequence[str] | None = None, force: bool = False,
           tolerances: dict | None = None, calibration_data=None, *, card_info: str | Path | None = None,
           metrics: str | Path | None = None, serving_version: int | None = None, serving_name: str | None = None,
           saved_models: Sequence[str] | str | None = None) -> ExportReport:
    """Export a generator as a SavedModel and TFLite variants, verify each, and write the model card.

    Args:
        model_or_run_dir: a run folder (``checkpoints/best.keras``, else ``last.keras``; its ``config.yaml``,
            ``split.json`` and ``summary.json`` feed calibration, verification and the card), or a ``.keras``
            file (inside ``<run>/checkpoints/`` the run is found), loaded as ``wmhkeras segment`` does.
        out_dir: the export folder; must not exist or be empty unless ``force``.
        tflite: variants out of :data:`~wmhkeras.export.options.TFLITE_VARIANTS`. ``None`` (default): all
            four, ``int8`` skipped with a warning without calibration data (an error when asked for).
        force: replace a non-empty ``out_dir``.
        tolerances: overrides of :data:`~wmhkeras.export.options.DEFAULT_TOLERANCES`.
        calibration_data: int8 calibration data instead of the run's training subjects: preprocessed slices
            ``(N, H, W, C)`` (array or ``.npy``), or a dataset (manifest CSV or folder).
        card_info, metrics: the card's texts, a YAML/JSON file (:func:`~wmhkeras.export.card.read_card_info`),
            and a ``wmhkeras evaluate`` output of the hold-out subjects (default: ``RUN/evaluate/summary.json``).
        serving_version, serving_name: write the SavedModel at ``out_dir/<name>/<version>/`` (TensorFlow
            Serving's layout, with warm-up requests; name default: ``out_dir``'s) instead of ``saved_model/``.
        saved_models: SavedModel precisions out of ``float32, bfloat16`` (float32 is always written).
            ``None`` (default): float32 alone. With bfloat16, a bfloat16 one at ``out_dir/saved_model_bf16/``
            too, verified like any artifact. Not with ``serving_version``.

    Returns:
        The :class:`~wmhkeras.export.report.ExportReport` (also ``export_report.json``); ``passed`` is False
        when an artifact is outside its tolerance (the files are written all the same, for inspection).

    Raises:
        InputError: missing, unreadable or foreign checkpoint; non-empty ``out_dir``; int8 without data;
            unreadable card info or ``metrics``. ConfigError: unknown variant, SavedModel precision or tolerance;
            bad card info or serving; bfloat16 asked for with ``serving_version``.
        WriteError: a file of the export cannot be written (a full disk, no permission); nothing is left
            (no export folder, no staged folder).
    """
    requested = parse_variants(tflite)
    precisions = parse_saved_models(saved_models)
    limits = resolve_tolerances(tolerances)
    out_dir = check_out_dir(out_dir, force)
    info = read_card_info(card_info)
    serving = None if serving_version is None else serving_layout(serving_name or out_dir.name, serving_version)
    bf16 = _plan_bfloat16(precisions, serving)
    src = resolve_source(model_or_run_dir)
    holdout = find_holdout_summary(metrics, src.run_dir)
    subjects = run_subjects(src)
    variants, skipped, calibration, calibration_desc = _plan_variants(requested, calibration_data, src, subjects)
    slices, volume, verification = verification_data(src, subjects, calibration)
    with _export_folder(out_dir, force) as staged:
        saved_model = serving.path if serving else SAVED_MODEL_NAME
        checks = _write_artifacts(src, staged.path, saved_model, variants, limits, slices, volume, calibration, serving,
                                  bf16)
        report = ExportReport(out_dir, src.description, utc_now(), checks, skipped, verification,
                              calibration_desc or {})
        _write_card(staged.path, src, checks, passed=report.passed, variants=variants, subjects=subjects,
                    calibration=calibration_desc, info=info, holdout=holdout, saved_model=saved_model, serving=serving)
        atomic_write_json(staged.path / REPORT_NAME, report.to_dict())
        staged.commit()
    (log.info if report.passed else log.error)("exported to %s, %s", out_dir, "every artifact verified" if report.passed
                                               else f"outside tolerance: {', '.join(report.failures)}")
    return report


def _write_card(folder: Path, src: ExportSource, checks, *, passed: bool, variants, subjects, calibration, info,
                holdout, saved_model: str, serving) -> None:
    """The export's model card, naming each SavedModel written (by precision) and what it computes in."""
    written = {"float32": saved_model} | ({"bfloat16": SAVED_MODEL_BF16_NAME}
                                          if any(c.name == BF16_ARTIFACT for c in checks) else {})
    write_card(build_card(src, variants=variants, subjects=subjects, calibration=calibration, passed=passed,
                          info=info, holdout_summary=holdout, saved_model=saved_model, signatures=signatures(src),
                          serving=serving, tflite=_tflite_entries(src, variants),
                          saved_models={p: {"path": path, "compute": SAVED_MODEL_COMPUTE[p]} for p, path in written.items()}),
               folder)


def _plan_variants(requested: tuple[str, ...] | None, calibration_data, src: ExportSource,
                   subjects: RunSubjects | None) -> tuple[list[str], dict[str, str], np.ndarray | None, dict | str | None]:
    """``(variants, skipped, calibration slices, calibration description)``.

    Without calibration data, int8 is skipped (the description is then the reason) if it came from the
    default set, and refused if it was asked for.
    """
    variants = list(TFLITE_VARIANTS if requested is None else requested)
    if "int8" not in variants:
        return variants, {}, None, None
    calibration, desc = calibration_slices(calibration_data, src, subjects)
    if calibration is not None:
        return variants, {}, calibration, desc
    if requested is not None:
        raise InputError(f"{src.description}: int8 needs calibration slices and there are none: "
                         "pass --calibration DATA, or leave int8 out of --tflite")
    log.warning("int8 skipped: %s", desc)
    return [v for v in variants if v != "int8"], {"int8": desc}, None, desc


def _plan_bfloat16(precisions: tuple[str, ...] | None, serving: ServingLayout | None) -> bool:
    """Whether the bfloat16 SavedModel is written: when ``precisions`` lists it. Decided before any work.

    Raises:
        ConfigError: bfloat16 asked for in the TensorFlow Serving layout.
    """
    check_serving_precisions(precisions, serving is not None)
    if precisions is not None and "bfloat16" in precisions:
        return True
    native, why = native_bfloat16()
    if native and serving is None:
        log.info("bfloat16 SavedModel: not asked for (%s; --saved-model float32,bfloat16 adds one)", why)
    return False


def bf16_speedup(float32: ArtifactCheck, bfloat16: ArtifactCheck) -> float:
    """How many times as fast the bfloat16 SavedModel is as the float32 one: their median times of one
    verification slice (``serving_default``, the table's ms/slice)."""
    return float32.latency_ms / max(bfloat16.latency_ms, 1e-9)


def bf16_speed_line(float32: ArtifactCheck, bfloat16: ArtifactCheck) -> str:
    """The log line on the bfloat16 SavedModel's speed: its figures, and whether it passes the speed rule
    (:func:`wmhkeras.inference.precision.bfloat16_faster`) on this machine."""
    ratio = bf16_speedup(float32, bfloat16)
    verdict = "faster" if bfloat16_faster(ratio) else "not faster"
    return (f"bfloat16 SavedModel: {ratio:.2f}x the float32 SavedModel ({bfloat16.latency_ms:.2f} vs "
            f"{float32.latency_ms:.2f} ms/slice), {verdict} on this machine")


def _tflite_entries(src: ExportSource, variants: Sequence[str]) -> dict:
    """The card's ``tflite`` section: each variant with the input shape of ``serving_default``."""
    return tflite_entries(variants, signatures(src)["serving_default"]["inputs"]["slices"]["shape"])


@contextlib.contextmanager
def _export_folder(out_dir: Path, force: bool) -> Iterator[StagedFolder]:
    """:func:`~wmhkeras.io.files.staged_folder` for ``out_dir``; if the export fails, the parent folders
    made for it alone are removed as well."""
    created = [p for p in [out_dir.parent, *out_dir.parent.parents] if not p.exists()]
    try:
        with staged_folder(out_dir, replace=force, hint=OUT_DIR_HINT) as staged:
            yield staged
    except BaseException:
        for p in created:
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise


def _write_artifacts(src: ExportSource, folder: Path, saved_model: str, variants: Sequence[str],
                     limits: dict[str, dict[str, float]], slices: np.ndarray, volume: VerificationVolume,
                     calibration: np.ndarray | None, serving: ServingLayout | None,
                     bf16: bool) -> list[ArtifactCheck]:
    """The Keras model as the reference, then the SavedModel (at ``folder/saved_model``, with the serving
    warm-up requests when ``serving``), the bfloat16 SavedModel when ``bf16``, and each TFLite variant,
    written and checked."""
    log.info("verification: the Keras model on %d held-back slices, then each artifact against it", len(slices))
    ref = keras_reference(src, slices, volume)
    size = src.checkpoint.stat().st_size
    checks = [ArtifactCheck("keras", src.description, size, round(ref.ms, 3), 0.0, 1.0, {}, True,
                            tf_runtime(), tf_threads(), 1.0)]
    path = folder / saved_model
    log.info("writing the SavedModel")
    write_saved_model(src, path)
    if serving is not None:
        with tf_writing(path):
            write_warmup(path, src, serving.name)
    loaded = tf.saved_model.load(str(path))
    checks += check_saved_model(loaded, src, path, ref, limits, saved_model)
    if bf16:
        checks += _bfloat16_saved_model(src, folder, ref, limits, checks[1])
    checks += write_tflite_variants(loaded, folder, variants, calibration, slices, ref.out, limits, ref.ms)
    if variants and src.input_size is None:
        log.info("TFLite files take slices of any height and width (the signature runner resizes per call)")
    return checks


def _bfloat16_saved_model(src: ExportSource, folder: Path, ref: Reference, limits: dict[str, dict[str, float]],
                          float32: ArtifactCheck) -> list[ArtifactCheck]:
    """Write and check ``folder/saved_model_bf16``; log its speed against the ``float32`` SavedModel (its
    check)."""
    path = folder / SAVED_MODEL_BF16_NAME
    log.info("writing the bfloat16 SavedModel")
    write_saved_model(src, path, "bfloat16")
    checks = check_saved_model(tf.saved_model.load(str(path)), src, path, ref, limits, SAVED_MODEL_BF16_NAME,
                               "bfloat16")
    log.info("%s", bf16_speed_line(float32, checks[0]))
    return checks
