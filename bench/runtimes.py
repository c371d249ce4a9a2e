"""One table of every inference path side by side: Keras float32 and bfloat16, SavedModel float32 and
bfloat16, TFLite fp32 / fp16 / dynamic-range, for the paper-size model and the shipped real-data model.

    python bench/runtimes.py --out bench/results/runtimes.json --doc docs/performance.md   # make bench (~15 min)
    python bench/runtimes.py --out /tmp/r.json --quick                                     # smoke run (~1 min)
    python bench/runtimes.py --out bench/results/runtimes.json --doc docs/performance.md --table-only   # re-render

For each model the artifacts come from ``wmhkeras export`` itself (``--saved-model float32,bfloat16
--tflite fp32,fp16,dynamic``: every file written and verified by the product):

* ``paper``: the paper's generator (dense U-Net, depth 5, 32 base filters, 224 x 224 ``fixed``
  resampling, random weights: speed does not depend on the weight values);
* ``shipped``: ``saved_models/open_ms_flair`` (``spacing`` resampling, 1 mm, padded slices), exported
  again from the checkpoint its model card names when it exists here (``make pretrained`` makes it);
  otherwise only the shipped files are timed (SavedModel and fp16 TFLite, plus fp32 / dynamic TFLite
  converted from that SavedModel), and the Keras and bfloat16 rows say why they are missing.

Each path segments the same 182 x 218 x 182 FLAIR (open_ms patient07 from ``$WMH_SHARED_DATA``, else a
synthetic volume of that size) through ``wmhkeras.inference.segment.segment`` in a fresh process
(batch 8, default options), so the peak RSS is the path's own and the seconds per volume are read to
write, after a warm-up on 8 slices of the same scan (one-time TensorFlow / LiteRT set-up left out).
Every model call is timed (``benchlib.timed_segment``): slices per second of the model, and
achieved FLOP/s = FLOPs per slice (``count_flops`` at the size the model saw) x slices per second, as a
fraction of the float32 and of the bfloat16 ``tf.matmul`` peak (4096 x 4096, best of the measurements
taken before, between and after the models). Mask Dice and max |probability difference| are against
the same model's Keras float32 result (else its float32 SavedModel). The Keras bfloat16 row is
``segment --precision bfloat16``'s model (``mixed_bfloat16``) without its parity gate, which could fall back
to float32: the mask Dice column is the parity.

``--doc FILE`` rewrites the table between the markers ``<!-- runtimes:begin -->`` and
``<!-- runtimes:end -->`` in FILE (``docs/performance.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    OPEN_MS_DATA,
    PAPER_MODEL,
    REPO,
    add_fractions,
    matmul_peak,
    peak_rss_mb,
    run_child,
    save_random_generator,
    timed_segment,
)

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU benchmark
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHARED = OPEN_MS_DATA
SHIPPED = REPO / "saved_models" / "open_ms_flair"
QUICK = {"arch": "dense_unet", "input_shape": (64, 64, 1), "depth": 2, "base_filters": 4}
VOLUME_SHAPE, QUICK_SHAPE = (182, 218, 182), (64, 72, 12)
#: (row name, how segment runs it: artifact key, segment precision, runtime text)
PATHS = (
    ("Keras float32", "keras", "float32", "TensorFlow (oneDNN)"),
    ("Keras bfloat16", "keras", "bfloat16", "TensorFlow (oneDNN), mixed_bfloat16"),
    ("SavedModel float32", "saved_model", "float32", "TensorFlow (oneDNN)"),
    ("SavedModel bfloat16", "saved_model_bf16", "float32", "TensorFlow (oneDNN), mixed_bfloat16 inside"),
    ("TFLite fp32", "fp32", "float32", "LiteRT (XNNPACK)"),
    ("TFLite fp16", "fp16", "float32", "LiteRT (XNNPACK)"),
    ("TFLite dynamic", "dynamic", "float32", "LiteRT (dynamic-range int8)"),
)
MARK_BEGIN, MARK_END = "<!-- runtimes:begin -->", "<!-- runtimes:end -->"
#: The runtime targets (benchmarks, not tests): the shipped model's seconds per volume, the parity Dice, the
#: bfloat16 speed-up and the fraction of the paper model's speed.
SHIPPED_SECONDS, PARITY_DICE, BF16_SPEEDUP, PAPER_FRACTION = 30.0, 0.99, 1.5, 0.8


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# === Inputs: the volume and the artifacts ===


def _volume(folder: Path, quick: bool) -> tuple[Path, str]:
    """The FLAIR every path segments: open_ms patient07 when shared, else a synthetic volume."""
    real = SHARED / "patient07" / "FLAIR.nii.gz"
    if real.exists() and not quick:
        return real, f"open_ms_data patient07 FLAIR ({'x'.join(map(str, VOLUME_SHAPE))}, 1 mm)"
    import nibabel as nib
    import numpy as np

    from wmhkeras.data.synth import SiteParams, make_subject

    shape = QUICK_SHAPE if quick else VOLUME_SHAPE
    flair, _t1, _label, affine = make_subject(0, SiteParams("bench", (1.0, 1.0, 1.0), shape, 400.0, 600.0, 1.0, 1.0,
                                                            0.03, 0.1))
    path = folder / "synthetic_FLAIR.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(flair, np.float32), affine), str(path))
    return path, f"synthetic volume {'x'.join(map(str, shape))} at 1 mm (wmhkeras.data.synth, seed 0)"


def _export(source: Path, out: Path, bf16: bool = True) -> dict[str, Path]:
    """``wmhkeras export`` of ``source`` with every variant timed here; artifact key -> path."""
    from wmhkeras.export import export

    kinds = ("float32", "bfloat16") if bf16 else ("float32",)
    report = export(source, out, tflite=("fp32", "fp16", "dynamic"), saved_models=kinds)
    if not report.passed:
        log(f"note: export of {source} has artifacts outside tolerance: {report.failures}")
    paths = {"keras": Path(source), "saved_model": out / "saved_model", "saved_model_bf16": out / "saved_model_bf16"}
    paths.update({v: out / "tflite" / f"model_{v}.tflite" for v in ("fp32", "fp16", "dynamic")})
    return {k: p for k, p in paths.items() if p.exists()}


def _paper_artifacts(folder: Path, quick: bool) -> tuple[dict[str, Path], dict]:
    spec = QUICK if quick else PAPER_MODEL
    path = folder / "paper.keras"
    save_random_generator(path, spec)
    info = {"name": "paper" if not quick else "tiny (quick)", "model": {k: list(v) if isinstance(v, tuple) else v
                                                                        for k, v in spec.items()},
            "weights": "random (seed 0; timing only)", "resample": "fixed"}
    return _export(path, folder / "paper_export"), info


def _shipped_checkpoint() -> Path | None:
    from wmhkeras.io.model_card import ModelCard

    card = ModelCard.find(SHIPPED)
    source = ModelCard.read(card).source if card else None
    return Path(source) if source and Path(source).exists() else None


def _shipped_artifacts(folder: Path) -> tuple[dict[str, Path], dict] | None:
    """The shipped model's paths: re-exported from its checkpoint when here, else the shipped files."""
    if not (SHIPPED / "saved_model").exists():
        return None
    info = {"name": "shipped", "model": str(SHIPPED.relative_to(REPO)), "resample": "spacing (1 mm, padded)"}
    checkpoint = _shipped_checkpoint()
    if checkpoint is not None:
        info["exported_from"] = str(checkpoint)
        return _export(checkpoint, folder / "shipped_export"), info
    import tensorflow as tf

    from wmhkeras.export.tflite import convert_tflite

    paths = {"saved_model": SHIPPED / "saved_model", "fp16": SHIPPED / "tflite" / "model_fp16.tflite"}
    loaded = tf.saved_model.load(str(paths["saved_model"]))
    for variant in ("fp32", "dynamic"):
        paths[variant] = folder / f"shipped_{variant}.tflite"
        paths[variant].write_bytes(convert_tflite(loaded, variant, None))
    info["missing"] = ("no Keras checkpoint here (the model card's source does not exist; `make pretrained` "
                       "makes it): Keras and bfloat16 rows not measured")
    return paths, info


