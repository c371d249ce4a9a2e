"""Benchmark ``wmhkeras segment`` and ``wmhkeras evaluate`` on CPU; writes the figures as JSON.

    python bench/segment.py --out bench/results/segment.json            # the full run (minutes)
    python bench/segment.py --out /tmp/quick.json --quick               # a smoke run
    python bench/segment.py --out /tmp/n.json --quick --skip-volume --native RUN_FOLDER   # native section, smoke
    python bench/segment.py --out bench/results/segment_load.json --subjects 200        # load section only (minutes)

What it measures, on the real 182 x 218 x 182 FLAIR of ``$WMH_SHARED_DATA/open_ms_data/patient07``:

1. ``whole_volume``: ``wmhkeras.inference.segment.segment`` end to end (read, preprocess, model, restore, write)
   with the paper's generator (dense U-Net, depth 5, 32 base filters, 224 x 224, random weights), in a
   fresh process so that its peak RSS is the command's own. The model's share of the time is taken by
   wrapping the segmenter's ``predict_fn``; achieved FLOP/s = FLOPs per slice
   (:func:`wmhkeras.models.unet.count_flops`) x slices / model seconds, reported as a fraction of
2. ``matmul_peak``: the best float32 4096 x 4096 ``tf.matmul`` rate measured in the same run. Both are
   also measured per CPU second (process CPU time, all threads): on a machine shared with other jobs
   the wall rates depend on the load, the rates per CPU second hardly do
   (``fraction_of_matmul_peak_cpu``).
3. ``levers``: model throughput on the same slices for batch sizes, eager calls vs ``tf.function``
   with a fixed input signature, XLA (``jit_compile``), and intra-op thread counts (fresh processes).
4. ``evaluate``: ``wmhkeras.evaluation.evaluate.evaluate`` per 1 mm subject (two subjects, with and without QC
   montages; a realistic prediction: the truth dilated by one voxel) and the start-up time of
   ``wmhkeras evaluate --help``.
5. ``native``: the real-data path of ``wmhkeras segment``: the whole FLAIR through ``segment`` with a
   trained model (``--native MODEL``: a run folder, ``.keras`` or SavedModel; default
   ``saved_models/open_ms_flair/saved_model`` when it exists, ``--native none`` skips it), which for a
   ``spacing`` / free-size model runs on the padded 1 mm grid, once without and once with ``tta_flip``
   (``--quick``: without only), each in a fresh process. Every model call goes through the segmenter's
   ``predict_fn`` (also on this path), which is wrapped to count the slice-calls, time them and read the
   in-plane size the model saw; FLOPs per slice are counted at that size (a SavedModel via the Keras
   checkpoint its model card names, else ``null``), and the fractions of the matmul peak are taken as
   for ``whole_volume``. ``targets``: fraction of the matmul peak >= 0.4 and peak RSS under 3 GB
   (3000 MB as this script counts them), for every row measured.
6. ``load`` (``--subjects N``, alone): ``segment`` of N // 10 and of N small synthetic subjects
   (:func:`wmhkeras.data.synth.make_cohort`, 64 x 64 x 32 voxels) with one tiny model (U-Net depth 2, 4 base
   filters, 64 x 64, random weights), each run in a fresh process. Per run: the peak RSS, the RSS after
   every tenth of the subjects, and each subject's time (from the ``progress`` hook of ``segment``).
   ``targets``: peak RSS at N at most 1.2 x the peak at N // 10, and per-subject time flat: in the
   N-subject run, the process CPU time per subject (all threads) of the last tenth at most 1.2 x that of
   the first (medians), and so for its least-squares trend (the first subject, which traces the model,
   left out). Wall times are reported the same way; on a shared machine they move with the other jobs'
   load, CPU times hardly do.

Timings on a shared machine are noisy: the load average is recorded at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    OPEN_MS_DATA,
    PAPER_MODEL,
    REPO,
    add_fractions,
    card_checkpoint_model,
    matmul_peak,
    peak_rss_mb,
    run_child,
    save_random_generator,
    timed_segment,
)

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU benchmark
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = OPEN_MS_DATA
NATIVE_DEFAULT = REPO / "saved_models" / "open_ms_flair" / "saved_model"
FRACTION_TARGET, RSS_TARGET_MB = 0.4, 3000.0


def _child(args) -> dict:
    """Runs in a fresh process: whole-volume segmentation (paper model or native), or model throughput."""
    import tensorflow as tf

    if args.intra:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra)
        tf.config.threading.set_inter_op_parallelism_threads(args.inter or 1)
    from wmhkeras.inference.loaders import load_segmenter

    seg = load_segmenter(args.model)
    if args.child == "throughput":
        x = tf.random.uniform((args.slices, *seg.input_size, 1), seed=0)
        return {"intra_op_threads": args.intra, "inter_op_threads": args.inter or 1,
                **_throughput(seg.predict_fn, x, args.batch_size), "peak_rss_mb": peak_rss_mb()}
    row = timed_segment(seg, args.flair, args.batch_size, args.tta)
    if args.child == "native":  # counted after the peak RSS was read: the copy it builds is not the run's
        row.update(_native_flops(seg, args.model, row["model_input_size"]))
    return row


def _native_flops(seg, source: Path, size: list) -> dict:
    """FLOPs per slice of the segmenter's model at the in-plane ``size`` it saw (``null`` with a reason
    when no Keras model can be had: a SavedModel / TFLite source counts the checkpoint its card names)."""
    import keras

    from wmhkeras.models.unet import count_flops

    model, note = seg.model, None
    if not isinstance(model, keras.Model):
        model, note = card_checkpoint_model(source)
    if model is None or not size or isinstance(size[0], list):
        reason = note if model is None else f"the model saw several in-plane sizes {size}"
        return {"flops_per_slice": None, "flops_note": reason}
    return {"flops_per_slice": count_flops(model, input_size=size), "flops_note": note}


def _throughput(fn, x, batch_size: int, repeats: int = 2) -> dict:
    """Best-of-``repeats`` time of running all slices of ``x`` through ``fn`` in batches (after a warm-up)."""
    fn(x[:batch_size]).numpy()  # trace / warm up
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(0, int(x.shape[0]), batch_size):
            fn(x[i : i + batch_size]).numpy()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu_start)
    n = int(x.shape[0])
    return {"batch_size": batch_size, "slices": n, "seconds": best, "slices_per_second": n / best,
            "cpu_seconds": best_cpu, "slices_per_cpu_second": n / best_cpu}


def _levers(model_path: Path, slices: int) -> list[dict]:
    import tensorflow as tf

    from wmhkeras.inference.loaders import load_segmenter

    seg = load_segmenter(model_path)
    model, (h, w) = seg.model, seg.input_size
    x = tf.random.uniform((slices, h, w, 1), seed=0)
    signature = [tf.TensorSpec((None, h, w, 1), tf.float32)]
    xla = tf.function(lambda b: model(b, training=False), input_signature=signature, jit_compile=True)
    rows = []
    for name, fn, sizes in (
        ("eager model(x)", lambda b: model(b, training=False), (8,)),
        ("tf.function, fixed signature (wmhkeras segment)", seg.predict_fn, (1, 4, 8, 16)),
        ("tf.function + XLA jit_compile", xla, (8,)),
    ):
        for bs in sizes:
            rows.append({"lever": name, **_throughput(fn, x, bs)})
            print(f"  {rows[-1]['lever']}, batch {bs}: {rows[-1]['slices_per_second']:.3f} slices/s, "
                  f"{rows[-1]['slices_per_cpu_second']:.3f} per CPU-s", file=sys.stderr)
    for intra in (1, 2):
        row = run_child(__file__, ["--child", "throughput", "--model", str(model_path), "--intra", str(intra),
                          "--slices", str(slices), "--batch-size", "8"])
        rows.append({"lever": f"intra-op threads {intra} (inter-op 1)", **row})
        print(f"  {rows[-1]['lever']}: {row['slices_per_second']:.3f} slices/s, {row['slices_per_cpu_second']:.3f} per CPU-s",
              file=sys.stderr)
    return rows


def _evaluate_timing() -> dict:
    """``evaluate`` per subject on both open_ms patients (prediction: truth dilated by one voxel)."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    from wmhkeras.data.datasets import Subject, write_manifest
    from wmhkeras.evaluation.evaluate import evaluate

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        preds = tmp / "pred"
        preds.mkdir()
        subjects = []
        for patient in ("patient07", "patient26"):
            truth = nib.load(str(SHARED / patient / "GOLD_STANDARD.nii.gz"))
            mask = ndimage.binary_dilation(np.asarray(truth.dataobj) > 0).astype(np.uint8)
            nib.save(nib.Nifti1Image(mask, truth.affine, truth.header), str(preds / f"{patient}_wmh_mask.nii.gz"))
            subjects.append(Subject(patient, "open_ms", SHARED / patient / "FLAIR.nii.gz",
                                    label=SHARED / patient / "GOLD_STANDARD.nii.gz"))
        manifest = write_manifest(subjects, tmp / "manifest.csv")
        for qc in (False, True):
            start, cpu_start = time.perf_counter(), time.process_time()
            result = evaluate(preds, manifest, tmp / f"ev_{qc}", qc=qc)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            # CPU seconds of this (single-threaded) work are what the wall time would be on an idle machine
            out["with_qc" if qc else "metrics_only"] = {
                "subjects": len(result.rows), "seconds_total": wall, "seconds_per_subject": wall / len(result.rows),
                "cpu_seconds_per_subject": cpu / len(result.rows),
                "per_subject_loop_seconds": [r["seconds"] for r in result.rows],
                "dice": [r["dice"] for r in result.rows],
            }
    # `wmhkeras evaluate --help`: the CLI group, the command module, and click's help, in a fresh interpreter
    helper = "from wmhkeras.cli.main import main; from wmhkeras.cli.evaluate import evaluate_command as c; c(['--help'])"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", helper], capture_output=True, check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    out["cli_help_seconds"] = time.perf_counter() - start
    probe = "import sys, wmhkeras.cli.main, wmhkeras.cli.evaluate, wmhkeras.evaluation.evaluate; print('tensorflow' in sys.modules)"
    out["imports_tensorflow"] = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                                               env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.strip() == "True"
    return out


