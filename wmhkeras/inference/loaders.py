"""Loading a model source (:mod:`wmhkeras.inference.sources`) as a :class:`Segmenter`.

One loader per format: a ``.keras`` file or run checkpoint (:func:`wmhkeras.registration.load_model`),
an exported SavedModel (``serving_default`` signature) or an export's ``.tflite`` file (ai-edge-litert).
Each checks the model against the settings the source records. TensorFlow is imported inside the
functions, so importing this module is cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wmhkeras.data.preprocessing import preprocess_volume
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.inference.sources import ModelSpec, inspect_model
from wmhkeras.io.model_card import modalities_for

log = logging.getLogger(__name__)


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
    modalities = spec.modalities or modalities_for(in_shape[3], spec.path)
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
    """Load a model source (see :func:`~wmhkeras.inference.sources.inspect_model`) as a :class:`Segmenter`.

    ``.keras`` files load with ``safe_mode=True``, no ``custom_objects`` (every wmhkeras object is
    registered) and ``compile=False`` (the content loss's backbone weights are not needed).
    """
    spec = path if isinstance(path, ModelSpec) else inspect_model(path)
    loaders = {"saved_model": _load_saved_model, "tflite": _load_tflite}
    segmenter = loaders.get(spec.format, _load_keras)(spec)
    log.info("loaded %s model %s: modalities %s, normalisation %s, input %s", spec.format, spec.path,
             ",".join(segmenter.modalities), segmenter.normalisation, "x".join(map(str, segmenter.input_size)))
    return segmenter
