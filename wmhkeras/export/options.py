"""What an export may be asked for: SavedModel precisions, TFLite variants, acceptance tolerances, the output folder.

No TensorFlow here: the CLI checks its options with these before any model is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from wmhkeras.errors import ConfigError, InputError
from wmhkeras.io.files import check_new_folder
from wmhkeras.io.model_card import SAVED_MODEL_PRECISIONS

#: TFLite variants, in the order they are written.
TFLITE_VARIANTS = ("fp32", "fp16", "dynamic", "int8")
#: What each variant is (also written to the model card).
TFLITE_DESCRIPTIONS = {
    "fp32": "float32 weights and activations",
    "fp16": "float16 weights (dequantised to float32 when run on CPU), float32 activations",
    "dynamic": "dynamic-range quantisation: int8 weights, activations quantised on the fly",
    "int8": "full-integer quantisation: int8 weights and activations (calibrated), float32 input/output",
}
#: Acceptance limits per artifact: ``max_abs_diff`` of probabilities and/or ``mask_dice`` (threshold 0.5)
#: against the Keras model on held-back slices; ``segment_volume`` against the eager pipeline.
DEFAULT_TOLERANCES = {
    "saved_model": {"max_abs_diff": 1e-4},
    "segment_volume": {"max_abs_diff": 1e-4},
    "saved_model_bf16": {"mask_dice": 0.99},
    "segment_volume_bf16": {"mask_dice": 0.99},
    "fp32": {"max_abs_diff": 1e-4},
    "fp16": {"mask_dice": 0.99},
    "dynamic": {"mask_dice": 0.99},
    "int8": {"mask_dice": 0.95},
}
#: What to do about an export folder that is in the way (the end of the error message).
OUT_DIR_HINT = "choose another output folder or use --force"


def parse_variants(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``'fp32,int8'`` or a sequence -> checked variant names; ``None`` stays ``None`` (the default set);
    ``'none'`` or ``''`` -> no TFLite variant.

    Raises:
        ConfigError: an unknown variant name.
    """
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [str(n).strip() for n in text]
    names = [n for n in names if n and n.lower() != "none"]
    for n in names:
        if n not in TFLITE_VARIANTS:
            raise ConfigError(f"tflite variant {n!r} is not known; use any of {', '.join(TFLITE_VARIANTS)} (or none)")
    return tuple(dict.fromkeys(names))


def parse_saved_models(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``'float32,bfloat16'`` or a sequence -> the SavedModel precisions, float32 always among them, in the
    order of :data:`~wmhkeras.io.model_card.SAVED_MODEL_PRECISIONS`; ``None`` stays ``None`` (the default:
    float32 alone).

    Raises:
        ConfigError: an unknown precision, or none at all (the float32 SavedModel is always written).
    """
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [str(n).strip() for n in text]
    names = [n for n in names if n]
    allowed = f"use float32, or float32,bfloat16 ({', '.join(SAVED_MODEL_PRECISIONS)})"
    for n in names:
        if n not in SAVED_MODEL_PRECISIONS:
            raise ConfigError(f"saved model precision (--saved-model) {n!r} is not known; {allowed}")
    if not names:
        raise ConfigError(f"saved model precisions (--saved-model): none given; the float32 SavedModel is always "
                          f"written: {allowed}")
    return tuple(p for p in SAVED_MODEL_PRECISIONS if p in names or p == "float32")


def check_serving_precisions(precisions: Sequence[str] | None, serving: bool) -> None:
    """Refuse a bfloat16 SavedModel in the TensorFlow Serving layout (``serving``: ``--serving-version``).

    Raises:
        ConfigError: bfloat16 among ``precisions`` with ``serving``.
    """
    if serving and precisions is not None and "bfloat16" in precisions:
        raise ConfigError("--saved-model bfloat16 is not written with --serving-version (not written in the "
                          "TensorFlow Serving layout): export it to another folder without --serving-version")


def resolve_tolerances(tolerances: dict | None) -> dict[str, dict[str, float]]:
    """:data:`DEFAULT_TOLERANCES` updated by ``tolerances`` (``{"int8": {"mask_dice": 0.9}}``).

    Raises:
        ConfigError: an unknown artifact, or a limit that is not ``max_abs_diff >= 0`` or ``mask_dice`` in [0, 1].
    """
    merged = {k: dict(v) for k, v in DEFAULT_TOLERANCES.items()}
    for name, limits in (tolerances or {}).items():
        if name not in merged:
            raise ConfigError(f"tolerances: {name!r} is not an artifact; use any of {', '.join(merged)}")
        if not isinstance(limits, dict):
            raise ConfigError(f"tolerances.{name}: expected a mapping like {{'mask_dice': 0.95}}, got {limits!r}")
        for key, value in limits.items():
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key == "max_abs_diff" and ok and value >= 0 or key == "mask_dice" and ok and 0 <= value <= 1:
                continue
            raise ConfigError(f"tolerances.{name}.{key}: {value!r} is not allowed; use max_abs_diff >= 0 "
                              "or mask_dice in [0, 1]")
        merged[name] = {k: float(v) for k, v in limits.items()}
    return merged


def default_out_dir(model_or_run_dir: str | Path, root: str | Path = "saved_models") -> Path:
    """``saved_models/<run name>``: the run folder's name, or a bare checkpoint's file stem."""
    return Path(root) / _run_name(Path(model_or_run_dir))


def _run_name(path: Path) -> str:
    if path.suffix == ".keras" and path.parent.name == "checkpoints":
        return path.parent.parent.name
    return path.stem if path.suffix == ".keras" else path.name


def check_out_dir(out_dir: str | Path, force: bool) -> Path:
    """The export folder, refused before any work when it is a file, or not empty and ``force`` is off.

    Raises:
        InputError: ``out_dir`` is a file; or it is a non-empty folder and ``force`` is False.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():  # not even --force replaces a file
        raise InputError(f"{out_dir}: exists and is not a folder; choose another output folder")
    return out_dir if force else check_new_folder(out_dir, OUT_DIR_HINT)
