"""Everything Keras must know by name, registered in one place, and the one safe ``.keras`` loader.

Importing this module imports every module that registers a custom Keras object under the package
name :data:`wmhkeras.KERAS_PACKAGE` (losses, metrics, the adversarial ablation model), so a ``.keras``
file that names one of them loads without ``custom_objects`` and without unsafe deserialisation.
It imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import os

import keras

import wmhkeras.losses.adversarial  # noqa: F401  (the fine-tuning ablation's training wrapper)
import wmhkeras.losses.content  # noqa: F401  (the Siamese content loss)
import wmhkeras.losses.metrics  # noqa: F401  (DiceMetric, LossTermMetric)
import wmhkeras.losses.overlap  # noqa: F401  (overlap and pixel losses, the hybrid)


def _safe_mode_scope():
    """Keras's scope forcing safe mode while loading: ``keras.config.enable_unsafe_deserialization()``, once
    called anywhere in the process, otherwise wins over ``safe_mode=True``. A private Keras class: if a
    Keras release moves it, loading relies on ``safe_mode=True`` alone."""
    try:
        from keras.src.saving.serialization_lib import SafeModeScope
    except ImportError:  # pragma: no cover - depends on the Keras release
        return contextlib.nullcontext()
    return SafeModeScope(True)


def load_model(path: str | os.PathLike, compile: bool = False) -> keras.Model:
    """Load a saved ``.keras`` model safely (``safe_mode=True``, no ``custom_objects``).

    Safe mode refuses Python code in the file (a ``Lambda`` layer's bytecode) even when the process
    enabled unsafe deserialisation; classes load only if Keras or this package registers them.
    ``compile=False`` (default, for inference) skips rebuilding the training loss, so the content loss's
    backbone weights are not needed; ``compile=True`` restores loss and metrics (the content loss then
    resolves its backbone weights again, see :mod:`wmhkeras.losses.content`).
    """
    with _safe_mode_scope():
        return keras.saving.load_model(os.fspath(path), compile=compile, safe_mode=True)
