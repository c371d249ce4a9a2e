"""What the benchmark scripts share: peak memory, the matmul peak, fresh child processes, and a timed
``segment`` of one volume. Imported by the scripts beside it (``python bench/<script>.py`` puts this
folder on ``sys.path``); no TensorFlow at import time."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing

from wmhkeras.data.shared import open_ms_data  # noqa: E402

#: The two real patients (docs/real_data.md), read in place (:func:`wmhkeras.data.shared.open_ms_data`).
OPEN_MS_DATA = open_ms_data()
#: The paper's generator (dense U-Net, depth 5, 32 base filters, 224 x 224 single-channel slices).
PAPER_MODEL = {"arch": "dense_unet", "input_shape": (224, 224, 1), "depth": 5, "base_filters": 32}


def save_random_generator(path: Path, spec: dict = PAPER_MODEL) -> int:
    """Save the generator ``spec`` (``arch`` plus its build arguments) with random weights (seed 0) to
    ``path``; return its FLOPs per slice. Speed does not depend on the weight values."""
    import keras

    from wmhkeras.models import build_generator, count_flops

    keras.utils.set_random_seed(0)
    model = build_generator(spec["arch"], **{k: v for k, v in spec.items() if k != "arch"})
    model.save(path)
    return count_flops(model)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB: Linux ``VmHWM`` (kB). Not ``getrusage``'s
    ``ru_maxrss``, which a process started with fork + exec inherits from its parent: every child of a
    benchmark would report at least the parent's peak (measured: 814 MB for a child that used 14 MB).
    Elsewhere ``ru_maxrss`` (bytes on macOS, kB on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)


def matmul_peak(n: int, dtype: str = "float32", repeats: int = 5) -> tuple[float, float]:
    """Best ``n x n`` matmul rate in ``dtype`` (``float32`` or ``bfloat16``): (FLOP per wall second, FLOP
    per CPU second of all threads)."""
    import tensorflow as tf

    a = tf.cast(tf.random.uniform((n, n), seed=1), dtype)
    b = tf.cast(tf.random.uniform((n, n), seed=2), dtype)
    mm = tf.function(lambda a, b: tf.matmul(a, b))
    mm(a, b).numpy()
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        mm(a, b).numpy()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu_start)
    return 2.0 * n**3 / best, 2.0 * n**3 / best_cpu


def run_child(script: str | Path, extra: list[str]) -> dict:
    """Run ``python script *extra`` in a fresh process (the repository on ``PYTHONPATH``); its last stdout
    line is a JSON object, returned."""
    proc = subprocess.run([sys.executable, str(script), *extra], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"child {extra} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timed_segment(seg, flair: Path, batch_size: int, tta_flip: bool = False, out_dir: str | Path | None = None,
                  precision: str = "float32") -> dict:
    """``segment`` of one FLAIR with the segmenter ``seg``, every model call timed: ``segment`` gets a copy
    of ``seg`` whose ``predict_fn`` and ``preprocess`` are wrapped.

    ``predict_maps`` (all resampling modes, TTA included) calls the model only as ``segmenter.predict_fn``;
    ``every_slice_timed`` checks that the wrapper saw each preprocessed slice (twice with ``tta_flip``).
    ``out_dir``: where the outputs go (default: a temporary folder, removed); ``precision``: the setting of
    :class:`wmhkeras.inference.record.SegmentSettings`; the row's ``precision`` is what ``segment.json`` records.
    """
    import dataclasses

    import numpy as np

    from wmhkeras.inference.record import SegmentSettings
    from wmhkeras.inference.segment import segment

    seen = {"seconds": 0.0, "cpu": 0.0, "calls": 0, "slices": 0, "sizes": set(), "volume_slices": 0}

    def timed(batch):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = np.asarray(seg.predict_fn(batch))  # materialise, so the time is the model's
        seen["seconds"] += time.perf_counter() - start
        seen["cpu"] += time.process_time() - cpu_start
        seen["calls"] += 1
        seen["slices"] += int(batch.shape[0])
        seen["sizes"].add(tuple(int(v) for v in batch.shape[1:3]))
        return out

    class Counted(type(seg)):
        def preprocess(self, *a, **kw):
            slices = super().preprocess(*a, **kw)
            seen["volume_slices"] += int(slices.shape[0])
            return slices

    counted = Counted(**{**{f.name: getattr(seg, f.name) for f in dataclasses.fields(seg)}, "predict_fn": timed})
    settings = SegmentSettings(batch_size=batch_size, tta_flip=tta_flip, precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = segment(counted, [flair], out_dir or tmp, settings)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        subject = result.subjects[0]
        if not subject.ok:
            raise RuntimeError(subject.error)
        used = json.loads(result.record_json.read_text())["model"]["precision"]
    sizes = sorted(seen["sizes"])
    return {"seconds_per_volume": wall, "cpu_seconds_all_threads": cpu, "model_seconds": seen["seconds"],
            "model_cpu_seconds": seen["cpu"], "peak_rss_mb": peak_rss_mb(), "batch_size": batch_size,
            "tta_flip": tta_flip, "model_calls": seen["calls"], "model_slice_calls": seen["slices"],
            "volume_slices": seen["volume_slices"],
            "every_slice_timed": seen["slices"] == seen["volume_slices"] * (2 if tta_flip else 1),
            "model_input_size": list(sizes[0]) if len(sizes) == 1 else [list(v) for v in sizes], "precision": used}


def add_fractions(row: dict, flops: int | None, peak: float, peak_cpu: float, suffix: str = "") -> None:
    """Achieved FLOP/s (wall and per CPU second) of a row with ``slices_per_second`` and
    ``slices_per_cpu_second``, and their fractions of the matmul peak (keys end in ``suffix``)."""
    known = flops is not None
    row["flops_per_second"] = flops * row["slices_per_second"] if known else None
    row["flops_per_cpu_second"] = flops * row["slices_per_cpu_second"] if known else None
    row[f"fraction_of_matmul_peak{suffix}"] = row["flops_per_second"] / peak if known else None
    row[f"fraction_of_matmul_peak_cpu{suffix}"] = row["flops_per_cpu_second"] / peak_cpu if known else None


def card_checkpoint_model(source: Path):
    """``(Keras model, note)`` of the checkpoint an export's model card names as its source, else ``(None, why)``."""
    from wmhkeras.inference.loaders import load_segmenter
    from wmhkeras.inference.sources import inspect_model
    from wmhkeras.io.model_card import ModelCard

    spec = inspect_model(source)
    card_path = ModelCard.find(spec.path if spec.path.is_dir() else spec.path.parent)
    checkpoint = ModelCard.read(card_path).source if card_path else None
    if not checkpoint or not Path(checkpoint).exists():
        return None, f"{spec.format} source without a Keras model; its model card names no checkpoint found here ({checkpoint})"
    try:
        return load_segmenter(checkpoint).model, f"counted on the export's source checkpoint {checkpoint}"
    except Exception as exc:  # report, do not fail the benchmark
        return None, f"the export's source checkpoint {checkpoint} did not load ({exc.__class__.__name__}: {exc})"
