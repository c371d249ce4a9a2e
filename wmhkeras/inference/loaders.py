"""Loading a model source (:mod:`wmhkeras.inference.sources`) as a :class:`Segmenter`.

One loader per format: a ``.keras`` file or run checkpoint (:func:`wmhkeras.registration.load_model`),
an exported SavedModel (``serving_default`` signature) or an export's ``.tflite`` file (ai-edge-litert).
Each checks the model against the settings the source records. TensorFlow is imported inside the
functions, so importing this module is cheap.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from wmhkeras.data.preprocessing import Resampling, input_channels, preprocess_volume, restore_volume
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.inference.card_checks import check_skull_stripped, check_voxel_size
from wmhkeras.inference.sources import ModelSpec, inspect_model, modalities_of
from wmhkeras.io.model_card import ModelCard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segmenter:
    """A loaded model plus the preprocessing it was trained with.

    ``segmenter(slices)`` maps preprocessed float32 slices ``(batch, H, W, C)`` (see :meth:`preprocess`)
    to probabilities ``(batch, H, W, 1)``. ``predict_fn`` is the raw callable (TensorFlow tensors in
    and out); tests and the export may build a Segmenter around any such function.
    ``resampling`` (default: ``fixed`` at ``input_size``) maps a volume's slices to the model's grid and
    back; ``context_slices`` is the ``k`` of the 2.5D input (``C = len(modalities) * (2k + 1)``).
    ``input_size`` is the model's slice size in ``fixed`` mode and ``None`` otherwise. ``card``: the model
    card of an exported model (``None`` for Keras sources), for :meth:`warn_voxel_size`. Frozen: a
    segmenter at another precision is a new one (:func:`~wmhkeras.inference.precision.decide_precision`).
    """

    predict_fn: Callable
    modalities: tuple[str, ...]
    normalisation: str
    input_size: Optional[tuple[int, int]] = None
    source: str = ""
    #: The Keras model or loaded SavedModel, kept so that its variables stay alive.
    model: Any = None
    resampling: Optional[Resampling] = None
    context_slices: int = 0
    card: Optional[ModelCard] = None
    #: The precision in use (:func:`wmhkeras.inference.precision.decide_precision`); ``None`` until decided.
    precision: Optional[dict] = None

    def __post_init__(self):
        if self.resampling is None:
            if self.input_size is None:
                raise ConfigError("a Segmenter needs an input_size or a resampling")
            object.__setattr__(self, "resampling", Resampling("fixed", tuple(self.input_size)))
        object.__setattr__(self, "input_size", self.resampling.input_size if self.resampling.mode == "fixed" else None)

    @property
    def channels(self) -> int:
        """Input channels of the model: each modality at ``2 * context_slices + 1`` slices."""
        return input_channels(len(self.modalities), self.context_slices)

    @property
    def settings(self) -> dict:
        """The preprocessing as ``segment.json`` and the model card record it."""
        return {"modalities": list(self.modalities), "normalisation": self.normalisation,
                "input_size": None if self.input_size is None else list(self.input_size),
                "resample": self.resampling.record(), "context_slices": self.context_slices}

    def __call__(self, slices) -> np.ndarray:
        return np.asarray(self.predict_fn(slices), dtype=np.float32)

    def preprocess(self, images: Sequence[np.ndarray], voxel_size: Optional[Sequence[float]] = None):
        """One ``[X, Y, Z]`` array per modality (in :attr:`modalities` order) -> slices ``(Z, H, W, C)``.

        ``voxel_size``: the volume's voxel size in mm along the canonical axes (``Volume.spacing``);
        needed in ``spacing`` mode only.
        """
        if len(images) != len(self.modalities):
            raise InputError(f"the model takes {len(self.modalities)} modalities ({', '.join(self.modalities)}), "
                             f"got {len(images)}")
        self._check_voxel_size(voxel_size)
        return preprocess_volume(images, method=self.normalisation, resampling=self.resampling,
                                 voxel_size=voxel_size, context=self.context_slices)

    def restore(self, probabilities, volume_shape: Sequence[int], voxel_size: Optional[Sequence[float]] = None):
        """Model outputs ``(Z, H, W, 1)`` -> probabilities ``[X, Y, Z]`` on the volume's grid (a tensor)."""
        self._check_voxel_size(voxel_size)
        return restore_volume(probabilities, volume_shape, resampling=self.resampling, voxel_size=voxel_size)

    def warn_voxel_size(self, voxel_size: Sequence[float], subject: str = "") -> list[str]:
        """Warn (log) when ``voxel_size`` (mm, canonical X, Y, Z) is far from the training data's voxel size
        in the model card (:func:`wmhkeras.inference.card_checks.check_voxel_size`); returns the problems."""
        return check_voxel_size(self.card, voxel_size, subject or self.source)

    def warn_skull(self, flair: np.ndarray, voxel_volume_ml: float, subject: str = "") -> Optional[str]:
        """Warn (log) when the card says skull-stripped training scans and ``flair`` looks like a whole
        head (:func:`wmhkeras.inference.card_checks.check_skull_stripped`); returns the problem."""
        return check_skull_stripped(self.card, flair, voxel_volume_ml, subject or self.source)

    def _check_voxel_size(self, voxel_size) -> None:
        if self.resampling.mode == "spacing" and voxel_size is None:
            raise InputError(f"{self.source or 'the model'}: resample 'spacing' needs the volume's voxel size in mm")