def _whole_volume(args, model_path: Path) -> dict:
    """The paper-sized model through ``segment`` on the whole FLAIR, in a fresh process."""
    import nibabel as nib

    vol = run_child(__file__, ["--child", "volume", "--model", str(model_path), "--flair", str(args.flair),
                      "--batch-size", str(args.batch_size)])
    vol["slices"] = int(nib.load(str(args.flair)).shape[2])
    vol["slices_per_second"] = vol["slices"] / vol["model_seconds"]
    vol["slices_per_cpu_second"] = vol["slices"] / vol["model_cpu_seconds"]
    vol["model_share_of_wall"] = vol["model_seconds"] / vol["seconds_per_volume"]
    print(f"whole volume: {vol['seconds_per_volume']:.1f} s, {vol['slices_per_second']:.3f} slices/s, "
          f"peak RSS {vol['peak_rss_mb']:.0f} MB", file=sys.stderr)
    return {"flair": str(args.flair), **vol}


def _native_model(value: str | None) -> Path | None:
    """The ``--native`` model: ``none`` skips; by default the repo's SavedModel when there is one."""
    if value is not None and value.lower() == "none":
        return None
    path = Path(value).resolve() if value else NATIVE_DEFAULT
    if not path.exists():
        if value:
            raise SystemExit(f"--native {value}: not found")
        print(f"native: skipped, {path.relative_to(REPO)} does not exist (pass --native MODEL)", file=sys.stderr)
        return None
    return path


