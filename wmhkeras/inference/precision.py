"""The numeric precision of Keras inference: ``float32`` or ``bfloat16`` (``segment --precision``).

``auto`` picks bfloat16 where the hardware computes it natively - a CPU with AVX512-BF16 or AMX (Linux
``/proc/cpuinfo`` flags ``avx512_bf16`` / ``amx_bf16``; other systems: float32) or a GPU of compute
capability 8.0 or more - and float32 elsewhere. bfloat16 runs the model rebuilt under the Keras policy
``mixed_bfloat16`` (float32 weights and input, bfloat16 compute, float32 output). Only ``.keras`` files
and run folders can: for SavedModel and TFLite sources ``auto`` means float32 and ``bfloat16`` is refused
(the message names the export's ``saved_model_bf16/`` when there is one beside the model), except for the
bfloat16 SavedModel that ``wmhkeras export`` writes (``saved_model_bf16/``, its card's ``precision``): that
graph computes in bfloat16 whatever is asked, and the record says so.

Validated by :func:`check_precision` and decided once, right after the model loads, by
:func:`decide_precision`, which returns a new segmenter (``segment`` hands it the first subject to
segment as sample, the Python API its image). The parity gate: both precisions segment the 8
preprocessed slices of the sample with the most contrast (highest standard deviation); unless the two masks at
the run's threshold have Dice >= :data:`MIN_PARITY_DICE`, float32 is used, with a warning naming the Dice.
With ``auto``, bfloat16 must also be faster than float32 on those slices (one timed call each, after
the check's own call; :func:`bfloat16_faster`, the speed rule ``wmhkeras export`` logs by too): on a
narrow model the casts can cost more than bfloat16 saves. The environment
variable ``WMHKERAS_BF16`` (``0`` or ``1``) overrides the hardware detection of ``auto`` (the test suite
sets ``0``, so its results do not depend on the machine). The outcome is the new segmenter's
:attr:`~wmhkeras.inference.loaders.Segmenter.precision` (recorded in ``segment.json``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from wmhkeras.errors import ConfigError
from wmhkeras.evaluation.metrics import mask_dice
from wmhkeras.inference.loaders import Segmenter, keras_predict_fn
from wmhkeras.io.model_card import SAVED_MODEL_FOLDERS, ModelCard

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16")
#: Mask Dice (bfloat16 against float32 on the model's own slices) below which float32 is used.
MIN_PARITY_DICE = 0.99
#: Slices of the parity check.
PARITY_SLICES = 8
#: The speed rule: bfloat16 counts as faster when float32's time over bfloat16's on the same slices,
#: rounded to 2 decimals, is at least this (not slower).
MIN_BF16_SPEEDUP = 1.0


def cpu_flags_bf16(cpuinfo: str) -> bool:
    """Whether ``/proc/cpuinfo`` text lists ``avx512_bf16`` or ``amx_bf16`` in a ``flags`` line."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and {"avx512_bf16", "amx_bf16"} & set(value.split()):
            return True
    return False


def cpu_supports_bf16(cpuinfo_path: str | Path = "/proc/cpuinfo") -> bool:
    """Native bfloat16 on this CPU (Linux only; elsewhere ``False``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return cpu_flags_bf16(Path(cpuinfo_path).read_text(errors="replace"))
    except OSError:
        return False


def gpu_supports_bf16() -> bool:
    """A visible GPU of compute capability >= 8.0 (Ampere or newer)."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)
        if tuple(capability) >= (8, 0):
            return True
    return False


