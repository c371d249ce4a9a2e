"""TFLite variants, converted from the reloaded SavedModel (the artifact itself, not the Keras model) and checked.

The ``serving_default`` signature keeps the SavedModel's input shape: for a model that takes slices of any
size (``spacing`` and ``none`` resampling) height and width stay dynamic (``shape_signature``
``[-1, -1, -1, C]``); every variant, int8 included, converts so, and LiteRT's signature runner resizes the
input on each call (checked in ``tests/export/test_modes.py`` on two slice sizes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from wmhkeras.export.options import TFLITE_DESCRIPTIONS
from wmhkeras.export.report import ArtifactCheck
from wmhkeras.export.verification import check_artifact, timed
from wmhkeras.inference.loaders import tflite_predict_fn
from wmhkeras.io.files import atomic_path, make_folder

log = logging.getLogger(__name__)

#: Folder of the TFLite files inside the export folder.
TFLITE_DIR = "tflite"


def tflite_name(variant: str) -> str:
    """Path of a variant's file inside the export folder."""
    return f"{TFLITE_DIR}/model_{variant}.tflite"


def convert_tflite(loaded, variant: str, calibration: np.ndarray | None) -> bytes:
    """Convert the reloaded SavedModel's ``serving_default`` signature to one TFLite variant."""
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


def write_tflite_variants(loaded, folder: Path, variants: Sequence[str], calibration: np.ndarray | None,
                          slices: np.ndarray, ref: np.ndarray, limits: dict[str, dict[str, float]],
                          reference_ms: float | None = None) -> list[ArtifactCheck]:
    """Write each variant under ``folder`` and check it against ``ref`` (the Keras model on ``slices``, in
    ``reference_ms`` per slice), run as ``wmhkeras segment`` runs it
    (:func:`~wmhkeras.inference.loaders.tflite_predict_fn`: LiteRT with its XNNPACK delegate, on
    :func:`~wmhkeras.inference.loaders.cpu_threads` threads)."""
    if variants:
        make_folder(folder / TFLITE_DIR)
    checks = []
    for v in variants:
        log.info("converting TFLite %s", v)
        path = folder / tflite_name(v)
        model = convert_tflite(loaded, v, calibration)
        with atomic_path(path) as tmp:
            tmp.write_bytes(model)
        runner = tflite_predict_fn(path)
        out, ms = timed(runner, slices)
        checks.append(check_artifact(v, tflite_name(v), path.stat().st_size, ms, out, ref, limits[v],
                                     runtime=runner.runtime, threads=runner.threads, reference_ms=reference_ms))
    return checks


def tflite_entries(variants: Sequence[str], input_shape: Sequence) -> dict:
    """The TFLite files as the model card describes them; ``input_shape`` of ``slices`` (``None``: any
    size, which LiteRT's signature runner takes by resizing the input tensor on each call)."""
    return {v: {"path": tflite_name(v), "signature": "serving_default", "input_shape": list(input_shape),
                "input_dtype": "float32", "output_dtype": "float32", "quantisation": TFLITE_DESCRIPTIONS[v]}
            for v in variants}
