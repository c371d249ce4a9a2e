"""Export a trained generator for deployment: a SavedModel for TensorFlow apps, and TFLite variants.

``export(model_or_run_dir, out_dir)`` writes (see ``docs/export.md``)::

    OUT_DIR/saved_model/             tf.saved_model.load(...) works without wmhkeras or Keras objects
    OUT_DIR/tflite/model_<v>.tflite  fp32, fp16, dynamic (int8 weights), int8 (full integer)
    OUT_DIR/model_card.json          signatures, orientation, preprocessing, training config, data, metrics
    OUT_DIR/export_report.json       how each artifact compares with the Keras model

The steps live beside this module: :mod:`~wmhkeras.export.options` (variants, tolerances, the output
folder), :mod:`~wmhkeras.export.source` (the model and its run folder), :mod:`~wmhkeras.export.verification`
(calibration and verification slices, the parity check), :mod:`~wmhkeras.export.saved_model` (the two
signatures), :mod:`~wmhkeras.export.tflite` and :mod:`~wmhkeras.export.report`; the model card is a
:class:`wmhkeras.io.model_card.ModelCard`.

Every artifact is reloaded and run on slices held back from training before the export is accepted; the
tolerances are in :data:`~wmhkeras.export.options.DEFAULT_TOLERANCES`. Everything is built in a hidden
folder beside ``out_dir`` (:func:`wmhkeras.io.files.staged_folder`) and renamed onto it at the end, so a
failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from wmhkeras.errors import InputError
from wmhkeras.export.options import (
    OUT_DIR_HINT,
    TFLITE_VARIANTS,
    check_out_dir,
    parse_variants,
    resolve_tolerances,
)
from wmhkeras.export.report import REPORT_NAME, ArtifactCheck, ExportReport
from wmhkeras.export.saved_model import SAVED_MODEL_NAME, check_saved_model, signatures, write_saved_model
from wmhkeras.export.source import ExportSource, RunSubjects, resolve_source, run_subjects
from wmhkeras.export.tflite import tflite_entries, write_tflite_variants
from wmhkeras.export.verification import VerificationVolume, calibration_slices, timed, verification_data
from wmhkeras.io.files import StagedFolder, atomic_write_json, staged_folder
from wmhkeras.io.model_card import MODEL_CARD_NAME, MODEL_CARD_VERSION, ORIENTATION, THRESHOLD, ModelCard
from wmhkeras.io.provenance import package_versions, utc_now

log = logging.getLogger(__name__)


def export(
    model_or_run_dir: str | Path,
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
            loaded and checked exactly as ``wmhkeras segment`` does (:func:`wmhkeras.inference.loaders.load_segmenter`).
        out_dir: the export folder; must not exist or be empty unless ``force``.
        tflite: variants out of :data:`~wmhkeras.export.options.TFLITE_VARIANTS`. ``None`` (default): all
            four, but ``int8`` is skipped with a warning when no calibration data exists; asking for ``int8``
            explicitly without calibration data is an error.
        force: replace a non-empty ``out_dir``.
        tolerances: overrides of :data:`~wmhkeras.export.options.DEFAULT_TOLERANCES`.
        calibration_data: int8 calibration slices instead of the run's training subjects: preprocessed
            slices ``(N, H, W, C)`` (array or ``.npy``), or a dataset (manifest CSV or folder) whose volumes
            are preprocessed with the model's settings.

    Returns:
        The :class:`~wmhkeras.export.report.ExportReport` (also written as ``export_report.json``);
        ``report.passed`` is False when an artifact is outside its tolerance (the files are written all
        the same, for inspection).

    Raises:
        InputError: missing, unreadable or foreign checkpoint; non-empty ``out_dir``; int8 without data.
        ConfigError: unknown variant or tolerance.
    """
    requested = parse_variants(tflite)
    limits = resolve_tolerances(tolerances)
    out_dir = check_out_dir(out_dir, force)
    src = resolve_source(model_or_run_dir)
    subjects = run_subjects(src)
    variants, skipped, calibration, calibration_desc = _plan_variants(requested, calibration_data, src, subjects)
    slices, volume, verification = verification_data(src, subjects, calibration)
    with _export_folder(out_dir, force) as staged:
        checks = _write_artifacts(src, staged.path, variants, limits, slices, volume, calibration)
        report = ExportReport(out_dir, src.description, utc_now(), checks, skipped, verification,
                              calibration_desc or {})
        card = _model_card(src, variants, subjects, calibration_desc, report.passed)
        card.write(staged.path / MODEL_CARD_NAME)
        atomic_write_json(staged.path / REPORT_NAME, report.to_dict())
        staged.commit()
    if report.passed:
        log.info("exported to %s, every artifact verified", out_dir)
    else:
        log.error("exported to %s, outside tolerance: %s", out_dir, ", ".join(report.failures))
    return report


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


def _write_artifacts(src: ExportSource, folder: Path, variants: Sequence[str], limits: dict[str, dict[str, float]],
                     slices: np.ndarray, volume: VerificationVolume, calibration: np.ndarray | None) -> list[ArtifactCheck]:
    """The Keras model as the reference, then the SavedModel and each TFLite variant, written and checked."""
    ref, keras_ms = timed(src.segmenter, slices)
    size = src.checkpoint.stat().st_size
    checks = [ArtifactCheck("keras", src.description, size, round(keras_ms, 3), 0.0, 1.0, {}, True)]
    path = folder / SAVED_MODEL_NAME
    log.info("writing the SavedModel")
    write_saved_model(src, path)
    loaded = tf.saved_model.load(str(path))
    checks += check_saved_model(loaded, src, path, slices, ref, volume, limits)
    checks += write_tflite_variants(loaded, folder, variants, calibration, slices, ref, limits)
    if variants and src.input_size is None:
        log.info("TFLite files take slices of any height and width (the signature runner resizes per call)")
    return checks


def _model_card(src: ExportSource, variants: Sequence[str], subjects: RunSubjects | None,
                calibration_desc: dict | str | None, passed: bool) -> ModelCard:
    run = src.run
    return ModelCard(
        modalities=tuple(src.modalities),
        normalisation=src.normalisation,
        input_size=src.input_size,
        resample=src.segmenter.settings["resample"],
        context_slices=src.context_slices,
        format_version=MODEL_CARD_VERSION,
        created=utc_now(),
        source=src.description,
        saved_model=SAVED_MODEL_NAME,
        signatures=signatures(src),
        orientation=ORIENTATION,
        threshold=THRESHOLD,
        tflite=tflite_entries(variants, signatures(src)["serving_default"]["inputs"]["slices"]["shape"]),
        calibration=calibration_desc if "int8" in variants else None,
        training_config=src.config.to_dict() if src.config is not None else None,
        data=_card_data(src, subjects),
        validation_metrics=run.read_summary().to_dict() if run is not None and run.summary.is_file() else None,
        versions=package_versions(extra=("ai-edge-litert",)),
        verification={"passed": passed, "report": REPORT_NAME},
    )


def _card_data(src: ExportSource, subjects: RunSubjects | None) -> dict | None:
    """The dataset, subjects per split set and their sites, for a run folder with a ``split.json``."""
    run = src.run
    if run is None or not run.split.is_file():
        return None
    data = {"dataset": src.config.data.path if src.config else None, "subjects": run.read_split().counts()}
    if subjects is not None:
        data["sites"] = {k: sorted({s.site for s in v}) for k, v in subjects.items()}
    return data