def keras_predict_fn(model, input_shape):
    """Float32 slices of ``input_shape`` (any batch) -> the Keras model's probabilities, traced once."""
    import tensorflow as tf

    # A fixed signature (batch left free) traces once: the last, smaller batch reuses the graph.
    @tf.function(input_signature=[tf.TensorSpec((None, *input_shape), tf.float32)])
    def predict(x):
        return model(x, training=False)

    return predict


def cpu_threads() -> int:
    """Threads for a CPU runtime besides TensorFlow (LiteRT): TensorFlow's intra-op setting when ``--threads``
    set one, else every CPU this process may run on."""
    tf = sys.modules.get("tensorflow")
    if tf is not None and tf.config.threading.get_intra_op_parallelism_threads() > 0:
        return tf.config.threading.get_intra_op_parallelism_threads()
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def tflite_predict_fn(path: Path, num_threads: Optional[int] = None) -> TFLiteRunner:
    """Slices ``(batch, H, W, C)`` float32 -> probabilities with an exported TFLite file (ai-edge-litert).

    LiteRT's interpreter applies its default XNNPACK delegate to the ops it takes, but runs on one thread
    unless told otherwise: ``num_threads`` (default :func:`cpu_threads`) sets it.
    """
    from ai_edge_litert.interpreter import Interpreter

    threads = num_threads or cpu_threads()
    return TFLiteRunner(Interpreter(model_path=str(path), num_threads=threads), threads)


class TFLiteRunner:
    """A TFLite file's ``serving_default`` as a function of the slices, with its ``threads`` and ``runtime``."""

    def __init__(self, interpreter, threads: int):
        self.interpreter, self.threads = interpreter, threads
        self._runner = interpreter.get_signature_runner("serving_default")

    def __call__(self, x):
        return self._runner(slices=x)["probabilities"]

    @property
    def runtime(self) -> str:
        """``"LiteRT XNNPACK"`` when the delegate took part of the graph (known after the first call, when
        LiteRT applies it), else ``"LiteRT"``."""
        try:  # delegated partitions show as DELEGATE nodes (a private call: only this name depends on it)
            delegated = any(op["op_name"] == "DELEGATE" for op in self.interpreter._get_ops_details())
        except Exception:
            delegated = False
        return "LiteRT XNNPACK" if delegated else "LiteRT"


def _keras_resampling(spec: ModelSpec, model, in_shape: tuple) -> Resampling:
    """The source's resampling, checked against the loaded model; for a bare file found only now."""
    free = in_shape[1:3] == (None, None)
    if spec.resampling is None:  # the file's config did not tell (e.g. a nested model)
        from wmhkeras.models.unet import model_depth

        return Resampling("none", multiple=2 ** model_depth(model)) if free else Resampling("fixed", in_shape[1:3])
    if not free and spec.resampling.mode == "fixed" and spec.resampling.input_size != tuple(in_shape[1:3]):
        raise ConfigError(f"{spec.path}: the model takes {in_shape[1:]} inputs, the recorded settings say resample "
                          f"{spec.resampling.mode!r} at input_size {list(spec.resampling.input_size or ())}")
    return spec.resampling


def _one_line(exc: Exception, limit: int = 300) -> str:
    """Keras's message for a file it refuses, in one line: the unknown class when it names one, else the
    message with its whitespace collapsed, cut at ``limit`` characters (Keras appends whole configs)."""
    text = " ".join(str(exc).split())
    unknown = re.search(r"Could not locate (class|function) '[^']*'", text)
    text = unknown.group(0) if unknown else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def float32_model(model, source: str | Path = "the model"):
    """``model`` computing in float32: as it is when every layer does, else rebuilt with float32 layers
    and the same weights. A run trained with ``train.precision: mixed_bfloat16`` (or ``mixed_float16``)
    saves each layer's dtype policy in its ``.keras`` file, so it would load computing in 16 bits; a
    Keras model segments in float32 unless ``--precision`` asks for bfloat16."""
    import keras

    def layers(outer):  # nested models included
        for layer in outer.layers:
            yield layer
            if isinstance(layer, keras.Model):
                yield from layers(layer)

    sixteen = {layer.dtype_policy.name for layer in layers(model) if layer.dtype_policy.compute_dtype != "float32"}
    if not sixteen:
        return model

    from wmhkeras.models.unet import with_dtype_policy

    copy = with_dtype_policy(model, "float32")
    log.info("%s: saved with dtype policy %s; rebuilt to compute in float32", source, ", ".join(sorted(sixteen)))
    return copy