# === One path in a fresh process ===


def _child(args) -> dict:
    from dataclasses import replace

    import nibabel as nib
    import numpy as np

    from wmhkeras.inference.loaders import load_segmenter
    from wmhkeras.inference.precision import bfloat16_predict_fn
    from wmhkeras.io.naming import PROB_SUFFIX

    seg = load_segmenter(args.source)
    if args.precision == "bfloat16":
        # The path itself, without segment's parity gate (which may fall back to float32 for a model whose
        # probabilities crowd near the threshold, like random weights): the table reports the mask Dice.
        seg = replace(seg, predict_fn=bfloat16_predict_fn(seg.model), precision={
            "requested": "bfloat16", "used": "bfloat16", "reason": "benchmark: forced, no parity gate",
            "parity_dice": None, "speedup": None})
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up on 8 middle slices of the same scan: TensorFlow's first eager ops (preprocessing,
        # oneDNN and XNNPACK set-up) are paid once per process, not per volume.
        img = nib.load(str(args.flair))
        mid = img.shape[2] // 2
        nib.save(img.slicer[:, :, mid - 4:mid + 4], str(Path(tmp) / "warmup.nii.gz"))
        timed_segment(seg, Path(tmp) / "warmup.nii.gz", args.batch_size, out_dir=Path(tmp) / "warmup",
                      precision=args.precision)
        row = timed_segment(seg, args.flair, args.batch_size, out_dir=Path(tmp) / "volume", precision=args.precision)
        (prob,) = (Path(tmp) / "volume").rglob(f"*{PROB_SUFFIX}")
        np.save(args.save, np.asarray(nib.load(str(prob)).dataobj, np.float32))
    return row