def _native(args) -> dict | None:
    """Section 5: a trained model through ``segment`` on the whole FLAIR, without and with flip TTA."""
    model = _native_model(args.native)
    if model is None:
        return None
    section: dict = {"model": str(model), "flair": str(args.flair)}
    for name, tta in (("without_tta", False), ("with_tta", True)):
        if tta and args.quick:
            section[name] = None  # --quick: one child only
            continue
        row = run_child(__file__, ["--child", "native", "--model", str(model), "--flair", str(args.flair),
                          "--batch-size", str(args.batch_size), *(["--tta"] if tta else [])])
        row["slices_per_second"] = row["model_slice_calls"] / row["model_seconds"]
        row["slices_per_cpu_second"] = row["model_slice_calls"] / row["model_cpu_seconds"]
        row["model_share_of_wall"] = row["model_seconds"] / row["seconds_per_volume"]
        section[name] = row
        flops = row["flops_per_slice"]
        print(f"native ({name.replace('_', ' ')}): {row['seconds_per_volume']:.1f} s/volume, model "
              f"{row['model_seconds']:.1f} s, {row['model_slice_calls']} slice-calls at "
              f"{row['model_input_size']}, {'?' if flops is None else f'{flops / 1e9:.2f}'} GFLOP/slice, "
              f"peak RSS {row['peak_rss_mb']:.0f} MB", file=sys.stderr)
    return section


