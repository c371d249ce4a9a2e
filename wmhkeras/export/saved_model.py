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
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from wmhkeras.data.preprocessing import preprocess_volume, restore_volume
from wmhkeras.errors import WriteError
from wmhkeras.export.report import ArtifactCheck
from wmhkeras.export.source import ExportSource
from wmhkeras.export.verification import VerificationVolume, check_artifact, timed, tree_size
from wmhkeras.inference.predictor import predict_volume
from wmhkeras.io.files import tf_write_error, writing
from wmhkeras.io.model_card import ORIENTATION

#: Folder of the SavedModel inside the export folder.
SAVED_MODEL_NAME = "saved_model"
#: Slices run through the network at once inside ``segment_volume`` (bounds its memory).
VOLUME_BATCH = 8


def _batched(model: keras.Model, slices: tf.Tensor, batch: int = VOLUME_BATCH) -> tf.Tensor:
    """Run ``model`` over ``slices (Z, H, W, C)`` ``batch`` slices at a time (graph-safe, bounded memory)."""
    n = tf.shape(slices)[0]
    padded = tf.pad(slices, [[0, (-n) % batch], [0, 0], [0, 0], [0, 0]])
    shape = tf.shape(padded)
    groups = tf.reshape(padded, tf.concat([[-1, batch], shape[1:]], axis=0))
    out = tf.map_fn(lambda b: model(b, training=False), groups,
                    fn_output_signature=tf.TensorSpec([batch, *model.outputs[0].shape[1:]], tf.float32),
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


def write_saved_model(src: ExportSource, path: Path) -> None:
    """Write the SavedModel with ``serving_default`` and ``segment_volume`` (plain tf.functions)."""
    model, c, names = src.model, src.channels, src.modalities
    (h, w), resampling, k = src.input_size or (None, None), src.resampling, src.context_slices

    # autograph=False: no tensor-dependent Python control flow here, and tracing is much faster without it.
    @tf.function(input_signature=[tf.TensorSpec([None, h, w, c], tf.float32, name="slices")], autograph=False)
    def serving_default(slices):
        return {"probabilities": model(slices, training=False)}

    def segment(volumes, voxel_size):
        for name, other in zip(names[1:], volumes[1:], strict=True):
            tf.debugging.assert_equal(tf.shape(other), tf.shape(volumes[0]),
                                      message=f"{name} must have the FLAIR's shape")
        if voxel_size is not None:
            tf.debugging.assert_positive(voxel_size, message="spacing must be the voxel size in mm (> 0)")
        slices = preprocess_volume(volumes, method=src.normalisation, resampling=resampling,
                                   voxel_size=voxel_size, context=k)
        probabilities = restore_volume(_batched(model, slices), tf.shape(volumes[0]), resampling=resampling,
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


def check_saved_model(loaded, src: ExportSource, path: Path, slices: np.ndarray, ref: np.ndarray,
                      volume: VerificationVolume, limits: dict[str, dict[str, float]],
                      name: str = SAVED_MODEL_NAME) -> list[ArtifactCheck]:
    """Check both signatures of the reloaded SavedModel ``loaded`` (written at ``path``; ``name``: that path
    relative to the export folder, for the report).

    ``serving_default`` against ``ref`` (the Keras model on ``slices``); ``segment_volume`` on the raw
    ``volume`` channels against the eager pipeline of ``wmhkeras segment`` (preprocess_volume -> Keras
    model -> restore_volume).
    """
    serve = loaded.signatures["serving_default"]
    out, ms = timed(lambda x: serve(slices=tf.constant(x))["probabilities"], slices)
    checks = [check_artifact("saved_model", name, tree_size(path), ms, out, ref, limits["saved_model"])]

    segment = loaded.signatures["segment_volume"]
    inputs = volume_inputs(src, volume)
    segment(**inputs)  # warm-up
    t = time.perf_counter()
    vol_out = segment(**inputs)["probabilities"].numpy()
    ms = 1000 * (time.perf_counter() - t) / volume.channels[0].shape[2]
    vol_ref = predict_volume(src.segmenter, volume.channels, batch_size=VOLUME_BATCH, voxel_size=volume.voxel_size)
    checks.append(check_artifact("segment_volume", name, None, ms, vol_out, vol_ref,
                                 limits["segment_volume"]))
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
    context = (f"; channel c * {2 * k + 1} + j is modality c of slice z - {k} + j (edge slices repeated)"
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