def native_bfloat16() -> tuple[bool, str]:
    """Whether this machine computes bfloat16 natively, and why: ``WMHKERAS_BF16`` (``0``/``1``) first, then
    the CPU's flags, then the GPUs (also what ``wmhkeras export`` asks before it tries a bfloat16 SavedModel)."""
    forced = os.environ.get("WMHKERAS_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"WMHKERAS_BF16={forced}"
    if cpu_supports_bf16():
        return True, "the CPU has AVX512-BF16/AMX"
    if gpu_supports_bf16():
        return True, "the GPU has compute capability >= 8.0"
    return False, "no native bfloat16 on this machine"


def exported_precision(card: ModelCard | None) -> str:
    """What an exported model computes in: its card's ``precision`` (``float32`` without a card)."""
    return "float32" if card is None else card.precision


def bfloat16_export_beside(path: str | Path) -> Path | None:
    """The export's bfloat16 SavedModel (``saved_model_bf16/``) beside a model ``path`` (an export folder, its
    ``saved_model/`` or a file of its ``tflite/``), or ``None``."""
    path = Path(path)
    name = SAVED_MODEL_FOLDERS["bfloat16"]
    for folder in (path, path.parent, path.parent.parent):
        candidate = folder / name
        if candidate != path and (candidate / "saved_model.pb").is_file():
            return candidate
    return None


def check_precision(precision: str, fmt: str = "keras", path: str | Path | None = None,
                    card: ModelCard | None = None) -> None:
    """Refuse an unknown precision, and ``bfloat16`` for a source of format ``fmt`` that is not a Keras model
    (ConfigError), unless its model ``card`` (``ModelSpec.card``, ``Segmenter.card``: the card that was loaded with it)
    says it is a bfloat16 SavedModel of ``wmhkeras export``; the refusal names the export's
    ``saved_model_bf16/`` when there is one beside ``path``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision (--precision): {precision!r} is not allowed; use one of {', '.join(PRECISIONS)}")
    if precision == "bfloat16" and fmt in ("saved_model", "tflite", "segmenter"):
        if exported_precision(card) == "bfloat16":
            return
        beside = None if path is None else bfloat16_export_beside(path)
        if path is None:  # the model may be an export's saved_model_bf16/: say how that one is run
            hint = (" (use --precision auto or float32; an export's bfloat16 SavedModel, saved_model_bf16/, "
                    "computes in bfloat16 with either)")
        elif beside is None:
            hint = ", in float32 (use --precision auto or float32)"
        else:
            hint = f", in float32; this export has a bfloat16 SavedModel: segment with {beside}"
        raise ConfigError(f"--precision bfloat16 needs a .keras file or a run folder; a {fmt} model computes as it "
                          f"was exported{hint}")


def is_keras(segmenter: Segmenter) -> bool:
    import keras

    return isinstance(segmenter.model, keras.Model)


def bfloat16_model(model):
    """``model`` rebuilt under the ``mixed_bfloat16`` policy with the same weights (float32 variables)."""
    from wmhkeras.models.unet import with_dtype_policy

    return with_dtype_policy(model, "mixed_bfloat16")


def bfloat16_predict_fn(model):
    """Float32 slices -> float32 probabilities, computed in bfloat16."""
    import tensorflow as tf

    copy = bfloat16_model(model)

    @tf.function(input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)])
    def predict(x):
        return tf.cast(copy(x, training=False), tf.float32)

    predict.model = copy  # keeps the copy's variables alive
    return predict


def parity_slices(slices, count: int = PARITY_SLICES) -> np.ndarray:
    """The ``count`` slices with the highest standard deviation (most brain content), in slice order."""
    slices = np.asarray(slices, np.float32)
    spread = slices.reshape(len(slices), -1).std(axis=1)
    return slices[np.sort(np.argsort(-spread, kind="stable")[:count])]


def _wanted(precision: str, keras_model: bool, card: ModelCard | None) -> tuple[str, str]:
    """(precision to try, why)."""
    if not keras_model and exported_precision(card) == "bfloat16":
        reason = "the exported SavedModel computes in bfloat16 (its model card's precision)"
        return "bfloat16", reason + ("; the export's saved_model/ is its float32 graph" if precision == "float32" else "")
    if precision != "auto":
        return precision, "requested"
    if not keras_model:
        return "float32", "auto: not a Keras model"
    native, why = native_bfloat16()
    return ("bfloat16" if native else "float32"), f"auto: {why}"


def speedup(slow, fast, sample) -> float:
    """Slices per second of ``fast`` over ``slow``: one timed call each (both already traced)."""
    seconds = []
    for fn in (slow, fast):
        start = time.perf_counter()
        np.asarray(fn(sample))
        seconds.append(time.perf_counter() - start)
    return seconds[0] / max(seconds[1], 1e-9)


def bfloat16_faster(ratio: float) -> bool:
    """Whether a bfloat16 speed-up over float32 (float32's time over bfloat16's) passes the speed rule,
    :data:`MIN_BF16_SPEEDUP` at 2 decimals."""
    return round(ratio, 2) >= MIN_BF16_SPEEDUP


def _gate(segmenter: Segmenter, float32_fn, sample, threshold: float) -> tuple:
    """(bfloat16 fn or None, parity Dice, speedup or None): the parity gate on ``sample``, then the timing."""
    fast = bfloat16_predict_fn(segmenter.model)
    sample = parity_slices(sample)
    reference = np.asarray(float32_fn(sample), np.float32) >= threshold
    dice = mask_dice(reference, np.asarray(fast(sample), np.float32) >= threshold)
    if dice < MIN_PARITY_DICE:
        log.warning("%s: bfloat16 masks have Dice %.4f against float32 on %d of its slices (below %.2f): "
                    "using float32", segmenter.source or "the model", dice, len(sample), MIN_PARITY_DICE)
        return None, dice, None
    return fast, dice, round(speedup(float32_fn, fast, sample), 2)


def _float32_fn(segmenter: Segmenter):
    """The float32 function of a Keras segmenter (rebuilt when it was decided for bfloat16)."""
    if (segmenter.precision or {}).get("used") != "bfloat16":
        return segmenter.predict_fn
    return keras_predict_fn(segmenter.model, segmenter.model.input_shape[1:])


def decide_precision(segmenter: Segmenter, precision: str, sample=None, threshold: float = 0.5) -> Segmenter:
    """A new segmenter computing at the precision chosen for ``precision`` (``auto``, ``float32``,
    ``bfloat16``); ``segmenter`` itself is left as it is.

    The new one's ``precision`` is the record ``{requested, used, reason, parity_dice, speedup}``.
    ``sample``: the preprocessed slices of the parity gate, or a function returning them, called only when
    the gate runs (``None``: no slices to check, float32). A segmenter decided for ``precision`` already is
    returned as it is. Raises ConfigError for a precision :func:`check_precision` refuses.
    """
    keras_model = is_keras(segmenter)
    check_precision(precision, "keras" if keras_model else "segmenter", segmenter.source or None, segmenter.card)
    if segmenter.precision and segmenter.precision["requested"] == precision:
        return segmenter
    wanted, reason = _wanted(precision, keras_model, segmenter.card)
    dice = ratio = None
    predict_fn = segmenter.predict_fn
    if keras_model:
        predict_fn = _float32_fn(segmenter)
        sample = sample() if callable(sample) and wanted == "bfloat16" else sample
        if wanted == "bfloat16" and sample is None:
            wanted, reason = "float32", "bfloat16 not checked: no slices for the parity gate"
        elif wanted == "bfloat16":
            fast, dice, ratio = _gate(segmenter, predict_fn, sample, threshold)
            if fast is None:
                wanted, reason = "float32", f"bfloat16 failed the parity check (mask Dice {dice:.4f})"
            elif precision == "auto" and not bfloat16_faster(ratio):
                wanted, reason = "float32", f"auto: bfloat16 is not faster for this model ({ratio:.2f}x float32)"
            else:
                predict_fn = fast
    log.info("precision %s (%s)%s", wanted, reason, "" if dice is None else f", parity mask Dice {dice:.4f}")
    return replace(segmenter, predict_fn=predict_fn, precision={
        "requested": precision, "used": wanted, "reason": reason, "parity_dice": dice, "speedup": ratio})
