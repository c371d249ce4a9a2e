"""The SavedModel: written with two plain ``tf.function`` signatures, reloaded and checked.

* ``serving_default``: ``slices`` float32 ``(batch, H, W, C)``, preprocessed as in training
  (:func:`wmhkeras.data.preprocessing.preprocess_volume`) -> ``probabilities`` float32 ``(batch, H, W, 1)``.
* ``segment_volume``: ``flair`` (and ``t1`` for two-channel models) float32 ``[X, Y, Z]``, raw scanner
  values in canonical RAS+ voxel order (nibabel's ``as_closest_canonical``) -> ``probabilities``
  float32 ``[X, Y, Z]`` on the same grid. Normalisation and slice resizing run inside the graph through
  the same :func:`~wmhkeras.data.preprocessing.preprocess_volume` /
  :func:`~wmhkeras.data.preprocessing.restore_volume` that training and ``wmhkeras segment`` use, so
  preprocessing has one implementation.

Loading the SavedModel needs TensorFlow only: no wmhkeras, no Keras custom objects.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from wmhkeras.data.preprocessing import preprocess_volume, restore_volume
from wmhkeras.export.report import ArtifactCheck
from wmhkeras.export.source import ExportSource
from wmhkeras.export.verification import check_artifact, timed, tree_size
from wmhkeras.inference.predictor import predict_volume
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


def write_saved_model(src: ExportSource, path: Path) -> None:
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


def check_saved_model(loaded, src: ExportSource, path: Path, slices: np.ndarray, ref: np.ndarray,
                      volume: list[np.ndarray], limits: dict[str, dict[str, float]]) -> list[ArtifactCheck]:
    """Check both signatures of the reloaded SavedModel ``loaded`` (written at ``path``).

    ``serving_default`` against ``ref`` (the Keras model on ``slices``); ``segment_volume`` on the raw
    ``volume`` channels against the eager pipeline of ``wmhkeras segment`` (preprocess_volume -> Keras
    model -> restore_volume).
    """
    serve = loaded.signatures["serving_default"]
    out, ms = timed(lambda x: serve(slices=tf.constant(x))["probabilities"], slices)
    checks = [check_artifact("saved_model", SAVED_MODEL_NAME, tree_size(path), ms, out, ref, limits["saved_model"])]

    segment = loaded.signatures["segment_volume"]
    inputs = {n: tf.constant(v, tf.float32) for n, v in zip(src.modalities, volume, strict=True)}
    segment(**inputs)  # warm-up
    t = time.perf_counter()
    vol_out = segment(**inputs)["probabilities"].numpy()
    ms = 1000 * (time.perf_counter() - t) / volume[0].shape[2]
    vol_ref = predict_volume(src.segmenter, volume, batch_size=VOLUME_BATCH)
    checks.append(check_artifact("segment_volume", SAVED_MODEL_NAME, None, ms, vol_out, vol_ref,
                                 limits["segment_volume"]))
    return checks


def signatures(src: ExportSource) -> dict:
    """The signatures as the model card describes them."""
    h, w = src.input_size
    channels = {n: {"shape": [None, None, None], "dtype": "float32",
                    "description": f"raw {n.upper()} volume in scanner units, {ORIENTATION.split(':')[0]} voxel order"}
                for n in src.modalities}
    return {
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
    }