def _flops(keras_path: Path | None, size) -> int | None:
    """FLOPs per slice of the Keras model at the in-plane ``size`` the paths saw (``None``: unknown)."""
    if keras_path is None or not size or isinstance(size[0], list):
        return None
    from wmhkeras.inference.loaders import load_segmenter
    from wmhkeras.models.unet import count_flops

    return count_flops(load_segmenter(keras_path).model, input_size=size)


def _model_rows(paths: dict[str, Path], info: dict, flair: Path, folder: Path, batch_size: int) -> list[dict]:
    import numpy as np

    rows, probs = [], {}
    for name, key, precision, runtime in PATHS:
        row = {"model": info["name"], "path": name, "runtime": runtime, "artifact": None}
        if key not in paths:
            row["missing"] = info.get("missing") or f"{key}: not written by the export (see its report)"
            rows.append(row)
            log(f"{info['name']:>8} | {name:<20} | not measured: {row['missing']}")
            continue
        save = folder / f"{info['name']}_{key}_{precision}.npy"
        row["artifact"] = str(paths[key])
        row.update(run_child(__file__, ["--child", "--source", str(paths[key]), "--precision", precision,
                                        "--flair", str(flair), "--batch-size", str(batch_size), "--save", str(save)]))
        row["slices_per_second"] = row["model_slice_calls"] / row["model_seconds"]
        row["slices_per_cpu_second"] = row["model_slice_calls"] / row["model_cpu_seconds"]
        probs[name] = save
        rows.append(row)
        log(f"{info['name']:>8} | {name:<20} | {row['slices_per_second']:6.2f} slices/s | "
            f"{row['seconds_per_volume']:6.1f} s/volume | {row['peak_rss_mb']:6.0f} MB")
    reference = next((n for n in ("Keras float32", "SavedModel float32") if n in probs), None)
    ref = np.load(probs[reference]) if reference else None
    size = next((r["model_input_size"] for r in rows if r.get("model_input_size")), None)
    flops = _flops(paths.get("keras"), size)
    for row in rows:
        if row["path"] not in probs:
            continue
        row["flops_per_slice"] = flops
        p = np.load(probs[row["path"]])
        a, b = p >= 0.5, ref >= 0.5
        total = int(a.sum()) + int(b.sum())
        row["reference"] = reference
        row["mask_dice_vs_float32"] = 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
        row["voxel_agreement_vs_float32"] = float((a == b).mean())
        row["max_abs_diff_vs_float32"] = float(np.abs(p - ref).max())
        row["reference_mask_voxels"] = int(b.sum())
    return rows


