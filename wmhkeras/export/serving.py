"""The TensorFlow Serving layout of an export: ``<out>/<name>/<version>/`` and its warm-up requests.

TensorFlow Serving loads the highest numbered folder under a model's base path and, before it answers,
replays ``assets.extra/tf_serving_warmup_requests``: a TFRecord file of ``tensorflow.serving.PredictionLog``
protos. :func:`write_warmup` writes one request per signature (``serving_default`` on one slice,
``segment_volume`` on a small volume). The protos are encoded here from their field numbers (TensorFlow
Serving's ``prediction_log.proto``, ``predict.proto`` and ``model.proto``); the tensors are TensorFlow's
own ``TensorProto``. So the export needs no ``tensorflow-serving-api`` package.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from wmhkeras.errors import ConfigError
from wmhkeras.export.source import ExportSource
from wmhkeras.io.files import atomic_path
from wmhkeras.io.model_card import ASSETS_EXTRA, ServingLayout

#: File TensorFlow Serving replays before serving a model version (inside its ``assets.extra/``).
WARMUP_NAME = "tf_serving_warmup_requests"
#: Names a served model may take: a folder name TensorFlow Serving and URLs accept.
SERVING_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: Export sub-folders a served model's name must not take.
_TAKEN = ("tflite", "saved_model")
#: Side (pixels) of the warm-up slices of a model that takes any slice size, before rounding up to its multiple.
WARMUP_SIDE = 64
#: Axial slices of the warm-up volume.
WARMUP_SLICES = 3


def serving_layout(name: str, version: int) -> ServingLayout:
    """The layout ``<name>/<version>`` (relative to the export folder), checked.

    Raises:
        ConfigError: a version below 1, or a name that is not a plain folder name.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"serving version (--serving-version): {version!r} is not allowed; use an integer >= 1")
    if not SERVING_NAME.fullmatch(name or "") or name in _TAKEN:
        raise ConfigError(f"serving name (--serving-name): {name!r} is not allowed; use letters, digits, '.', '_' "
                          f"or '-' (not {' or '.join(_TAKEN)})")
    return ServingLayout(name, version, f"{name}/{version}", f"{ASSETS_EXTRA}/{WARMUP_NAME}")


# === Protocol buffers by hand ===


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): a string, bytes or an embedded message."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def prediction_log(model_name: str, signature: str, inputs: dict[str, np.ndarray]) -> bytes:
    """``PredictionLog{predict_log: PredictLog{request: PredictRequest{model_spec, inputs}}}``, serialised.

    Field numbers: ``PredictionLog.predict_log`` 6, ``PredictLog.request`` 1, ``PredictRequest.model_spec`` 1
    and ``inputs`` 2 (a map: entries with ``key`` 1 and ``value`` 2, a ``TensorProto``),
    ``ModelSpec.name`` 1 and ``signature_name`` 3.
    """
    spec = _field(1, model_name.encode()) + _field(3, signature.encode())
    entries = b"".join(_field(2, _field(1, key.encode()) + _field(2, tf.make_tensor_proto(value).SerializeToString()))
                       for key, value in inputs.items())
    return _field(6, _field(1, _field(1, spec) + entries))


# === The warm-up requests ===


def warmup_inputs(src: ExportSource) -> dict[str, dict[str, np.ndarray]]:
    """Inputs of each signature for the warm-up: one slice for ``serving_default``, a small volume (a
    smooth positive ramp, so every normalisation is defined) for ``segment_volume``."""
    m = src.resampling.multiple
    h, w = src.input_size or ((-(-WARMUP_SIDE // m)) * m,) * 2
    ramp = np.linspace(0.1, 1.0, h * w * WARMUP_SLICES, dtype=np.float32).reshape(h, w, WARMUP_SLICES)
    volume = {name: ramp * (i + 1) for i, name in enumerate(src.modalities)}
    if src.resampling.mode == "spacing":
        volume["spacing"] = np.asarray([*src.resampling.spacing, 1.0], np.float32)
    slices = np.repeat(ramp[None, :, :, :1], src.channels, axis=3)
    return {"serving_default": {"slices": slices}, "segment_volume": volume}


def write_warmup(saved_model: Path, src: ExportSource, model_name: str) -> Path:
    """Write ``<saved_model>/assets.extra/tf_serving_warmup_requests`` (one request per signature)."""
    path = saved_model / ASSETS_EXTRA / WARMUP_NAME
    path.parent.mkdir(exist_ok=True)
    with atomic_path(path) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
        for signature, inputs in warmup_inputs(src).items():
            writer.write(prediction_log(model_name, signature, inputs))
    return path