def _native_targets(section: dict, peak: float, peak_cpu: float) -> None:
    """Fractions of the native rows, the section's ``targets`` (every measured row) and the summary line."""
    rows = {k: section[k] for k in ("without_tta", "with_tta") if section.get(k)}
    for row in rows.values():
        add_fractions(row, row["flops_per_slice"], peak, peak_cpu)
    fractions = [r["fraction_of_matmul_peak"] for r in rows.values()]
    fractions_cpu = [r["fraction_of_matmul_peak_cpu"] for r in rows.values()]
    section["targets"] = {
        "rows": list(rows),
        "fraction_of_matmul_peak_ge_0_4": None if None in fractions else min(fractions) >= FRACTION_TARGET,
        "fraction_of_matmul_peak_cpu_ge_0_4": None if None in fractions_cpu else min(fractions_cpu) >= FRACTION_TARGET,
        "peak_rss_under_3gb": max(r["peak_rss_mb"] for r in rows.values()) < RSS_TARGET_MB,
    }
    for name, row in rows.items():
        fraction, fraction_cpu = row["fraction_of_matmul_peak"], row["fraction_of_matmul_peak_cpu"]
        print(f"native ({name.replace('_', ' ')}): " + ("FLOPs unknown" if fraction is None else
              f"{fraction:.2f} of the matmul peak ({peak / 1e9:.1f} GFLOP/s), {fraction_cpu:.2f} per CPU second"),
              file=sys.stderr)
    targets = section["targets"]
    print(f"native targets ({', '.join(rows)}): fraction >= {FRACTION_TARGET}: {targets['fraction_of_matmul_peak_ge_0_4']} "
          f"(per CPU second: {targets['fraction_of_matmul_peak_cpu_ge_0_4']}), peak RSS < {RSS_TARGET_MB:.0f} MB: "
          f"{targets['peak_rss_under_3gb']}", file=sys.stderr)


def _quick_levers(model_path: Path) -> list[dict]:
    import tensorflow as tf

    from wmhkeras.inference.loaders import load_segmenter

    seg = load_segmenter(model_path)
    row = _throughput(seg.predict_fn, tf.random.uniform((4, 224, 224, 1)), 4, repeats=1)
    return [{"lever": "tf.function, fixed signature", **row}]


def _segment_benchmark(args, report: dict) -> None:
    """Whole-volume run, native section, levers and matmul peak (TensorFlow); fills ``report`` in place."""
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "paper.keras"
        flops = save_random_generator(model_path)
        report["model"]["flops_per_slice"] = flops
        report["model"]["weights"] = "random (timing only)"
        n = 1024 if args.quick else args.matmul_n
        peaks = [matmul_peak(n)]
        print(f"matmul: {peaks[0][0] / 1e9:.1f} GFLOP/s, {peaks[0][1] / 1e9:.1f} GFLOP/CPU-s; "
              f"model: {flops / 1e9:.1f} GFLOP/slice", file=sys.stderr)
        if not args.skip_volume:
            report["whole_volume"] = _whole_volume(args, model_path)
            peaks.append(matmul_peak(n))
        native = _native(args)
        if native:
            report["native"] = native
            peaks.append(matmul_peak(n))
        report["levers"] = _quick_levers(model_path) if args.quick else _levers(model_path, args.lever_slices)
        peaks.append(matmul_peak(n))
    # The machine's peak is the best matmul rate seen (measured at the start, between sections and at the end).
    # On a shared machine wall rates depend on the other jobs; rates per CPU second (all threads) do not,
    # so both fractions are reported.
    peak, peak_cpu = max(p[0] for p in peaks), max(p[1] for p in peaks)
    report["matmul_peak"] = {"n": n, "flops_per_second": peak, "flops_per_cpu_second": peak_cpu,
                             "measurements": [{"flops_per_second": w, "flops_per_cpu_second": c} for w, c in peaks]}
    for row in [report.get("whole_volume"), *report["levers"]]:
        if row:
            add_fractions(row, flops, peak, peak_cpu)
    if "whole_volume" in report:
        vol = report["whole_volume"]
        print(f"whole volume: {vol['fraction_of_matmul_peak']:.2f} of the matmul peak ({peak / 1e9:.1f} GFLOP/s), "
              f"{vol['fraction_of_matmul_peak_cpu']:.2f} per CPU second ({peak_cpu / 1e9:.1f} GFLOP/CPU-s)",
              file=sys.stderr)
    if native:
        _native_targets(native, peak, peak_cpu)


