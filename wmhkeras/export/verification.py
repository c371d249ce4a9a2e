"""The slices every artifact is checked on, the int8 calibration slices, and the parity check itself.

Verification slices come from subjects the model never trained on (a run's validation and hold-out
subjects) when there are any; calibration slices from its training subjects, or from what the caller
passes. TensorFlow is only touched through the :class:`~wmhkeras.inference.loaders.Segmenter`.

A model that takes slices of any size (``spacing`` and ``none`` resampling) gives slices of different
sizes for different subjects; they are zero-padded, centred, to the largest of them (the padding the
resampling itself adds), so that one array holds them all.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wmhkeras.data.datasets import Subject, check_subject, load_dataset
from wmhkeras.data.synth import SITE_PRESETS, make_subject
from wmhkeras.errors import InputError
from wmhkeras.evaluation.metrics import mask_dice
from wmhkeras.export.report import ArtifactCheck
from wmhkeras.export.source import ExportSource, RunSubjects
from wmhkeras.io.model_card import THRESHOLD

log = logging.getLogger(__name__)

#: Most slices used for verification, and for int8 calibration; most subjects read for each.
MAX_VERIFY_SLICES = 48
MAX_CALIBRATION_SLICES = 128
MAX_SUBJECTS = 8
#: Synthetic verification subject for a bare ``.keras`` file (wmhkeras.data.synth, first site preset).
SYNTHETIC_SEED = 0


@dataclass(frozen=True)
class VerificationVolume:
    """The raw canonical ``[X, Y, Z]`` channels of one subject (FLAIR first) and its voxel size in mm."""

    channels: list[np.ndarray]
    voxel_size: tuple[float, float, float]


# === Data ===


def _subject_slices(subject: Subject, src: ExportSource) -> tuple[np.ndarray, VerificationVolume]:
    """Preprocessed slices ``[Z, H, W, C]`` of one subject, and its raw RAS channels ``[X, Y, Z]``."""
    images, _ = check_subject(subject, src.modalities)
    volume = VerificationVolume([im.data for im in images], images[0].spacing)
    return src.segmenter.preprocess(volume.channels, volume.voxel_size).numpy(), volume


def _evenly(items: Sequence, n: int) -> list:
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]


def _pad_to(stack: np.ndarray, height: int, width: int) -> np.ndarray:
    """Zero-pad slices ``(N, h, w, C)`` to ``(N, height, width, C)``, centred as the resampling pads."""
    dh, dw = height - stack.shape[1], width - stack.shape[2]
    return np.pad(stack, [(0, 0), (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2), (0, 0)])


def _pick_slices(stacks: list[np.ndarray], n: int) -> np.ndarray:
    height, width = max(s.shape[1] for s in stacks), max(s.shape[2] for s in stacks)
    allslices = np.concatenate([_pad_to(s, height, width) for s in stacks], axis=0)
    return allslices[np.asarray(_evenly(range(len(allslices)), n), dtype=int)]


def _dataset_slices(subjects: Sequence[Subject], src: ExportSource, source: str) -> tuple[np.ndarray, dict]:
    subjects = _evenly(subjects, MAX_SUBJECTS)
    stacks = [_subject_slices(s, src)[0] for s in subjects]
    return _pick_slices(stacks, MAX_CALIBRATION_SLICES), {"source": source, "subjects": [s.subject for s in subjects]}


def calibration_slices(calibration_data, src: ExportSource,
                       subjects: RunSubjects | None) -> tuple[np.ndarray, dict] | tuple[None, str]:
    """``(slices [N, H, W, C], description)`` for int8 calibration, or ``(None, reason)`` when there are none.

    Args:
        calibration_data: ``None`` (the run's training subjects), preprocessed slices ``(N, H, W, C)``
            (an array or a ``.npy`` file), or a dataset (manifest CSV or folder).

    Raises:
        InputError: a missing ``.npy`` file, or slices of the wrong shape.
    """
    if calibration_data is None:
        if subjects is None or not subjects["train"]:
            return None, "no calibration data: export a run folder with its data, or pass --calibration DATA"
        return _dataset_slices(subjects["train"], src, "training subjects of the run's split")
    if isinstance(calibration_data, (str, Path)) and Path(calibration_data).suffix == ".npy":
        if not Path(calibration_data).is_file():
            raise InputError(f"{calibration_data}: calibration file not found")
        arr, desc = np.load(calibration_data), {"source": str(calibration_data)}
    elif isinstance(calibration_data, (str, Path)):
        return _dataset_slices(load_dataset(calibration_data), src, str(calibration_data))
    else:
        arr, desc = np.asarray(calibration_data), {"source": "array passed in"}
    _check_slices(arr, src)
    return _pick_slices([arr.astype(np.float32)], MAX_CALIBRATION_SLICES), desc


def _check_slices(arr: np.ndarray, src: ExportSource) -> None:
    """Preprocessed slices for the model: ``(N, H, W, C)``, ``H, W`` the input size or multiples of ``2**depth``."""
    m = src.resampling.multiple
    h, w = src.input_size or ("H", "W")
    if src.input_size is not None:
        ok = arr.ndim == 4 and arr.shape[1:] == (h, w, src.channels)
    else:
        ok = arr.ndim == 4 and arr.shape[3] == src.channels and arr.shape[1] % m == 0 and arr.shape[2] % m == 0
    if not ok or len(arr) == 0:
        sizes = "" if src.input_size is not None else f", H and W multiples of {m}"
        raise InputError(f"calibration data: slices of shape {arr.shape}; expected preprocessed slices "
                         f"(N, {h}, {w}, {src.channels}) with N >= 1{sizes}")


def _synthetic_volume(src: ExportSource) -> VerificationVolume:
    flair, t1, _, affine = make_subject(SYNTHETIC_SEED, SITE_PRESETS[0], lesion_fraction=(0.005, 0.01))
    voxel_size = tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))
    return VerificationVolume([flair, t1][: len(src.modalities)], voxel_size)


def verification_data(src: ExportSource, subjects: RunSubjects | None,
                      calibration: np.ndarray | None) -> tuple[np.ndarray, VerificationVolume, dict]:
    """``(slices [N, H, W, C], volume, description)``: what every artifact is checked on.

    A run folder: its validation and hold-out subjects (never trained on). Otherwise the calibration slices
    when given (not held back: the check then shows fidelity on the calibration inputs) or a synthetic
    subject from :mod:`wmhkeras.data.synth`; ``segment_volume`` is checked on the first held-back (else synthetic)
    volume.
    """
    held = [] if subjects is None else subjects["holdout"] + subjects["validation"]
    if held:
        picked = _evenly(held, MAX_SUBJECTS // 2)
        loaded = [_subject_slices(s, src) for s in picked]
        slices = _pick_slices([sl for sl, _ in loaded], MAX_VERIFY_SLICES)
        return slices, loaded[0][1], {"source": "held-out and validation subjects of the run's split",
                                      "subjects": [s.subject for s in picked], "slices": len(slices)}
    volume = _synthetic_volume(src)
    if calibration is not None:
        slices = _pick_slices([calibration], MAX_VERIFY_SLICES)
        return slices, volume, {"source": "the calibration slices (not held back); volume check on a "
                                "synthetic subject", "slices": len(slices)}
    slices = _pick_slices([src.segmenter.preprocess(volume.channels, volume.voxel_size).numpy()], MAX_VERIFY_SLICES)
    return slices, volume, {"source": f"a synthetic subject (wmhkeras.data.synth, seed {SYNTHETIC_SEED})",
                              "slices": len(slices)}


# === Parity ===


def timed(fn: Callable, slices: np.ndarray) -> tuple[np.ndarray, float]:
    """Run ``fn`` on each slice (batch of 1): stacked outputs and the median latency in ms."""
    fn(slices[:1])  # warm-up: tracing, allocation
    outs, times = [], []
    for i in range(len(slices)):
        t = time.perf_counter()
        outs.append(np.asarray(fn(slices[i:i + 1]), dtype=np.float32))
        times.append(time.perf_counter() - t)
    return np.concatenate(outs, axis=0), 1000 * statistics.median(times)


def check_artifact(name: str, path: str, size_bytes: int | None, latency_ms: float, out: np.ndarray,
                   ref: np.ndarray, tolerance: dict[str, float], *, runtime: str = "", threads: int | None = None,
                   reference_ms: float | None = None) -> ArtifactCheck:
    """Compare an artifact's probabilities ``out`` with the reference ``ref`` (any matching shape).

    ``max_abs_diff`` of the probabilities, and the Dice of the masks at :data:`THRESHOLD` over all voxels;
    ``speedup`` is ``reference_ms / latency_ms`` (the reference's time on the same work) when given.
    """
    diff = float(np.abs(out - ref).max())
    agreement = mask_dice(out >= THRESHOLD, ref >= THRESHOLD)
    passed = diff <= tolerance.get("max_abs_diff", np.inf) and agreement >= tolerance.get("mask_dice", -np.inf)
    log.info("%s: max |diff| %.3g, mask Dice %.4f, %.2f ms/slice -> %s", name, diff, agreement, latency_ms,
             "ok" if passed else "OUTSIDE TOLERANCE")
    latency_ms = round(latency_ms, 3)  # the figures as reported, the speedup from them
    speedup = None if reference_ms is None else round(round(reference_ms, 3) / max(latency_ms, 1e-3), 3)
    return ArtifactCheck(name, path, size_bytes, latency_ms, diff, agreement, tolerance, passed,
                         runtime, threads, speedup)


def tree_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