# === The table ===


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _cpu_model() -> str:
    """The CPU's model name and its 16-bit flags (Linux ``/proc/cpuinfo``; elsewhere the platform)."""
    import platform

    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    name = " ".join(fields.get("model name\t", fields.get("model name", "?")).split())
    flags = set(fields.get("flags\t\t", fields.get("flags", "")).split())
    wanted = [f for f in ("avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(wanted) or 'no AVX-512'})"


def table(report: dict) -> str:
    """The markdown table of ``report`` (one row per model and path)."""
    peaks = report["matmul_peak"]
    head = ("| model | path | runtime | slices/s | s/volume | peak RSS | fraction of fp32 peak | "
            "fraction of bf16 peak | mask Dice vs float32 | max abs diff |\n" + "| --- " * 10 + "|")
    lines = [head]
    for row in report["rows"]:
        if "slices_per_second" not in row:
            lines.append(f"| {row['model']} | {row['path']} | {row['runtime']} | not measured: {row['missing']} "
                         "| | | | | | |")
            continue
        lines.append(
            f"| {row['model']} | {row['path']} | {row['runtime']} | {row['slices_per_second']:.2f} | "
            f"{row['seconds_per_volume']:.1f} | {row['peak_rss_mb'] / 1000:.2f} GB | "
            f"{_fmt(row.get('fraction_of_matmul_peak'), '.2f')} | {_fmt(row.get('fraction_of_matmul_peak_bf16'), '.2f')} | "
            f"{row['mask_dice_vs_float32']:.4f} | {row['max_abs_diff_vs_float32']:.1e} |")
    lines.append("")
    lines.append(f"Matmul peaks (4096 x 4096, best of {len(peaks['float32'])}): float32 "
                 f"{max(w for w, _ in peaks['float32']) / 1e9:.0f} GFLOP/s, bfloat16 "
                 f"{max(w for w, _ in peaks['bfloat16']) / 1e9:.0f} GFLOP/s. Volume: {report['volume']}. "
                 f"Measured {report['created']} with `{report['command']}` "
                 f"(load average {report['load_average_start'][0]:.1f} at the start, "
                 f"{report['load_average_end'][0]:.1f} at the end; {report['cpu_count']} CPUs: {report.get('cpu', '?')}).")
    return "\n".join(lines)


def _targets(rows: list[dict]) -> dict:
    """The runtime targets (:data:`SHIPPED_SECONDS` ...) on what was measured (``None``: not measured)."""
    def get(model, path):
        return next((r for r in rows if r["model"] == model and r["path"] == path and "slices_per_second" in r), None)

    shipped = [r for r in rows if r["model"] == "shipped" and "slices_per_second" in r]
    fast = [r for r in shipped if r["mask_dice_vs_float32"] >= PARITY_DICE]
    best = min(fast, key=lambda r: r["seconds_per_volume"]) if fast else None
    f32, bf16 = get("paper", "Keras float32"), get("paper", "Keras bfloat16")
    speedup = bf16["slices_per_second"] / f32["slices_per_second"] if f32 and bf16 else None
    return {
        "shipped_fastest_path_passing_parity": best and best["path"],
        "shipped_seconds_per_volume": best and best["seconds_per_volume"],
        "shipped_le_30_s": best and best["seconds_per_volume"] <= SHIPPED_SECONDS,
        "paper_bf16_over_fp32_slices_per_second": speedup,
        "paper_bf16_ge_1_5x": speedup and speedup >= BF16_SPEEDUP,
        "paper_fp32_fraction_of_fp32_peak": f32 and f32.get("fraction_of_matmul_peak"),
        "paper_fp32_fraction_ge_0_8": f32 and f32.get("fraction_of_matmul_peak") is not None
        and f32["fraction_of_matmul_peak"] >= PAPER_FRACTION,
    }


def write_doc(doc: Path, text: str) -> None:
    """Replace what lies between the markers in ``doc`` with ``text``."""
    content = doc.read_text()
    if MARK_BEGIN not in content or MARK_END not in content:
        raise SystemExit(f"{doc}: no {MARK_BEGIN} ... {MARK_END} markers to write the table between")
    head, rest = content.split(MARK_BEGIN, 1)
    _, tail = rest.split(MARK_END, 1)
    doc.write_text(f"{head}{MARK_BEGIN}\n{text}\n{MARK_END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--doc", type=Path, help="markdown file whose runtimes markers receive the table")
    parser.add_argument("--quick", action="store_true", help="smoke run: a tiny model, a small synthetic volume, "
                        "no shipped model, 1024 matmul")
    parser.add_argument("--models", default="paper,shipped", help="comma-separated: paper, shipped")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--matmul-n", type=int, default=4096)
    parser.add_argument("--table-only", action="store_true", help="measure nothing: print (and with --doc write) "
                        "the table of the existing --out JSON")
    # internal: one path in a fresh process
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--flair", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.child:
        print(json.dumps(_child(args)))
        return
    if args.out is None:
        parser.error("--out FILE.json is required")
    if args.table_only:
        text = table(json.loads(args.out.read_text()))
        log(text)
        if args.doc:
            write_doc(args.doc, text)
        return
    import logging

    logging.basicConfig(level=logging.WARNING)
    from wmhkeras.io.provenance import package_versions, utc_now

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    n = 1024 if args.quick else args.matmul_n
    report: dict = {"created": utc_now(), "command": " ".join(["python", *sys.argv]), "cpu_count": os.cpu_count(),
                    "cpu": _cpu_model(),
                    "load_average_start": os.getloadavg(), "versions": package_versions(),
                    "batch_size": args.batch_size, "models": [], "rows": []}
    peaks = {"float32": [], "bfloat16": []}

    def measure_peaks():
        for dtype in peaks:
            peaks[dtype].append(matmul_peak(n, dtype))
        log(f"matmul peak: float32 {peaks['float32'][-1][0] / 1e9:.0f}, bfloat16 {peaks['bfloat16'][-1][0] / 1e9:.0f} GFLOP/s")

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        flair, report["volume"] = _volume(folder, args.quick)
        measure_peaks()
        for name in models:
            made = _paper_artifacts(folder, args.quick) if name == "paper" else (
                None if args.quick else _shipped_artifacts(folder))
            if made is None:
                log(f"{name}: skipped ({'--quick' if args.quick else f'{SHIPPED} does not exist'})")
                continue
            paths, info = made
            report["models"].append(info)
            report["rows"] += _model_rows(paths, info, flair, folder, args.batch_size)
            measure_peaks()
    report["matmul_peak"] = {"n": n, **peaks}
    best = {d: (max(w for w, _ in v), max(c for _, c in v)) for d, v in peaks.items()}
    for row in report["rows"]:
        if "slices_per_second" in row:
            add_fractions(row, row["flops_per_slice"], *best["bfloat16"], suffix="_bf16")
            add_fractions(row, row["flops_per_slice"], *best["float32"])
    report["targets"] = _targets(report["rows"])
    report["seconds"] = time.perf_counter() - start
    report["load_average_end"] = os.getloadavg()
    report["peak_rss_mb_parent"] = peak_rss_mb()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = table(report)
    log(text)
    log(f"targets: {json.dumps(report['targets'])}")
    if args.doc:
        write_doc(args.doc, text)
        log(f"wrote the table into {args.doc}")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
