"""The SavedModel: written with two plain ``tf.function`` signatures, reloaded and checked.

* ``serving_default``: ``slices`` float32 ``(batch, H, W, C)``, preprocessed as in training
  (:func:`wmhkeras.data.preprocessing.preprocess_volume`) -> ``probabilities`` float32 ``(batch, H, W, 1)``;
  ``H, W`` are the model's ``input_size`` in ``fixed`` resampling and free (``None``) otherwise.
* ``segment_volume``: ``flair`` (and ``t1`` for FLAIR + T1 models) float32 ``[X, Y, Z]``, raw scanner
  values in canonical RAS+ voxel order (nibabel's ``as_closest_canonical``), and in ``spacing`` resampling
  ``spacing`` float32 ``[3]``, the voxel size in mm -> ``probabilities`` float32 ``[X, Y, Z]`` on the same
  grid. Normalisation, resampling and 2.5D context run inside the graph through the same
  :func:`~wmhkeras.data.preprocessing.preprocess_volume` /
  :func:`~wmhkeras.data.preprocessing.restore_volume` that training and ``wmhkeras segment`` use, so
  preprocessing has one implementation.

Loading the SavedModel needs TensorFlow only: no wmhkeras, no Keras custom objects.

The bfloat16 SavedModel (``saved_model_bf16/``) has the same two signatures, float32 in and out, around
the model rebuilt under the Keras ``mixed_bfloat16`` policy
(:func:`wmhkeras.inference.precision.bfloat16_model`: float32 variables, bfloat16 compute, the output
cast back to float32).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from wmhkeras.data.preprocessing import preprocess_volume, restore_volume, slices_per_modality
from wmhkeras.errors import WriteError
from wmhkeras.export.report import ArtifactCheck
from wmhkeras.export.source import ExportSource
from wmhkeras.export.verification import VerificationVolume, check_artifact, timed, tree_size
from wmhkeras.inference.loaders import cpu_threads
from wmhkeras.inference.precision import bfloat16_model
from wmhkeras.inference.predictor import predict_volume
from wmhkeras.io.files import tf_write_error, writing
from wmhkeras.io.model_card import ORIENTATION, SAVED_MODEL_FOLDERS

#: Folders of the SavedModels inside the export folder (float32; bfloat16 compute).
SAVED_MODEL_NAME = SAVED_MODEL_FOLDERS["float32"]
SAVED_MODEL_BF16_NAME = SAVED_MODEL_FOLDERS["bfloat16"]
#: Report names of each SavedModel's two signatures, by precision.
CHECK_NAMES = {"float32": ("saved_model", "segment_volume"), "bfloat16": ("saved_model_bf16", "segment_volume_bf16")}
#: Slices run through the network at once inside ``segment_volume`` (bounds its memory).
VOLUME_BATCH = 8


def _batched(net: Callable, out_shape, slices: tf.Tensor, batch: int = VOLUME_BATCH) -> tf.Tensor:
    """Run ``net`` (float32 slices -> float32 outputs of shape ``out_shape`` per slice) over ``slices
    (Z, H, W, C)`` ``batch`` slices at a time (graph-safe, bounded memory)."""
    n = tf.shape(slices)[0]
    padded = tf.pad(slices, [[0, (-n) % batch], [0, 0], [0, 0], [0, 0]])
    shape = tf.shape(padded)
    groups = tf.reshape(padded, tf.concat([[-1, batch], shape[1:]], axis=0))
    out = tf.map_fn(net, groups, fn_output_signature=tf.TensorSpec([batch, *out_shape], tf.float32),
                    parallel_iterations=1)
    return tf.reshape(out, tf.concat([[-1], tf.shape(out)[2:]], axis=0))[:n]


#: ``segment_volume`` per modalities and resampling: plain functions whose parameter names are the inputs.
_VOLUME_FNS = {
    (1, False): lambda run: lambda flair: run([flair], None),
    (2, False): lambda run: lambda flair, t1: run([flair, t1], None),
    (1, True): lambda run: lambda flair, spacing: run([flair], spacing),
    (2, True): lambda run: lambda flair, t1, spacing: run([flair, t1], spacing),
}


@contextlib.contextmanager
def tf_writing(path: Path) -> Iterator[None]:
    """Raise a full disk or a refused write inside the block as :class:`~wmhkeras.errors.WriteError` naming
    ``path``, whether Python (``OSError``) or TensorFlow's file system (an ``OpError`` such as
    ``ResourceExhaustedError`` naming the file and the reason, :func:`~wmhkeras.io.files.tf_write_error`)
    reports it."""
    try:
        with writing(path):
            yield
    except tf.errors.OpError as err:
        error = tf_write_error(err)
        if error is None:
            raise
        raise WriteError(path, error) from err


def write_saved_model(src: ExportSource, path: Path, precision: str = "float32") -> None:
    """Write the SavedModel with ``serving_default`` and ``segment_volume`` (plain tf.functions); with
    ``precision`` ``bfloat16`` around the model rebuilt under ``mixed_bfloat16`` (float32 in and out)."""
    model = src.model if precision == "float32" else bfloat16_model(src.model)
    c, names, out_shape = src.channels, src.modalities, src.model.outputs[0].shape[1:]
    (h, w), resampling, k = src.input_size or (None, None), src.resampling, src.context_slices

    def net(x):
        return tf.cast(model(x, training=False), tf.float32)  # no op in float32

    # autograph=False: no tensor-dependent Python control flow here, and tracing is much faster without it.
    @tf.function(input_signature=[tf.TensorSpec([None, h, w, c], tf.float32, name="slices")], autograph=False)
    def serving_default(slices):
        return {"probabilities": net(slices)}

    def segment(volumes, voxel_size):
        for name, other in zip(names[1:], volumes[1:], strict=True):
            tf.debugging.assert_equal(tf.shape(other), tf.shape(volumes[0]),
                                      message=f"{name} must have the FLAIR's shape")
        if voxel_size is not None:
            tf.debugging.assert_positive(voxel_size, message="spacing must be the voxel size in mm (> 0)")
        slices = preprocess_volume(volumes, method=src.normalisation, resampling=resampling,
                                   voxel_size=voxel_size, context=k)
        probabilities = restore_volume(_batched(net, out_shape, slices), tf.shape(volumes[0]), resampling=resampling,
                                       voxel_size=voxel_size)
        return {"probabilities": probabilities}

    with_spacing = resampling.mode == "spacing"
    spec = [tf.TensorSpec([None, None, None], tf.float32, name=n) for n in names]
    spec += [tf.TensorSpec([3], tf.float32, name="spacing")] if with_spacing else []
    segment_volume = tf.function(_VOLUME_FNS[len(names), with_spacing](segment), input_signature=spec,
                                 autograph=False)

    # No archive.track(model): the endpoints' traces capture the model's tf.Variables, which the archive
    # saves once; track() would add the keras.Variable wrappers too, and every weight would be stored twice
    # (keras-team/keras#23553: a 2x SavedModel, 2x variable memory in every consumer).
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serving_default", serving_default)
    archive.add_endpoint("segment_volume", segment_volume)
    with tf_writing(path):
        archive.write_out(str(path), verbose=False)


@dataclass(frozen=True)
class Reference:
    """The Keras model's outputs and times that every artifact is compared with: on the verification
    ``slices`` one at a time (``ms`` per slice), and through the eager pipeline of ``wmhkeras segment`` on
    the verification ``volume`` (``volume_ms`` per slice, batches of :data:`VOLUME_BATCH`)."""

    slices: np.ndarray
    out: np.ndarray
    ms: float
    volume: VerificationVolume
    volume_out: np.ndarray
    volume_ms: float


def keras_reference(src: ExportSource, slices: np.ndarray, volume: VerificationVolume) -> Reference:
    """Run the Keras model on ``slices`` (:func:`~wmhkeras.export.verification.timed`) and ``volume``
    (a first call, then a timed one)."""
    out, ms = timed(src.segmenter, slices)

    def pipeline():
        return predict_volume(src.segmenter, volume.channels, batch_size=VOLUME_BATCH, voxel_size=volume.voxel_size)

    pipeline()  # warm-up: the volume's shapes
    t = time.perf_counter()
    volume_out = pipeline()
    volume_ms = 1000 * (time.perf_counter() - t) / volume.channels[0].shape[2]
    return Reference(slices, out, ms, volume, volume_out, volume_ms)


def tf_runtime(precision: str = "float32") -> str:
    """What TensorFlow runs a model on here: ``TF GPU``, ``TF oneDNN`` (Intel's oneDNN kernels, on by
    default on x86 Linux unless ``TF_ENABLE_ONEDNN_OPTS=0``) or ``TF``; `` bf16`` for bfloat16 compute."""
    if tf.config.list_logical_devices("GPU"):
        name = "TF GPU"
    else:
        try:  # whether the oneDNN kernels are on (a private call: only the name in the table depends on it)
            from tensorflow.python.util import _pywrap_util_port

            name = "TF oneDNN" if _pywrap_util_port.IsMklEnabled() else "TF"
        except (ImportError, AttributeError):
            name = "TF"
    return name + (" bf16" if precision == "bfloat16" else "")


def tf_threads() -> Optional[int]:
    """CPU threads of TensorFlow's ops (``None`` on a GPU)."""
    return None if tf.config.list_logical_devices("GPU") else cpu_threads()