def _load_keras(spec: ModelSpec) -> Segmenter:
    import keras

    from wmhkeras.registration import load_model

    try:
        model = load_model(spec.path, compile=False)
    except Exception as exc:  # Keras raises many types for foreign, unsafe or broken files
        raise InputError(f"{spec.path}: cannot load the model ({exc.__class__.__name__}: {_one_line(exc)})") from None
    # A training wrapper (e.g. the adversarial ablation) holds the segmentation network as .generator.
    if isinstance(getattr(model, "generator", None), keras.Model):
        model = model.generator
    model = float32_model(model, spec.path)  # a run trained with train.precision: mixed_* saves 16-bit layers
    if spec.resampling is not None and spec.resampling.mode != "fixed":
        from wmhkeras.models.unet import free_size

        model = free_size(model)  # a checkpoint built for one size segments whole slices of any size
    in_shape, out_shape = tuple(model.input_shape), tuple(model.output_shape)
    if (len(in_shape) != 4 or not isinstance(in_shape[3], int) or sum(s is None for s in in_shape[1:3]) == 1
            or out_shape[1:] != (*in_shape[1:3], 1)):
        raise InputError(f"{spec.path}: expected a model (batch, H, W, C) -> (batch, H, W, 1), got {in_shape} -> {out_shape}")
    k = spec.context_slices
    modalities = spec.modalities or modalities_of(in_shape[3], k, spec.path)
    if input_channels(len(modalities), k) != in_shape[3]:
        raise ConfigError(f"{spec.path}: the model takes {in_shape[3]} channels, the recorded settings say "
                          f"modalities {list(modalities)} with context_slices {k}")
    resampling = _keras_resampling(spec, model, in_shape)
    return Segmenter(keras_predict_fn(model, in_shape[1:]), tuple(modalities), spec.normalisation,
                     None, str(spec.source), model, resampling, k)


def _load_tflite(spec: ModelSpec) -> Segmenter:
    try:
        predict = tflite_predict_fn(spec.path)
    except ImportError:
        raise InputError(f"{spec.path}: TFLite models need ai-edge-litert: pip install 'wmhkeras[litert]'") from None
    except Exception as exc:
        raise InputError(f"{spec.path}: cannot load the TFLite model ({exc.__class__.__name__}: {exc})") from None
    return Segmenter(lambda x: predict(np.asarray(x, np.float32)), spec.modalities, spec.normalisation,
                     spec.input_size, str(spec.source), None, spec.resampling, spec.context_slices, spec.card)


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
    channels = input_channels(len(spec.modalities), spec.context_slices)
    expected = (*(spec.input_size or (None, None)), channels)
    shape = tf.TensorShape(tensor_spec.shape[1:])
    if not shape.is_compatible_with(expected) or spec.input_size is None and shape.as_list()[:2] != [None, None]:
        raise InputError(f"{spec.path}: serving_default takes {tensor_spec.shape}, the model card says "
                         f"{list(expected)} (None: any size)")

    def predict(x):
        (out,) = fn(**{name: tf.convert_to_tensor(x, tf.float32)}).values()
        return out

    return Segmenter(predict, spec.modalities, spec.normalisation, spec.input_size, str(spec.source), loaded,
                     spec.resampling, spec.context_slices, spec.card)


def load_segmenter(path: str | Path | ModelSpec) -> Segmenter:
    """Load a model source (see :func:`~wmhkeras.inference.sources.inspect_model`) as a :class:`Segmenter`.

    ``.keras`` files load with ``safe_mode=True``, no ``custom_objects`` (every wmhkeras object is
    registered) and ``compile=False`` (the content loss's backbone weights are not needed).
    """
    spec = path if isinstance(path, ModelSpec) else inspect_model(path)
    loaders = {"saved_model": _load_saved_model, "tflite": _load_tflite}
    segmenter = loaders.get(spec.format, _load_keras)(spec)
    r = segmenter.resampling
    log.info("loaded %s model %s: modalities %s, normalisation %s, resample %s (%s), context %d", spec.format,
             spec.path, ",".join(segmenter.modalities), segmenter.normalisation, r.mode,
             "x".join(map(str, r.input_size or r.spacing or ())) or f"multiple of {r.multiple}",
             segmenter.context_slices)
    return segmenter