def _native_only(args) -> dict | None:
    """Section 5 alone, with the matmul peak measured before and after it (``--native-only``)."""
    n = 1024 if args.quick else args.matmul_n
    peaks = [matmul_peak(n)]
    native = _native(args)
    peaks.append(matmul_peak(n))
    if native:
        native["matmul_peak"] = {"n": n, "flops_per_second": max(p[0] for p in peaks),
                                 "flops_per_cpu_second": max(p[1] for p in peaks)}
        _native_targets(native, native["matmul_peak"]["flops_per_second"], native["matmul_peak"]["flops_per_cpu_second"])
    return native


# === 6. Load: many small subjects ===

LOAD_SHAPE, LOAD_TARGET = (64, 64, 32), 1.2


def _rss_mb() -> float:
    """Resident set size now (Linux ``/proc/self/statm``), in MB as :func:`benchlib.peak_rss_mb` counts them."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024.0 / 1024.0


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _trend_ratio(values: list[float]) -> float:
    """The least-squares line through per-subject times (the first subject, which traces the model, left out):
    its value at the last subject over its value at the second. Uses every subject, so bursts of load from
    other jobs on a shared machine average out where the medians of two tenths do not."""
    y = values[1:]
    if len(y) < 2:
        return 1.0
    mx, my = (len(y) - 1) / 2, sum(y) / len(y)
    slope = sum((i - mx) * (v - my) for i, v in enumerate(y)) / sum((i - mx) ** 2 for i in range(len(y)))
    return (my + slope * (len(y) - 1 - mx)) / (my - slope * mx)


def _load_child(args) -> dict:
    """Runs in a fresh process: ``segment`` of every subject of ``args.manifest``, each subject timed."""
    from wmhkeras.inference.segment import segment

    times, cpu, rss = [], [], []

    def progress(items, total=None):
        last, last_cpu = time.perf_counter(), time.process_time()
        for item in items:
            yield item  # segment works on the subject until it asks for the next one
            now, now_cpu = time.perf_counter(), time.process_time()
            times.append(now - last)
            cpu.append(now_cpu - last_cpu)
            rss.append(_rss_mb())
            last, last_cpu = now, now_cpu

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = segment(args.model, [args.manifest], tmp, progress=progress)
        wall = time.perf_counter() - start
    if not result.ok:
        raise RuntimeError(f"{result.n_failed} subjects failed")
    tenth = max(1, len(times) // 10)
    return {"subjects": len(times), "seconds_total": wall, "peak_rss_mb": peak_rss_mb(),
            "rss_mb_every_tenth": [round(r, 1) for r in rss[tenth - 1::tenth]],
            "first_tenth_median_s": _median(times[:tenth]), "last_tenth_median_s": _median(times[-tenth:]),
            "first_tenth_mean_s": sum(times[:tenth]) / tenth, "last_tenth_mean_s": sum(times[-tenth:]) / tenth,
            "first_tenth_cpu_median_s": _median(cpu[:tenth]), "last_tenth_cpu_median_s": _median(cpu[-tenth:]),
            "trend_ratio": _trend_ratio(times), "cpu_trend_ratio": _trend_ratio(cpu),
            "seconds_per_subject": times, "cpu_seconds_per_subject": cpu}


def _load_cohort(folder: Path, subjects: int) -> tuple[Path, dict[int, Path]]:
    """The tiny model and, for N // 10 and N subjects, a manifest of the first ones of one synthetic cohort."""
    import keras

    from wmhkeras.data.datasets import read_manifest, write_manifest
    from wmhkeras.data.synth import SiteParams, make_cohort
    from wmhkeras.models import build_generator

    keras.utils.set_random_seed(0)
    model = folder / "tiny.keras"
    build_generator("unet", input_shape=(*LOAD_SHAPE[:2], 1), depth=2, base_filters=4).save(model)
    site = SiteParams("load", (2.0, 2.0, 4.0), LOAD_SHAPE)
    manifest = make_cohort(folder / "cohort", subjects=subjects, sites=1, seed=0, site_params=[site]).manifest
    listed = read_manifest(manifest)
    manifests = {n: write_manifest(listed[:n], manifest.with_name(f"manifest_{n}.csv"))
                 for n in sorted({max(1, subjects // 10), subjects})}
    return model, manifests


def _load(subjects: int) -> dict:
    """Section 6: peak RSS and per-subject time of ``segment`` at N // 10 and N subjects (fresh processes)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model, manifests = _load_cohort(Path(tmp), subjects)
        section: dict = {"volume_shape": list(LOAD_SHAPE), "model": "unet, depth 2, 4 base filters, 64 x 64, random "
                         "weights", "cohort_seconds": time.perf_counter() - start, "runs": {}}
        for n, manifest in manifests.items():
            row = run_child(__file__, ["--child", "load", "--model", str(model), "--manifest", str(manifest)])
            section["runs"][str(n)] = row
            print(f"load, {n} subjects: peak RSS {row['peak_rss_mb']:.0f} MB, {row['seconds_total']:.1f} s; per subject "
                  f"(median) first tenth {row['first_tenth_median_s'] * 1000:.0f} ms, last tenth "
                  f"{row['last_tenth_median_s'] * 1000:.0f} ms", file=sys.stderr)
    small, large = (section["runs"][str(n)] for n in manifests)
    rss_ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    cpu = large["last_tenth_cpu_median_s"] / large["first_tenth_cpu_median_s"]
    wall = large["last_tenth_median_s"] / large["first_tenth_median_s"]
    flat = max(cpu, large["cpu_trend_ratio"]) <= LOAD_TARGET
    section["targets"] = {"peak_rss_ratio": rss_ratio, "peak_rss_ratio_le_1_2": rss_ratio <= LOAD_TARGET,
                          "cpu_last_over_first_tenth": cpu, "cpu_trend_ratio": large["cpu_trend_ratio"],
                          "per_subject_cpu_time_flat": flat,
                          "wall_last_over_first_tenth": wall, "wall_trend_ratio": large["trend_ratio"]}
    print(f"load targets: peak RSS ratio {rss_ratio:.3f} (<= {LOAD_TARGET}: {rss_ratio <= LOAD_TARGET}); per-subject "
          f"CPU time, last over first tenth (medians) {cpu:.3f}, fitted trend {large['cpu_trend_ratio']:.3f} (flat: "
          f"{flat}); wall time {wall:.3f}, trend {large['trend_ratio']:.3f}", file=sys.stderr)
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--flair", type=Path, default=SHARED / "patient07" / "FLAIR.nii.gz")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of the whole-volume run")
    parser.add_argument("--lever-slices", type=int, default=16, help="slices per lever measurement")
    parser.add_argument("--matmul-n", type=int, default=4096)
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 lever slices, 1024 matmul, no thread children, native without TTA only")
    parser.add_argument("--skip-volume", action="store_true", help="skip the whole-volume run of the paper model")
    parser.add_argument("--native", metavar="MODEL", help="trained model (run folder, .keras, SavedModel) for the "
                        "native-resolution section; default saved_models/open_ms_flair/saved_model if it exists; none: skip")
    parser.add_argument("--evaluate-only", action="store_true", help="only the evaluate timings (no TensorFlow)")
    parser.add_argument("--subjects", type=int, metavar="N", help="only the load section: segment N // 10 and N small "
                        "synthetic subjects (64 x 64 x 32), each in a fresh process")
    # internal: child processes
    parser.add_argument("--native-only", action="store_true", help="only section 5 (and the matmul peak)")
    parser.add_argument("--child", choices=("volume", "native", "throughput", "load"), help=argparse.SUPPRESS)
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tta", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--intra", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--inter", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--slices", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.child:
        print(json.dumps(_load_child(args) if args.child == "load" else _child(args)))
        return
    if args.out is None:
        parser.error("--out FILE.json is required")

    from wmhkeras.io.provenance import package_versions, utc_now

    report: dict = {"created": utc_now(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg(), "versions": package_versions()}
    if args.subjects:
        report["load"] = _load(args.subjects)
        _write_report(args.out, report)
        return
    if args.native_only:
        report["native"] = _native_only(args)
        _write_report(args.out, report)
        return
    if not args.evaluate_only:
        report["model"] = {k: list(v) if isinstance(v, tuple) else v for k, v in PAPER_MODEL.items()}
        _segment_benchmark(args, report)
    report["evaluate"] = _evaluate_timing()
    ev = report["evaluate"]
    print(f"evaluate: {ev['metrics_only']['seconds_per_subject']:.2f} s/subject wall, "
          f"{ev['metrics_only']['cpu_seconds_per_subject']:.2f} s CPU (metrics); {ev['with_qc']['seconds_per_subject']:.2f} s "
          f"wall, {ev['with_qc']['cpu_seconds_per_subject']:.2f} s CPU (with QC)", file=sys.stderr)
    _write_report(args.out, report)


def _write_report(out: Path, report: dict) -> None:
    report["load_average_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