def check_saved_model(loaded, src: ExportSource, path: Path, ref: Reference, limits: dict[str, dict[str, float]],
                      name: str = SAVED_MODEL_NAME, precision: str = "float32") -> list[ArtifactCheck]:
    """Check both signatures of the reloaded SavedModel ``loaded`` (written at ``path``; ``name``: that path
    relative to the export folder, for the report; ``precision``: what it computes in, which names the
    checks, :data:`CHECK_NAMES`, and their tolerances).

    ``serving_default`` against ``ref.out`` (the Keras model on ``ref.slices``); ``segment_volume`` on the raw
    ``ref.volume`` channels against the eager pipeline of ``wmhkeras segment`` (preprocess_volume -> Keras
    model -> restore_volume).
    """
    names = CHECK_NAMES[precision]
    runtime, threads = tf_runtime(precision), tf_threads()
    serve = loaded.signatures["serving_default"]
    out, ms = timed(lambda x: serve(slices=tf.constant(x))["probabilities"], ref.slices)
    checks = [check_artifact(names[0], name, tree_size(path), ms, out, ref.out, limits[names[0]],
                             runtime=runtime, threads=threads, reference_ms=ref.ms)]

    segment = loaded.signatures["segment_volume"]
    inputs = volume_inputs(src, ref.volume)
    segment(**inputs)  # warm-up
    t = time.perf_counter()
    vol_out = segment(**inputs)["probabilities"].numpy()
    ms = 1000 * (time.perf_counter() - t) / ref.volume.channels[0].shape[2]
    checks.append(check_artifact(names[1], name, None, ms, vol_out, ref.volume_out, limits[names[1]],
                                 runtime=runtime, threads=threads, reference_ms=ref.volume_ms))
    return checks


def volume_inputs(src: ExportSource, volume: VerificationVolume) -> dict:
    """The keyword inputs of ``segment_volume`` for ``volume`` (``spacing`` in ``spacing`` resampling)."""
    inputs = {n: tf.constant(v, tf.float32) for n, v in zip(src.modalities, volume.channels, strict=True)}
    if src.resampling.mode == "spacing":
        inputs["spacing"] = tf.constant(volume.voxel_size, tf.float32)
    return inputs


def signatures(src: ExportSource) -> dict:
    """The signatures as the model card describes them (``None``: a free dimension)."""
    h, w = src.input_size or (None, None)
    r, k = src.resampling, src.context_slices
    grid = {"fixed": f"resized to input_size {h}x{w}",
            "spacing": f"resampled to {r.spacing and 'x'.join(f'{v:g}' for v in r.spacing)} mm pixels, then "
                       f"zero-padded (centred) to a multiple of {r.multiple}",
            "none": f"on the native grid, zero-padded (centred) to a multiple of {r.multiple}"}[r.mode]
    context = (f"; channel c * {slices_per_modality(k)} + j is modality c of slice z - {k} + j (edge slices repeated)"
               if k else "; one channel per modality")
    channels = {n: {"shape": [None, None, None], "dtype": "float32",
                    "description": f"raw {n.upper()} volume in scanner units, {ORIENTATION.split(':')[0]} voxel order"}
                for n in src.modalities}
    if r.mode == "spacing":
        channels["spacing"] = {"shape": [3], "dtype": "float32",
                               "description": "the volume's voxel size in mm along X, Y, Z (the RAS+ axes of the "
                                              "volume, e.g. nibabel header.get_zooms() of the canonical image)"}
    return {
        "serving_default": {
            "inputs": {"slices": {"shape": [None, h, w, src.channels], "dtype": "float32",
                                  "description": f"preprocessed axial slices (see normalisation, resample), {grid}"
                                                 f"{context}"}},
            "outputs": {"probabilities": {"shape": [None, h, w, 1], "dtype": "float32",
                                          "description": "WMH probability per pixel"}},
        },
        "segment_volume": {
            "inputs": channels,
            "outputs": {"probabilities": {"shape": [None, None, None], "dtype": "float32",
                                          "description": "WMH probability per voxel, on the input grid"}},
        },
    }
