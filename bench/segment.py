"""Benchmark ``wmhkeras segment`` and ``wmhkeras evaluate`` on CPU; writes the figures as JSON.

    python bench/segment.py --out bench/results/segment.json            # the full run (minutes)
    python bench/segment.py --out /tmp/quick.json --quick               # a smoke run

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

Timings on a shared machine are noisy: the load average is recorded at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU benchmark
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WMH_SHARED_DATA", REPO.parent / "shared" / "data")) / "open_ms_data"
PAPER_MODEL = {"arch": "dense_unet", "input_shape": (224, 224, 1), "depth": 5, "base_filters": 32}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _build_model(path: Path) -> int:
    """Save the paper-sized generator (random weights) to ``path``; return its FLOPs per slice."""
    import keras

    from wmhkeras.models import build_generator, count_flops

    keras.utils.set_random_seed(0)
    model = build_generator(PAPER_MODEL["arch"], **{k: v for k, v in PAPER_MODEL.items() if k != "arch"})
    model.save(path)
    return count_flops(model)


def _child(args) -> dict:
    """Runs in a fresh process: whole-volume segmentation, or model throughput with given threads."""
    import tensorflow as tf

    if args.intra:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra)
        tf.config.threading.set_inter_op_parallelism_threads(args.inter or 1)
    from wmhkeras.inference.loaders import load_segmenter
    from wmhkeras.inference.segment import segment

    seg = load_segmenter(args.model)
    if args.child == "throughput":
        x = tf.random.uniform((args.slices, *seg.input_size, 1), seed=0)
        return {"intra_op_threads": args.intra, "inter_op_threads": args.inter or 1,
                **_throughput(seg.predict_fn, x, args.batch_size), "peak_rss_mb": _peak_rss_mb()}

    raw, model_seconds, model_cpu = seg.predict_fn, [0.0], [0.0]

    def timed(batch):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = raw(batch).numpy()  # materialise, so the time is the model's
        model_seconds[0] += time.perf_counter() - start
        model_cpu[0] += time.process_time() - cpu_start
        return out

    seg.predict_fn = timed
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = segment(seg, [args.flair], tmp, batch_size=args.batch_size)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        subject = result.subjects[0]
        if not subject.ok:
            raise RuntimeError(subject.error)
    return {"seconds_per_volume": wall, "cpu_seconds_all_threads": cpu, "model_seconds": model_seconds[0],
            "model_cpu_seconds": model_cpu[0],
            "peak_rss_mb": _peak_rss_mb(),
            "batch_size": args.batch_size}


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


def _matmul_peak(n: int, repeats: int = 5) -> tuple[float, float]:
    """Best float32 ``n x n`` matmul rate: (FLOP per wall second, FLOP per CPU second of all threads)."""
    import tensorflow as tf

    a = tf.random.uniform((n, n), seed=1)
    b = tf.random.uniform((n, n), seed=2)
    mm = tf.function(lambda a, b: tf.matmul(a, b))
    mm(a, b).numpy()
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        mm(a, b).numpy()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu_start)
    return 2.0 * n**3 / best, 2.0 * n**3 / best_cpu


def _run_child(extra: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"child {extra} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
        row = _run_child(["--child", "throughput", "--model", str(model_path), "--intra", str(intra),
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

    from wmhkeras.evaluation.evaluate import evaluate

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        preds = tmp / "pred"
        preds.mkdir()
        rows = ["subject,site,flair,t1,label"]
        for patient in ("patient07", "patient26"):
            truth = nib.load(str(SHARED / patient / "GOLD_STANDARD.nii.gz"))
            mask = ndimage.binary_dilation(np.asarray(truth.dataobj) > 0).astype(np.uint8)
            nib.save(nib.Nifti1Image(mask, truth.affine, truth.header), str(preds / f"{patient}_wmh_mask.nii.gz"))
            rows.append(f"{patient},open_ms,{SHARED / patient / 'FLAIR.nii.gz'},,{SHARED / patient / 'GOLD_STANDARD.nii.gz'}")
        manifest = tmp / "manifest.csv"
        manifest.write_text("\n".join(rows) + "\n")
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


def _segment_benchmark(args, report: dict) -> None:
    """Whole-volume run, levers and matmul peak (TensorFlow); fills ``report`` in place."""
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "paper.keras"
        flops = _build_model(model_path)
        report["model"]["flops_per_slice"] = flops
        report["model"]["weights"] = "random (timing only)"
        n = 1024 if args.quick else args.matmul_n
        peaks = [_matmul_peak(n)]
        print(f"matmul: {peaks[0][0] / 1e9:.1f} GFLOP/s, {peaks[0][1] / 1e9:.1f} GFLOP/CPU-s; "
              f"model: {flops / 1e9:.1f} GFLOP/slice", file=sys.stderr)
        if not args.skip_volume:
            import nibabel as nib

            vol = _run_child(["--child", "volume", "--model", str(model_path), "--flair", str(args.flair),
                              "--batch-size", str(args.batch_size)])
            vol["slices"] = int(nib.load(str(args.flair)).shape[2])
            vol["slices_per_second"] = vol["slices"] / vol["model_seconds"]
            vol["slices_per_cpu_second"] = vol["slices"] / vol["model_cpu_seconds"]
            vol["model_share_of_wall"] = vol["model_seconds"] / vol["seconds_per_volume"]
            report["whole_volume"] = {"flair": str(args.flair), **vol}
            print(f"whole volume: {vol['seconds_per_volume']:.1f} s, {vol['slices_per_second']:.3f} slices/s, "
                  f"peak RSS {vol['peak_rss_mb']:.0f} MB", file=sys.stderr)
            peaks.append(_matmul_peak(n))
        if args.quick:
            import tensorflow as tf

            from wmhkeras.inference.loaders import load_segmenter

            seg = load_segmenter(model_path)
            row = _throughput(seg.predict_fn, tf.random.uniform((4, 224, 224, 1)), 4, repeats=1)
            report["levers"] = [{"lever": "tf.function, fixed signature", **row}]
        else:
            report["levers"] = _levers(model_path, args.lever_slices)
        peaks.append(_matmul_peak(n))
    # The machine's peak is the best matmul rate seen (measured at the start, middle and end of the run).
    # On a shared machine wall rates depend on the other jobs; rates per CPU second (all threads) do not,
    # so both fractions are reported.
    peak, peak_cpu = max(p[0] for p in peaks), max(p[1] for p in peaks)
    report["matmul_peak"] = {"n": n, "flops_per_second": peak, "flops_per_cpu_second": peak_cpu,
                             "measurements": [{"flops_per_second": w, "flops_per_cpu_second": c} for w, c in peaks]}
    for row in [report.get("whole_volume"), *report["levers"]]:
        if row:
            row["flops_per_second"] = flops * row["slices_per_second"]
            row["fraction_of_matmul_peak"] = row["flops_per_second"] / peak
            row["flops_per_cpu_second"] = flops * row["slices_per_cpu_second"]
            row["fraction_of_matmul_peak_cpu"] = row["flops_per_cpu_second"] / peak_cpu
    if "whole_volume" in report:
        vol = report["whole_volume"]
        print(f"whole volume: {vol['fraction_of_matmul_peak']:.2f} of the matmul peak ({peak / 1e9:.1f} GFLOP/s), "
              f"{vol['fraction_of_matmul_peak_cpu']:.2f} per CPU second ({peak_cpu / 1e9:.1f} GFLOP/CPU-s)",
              file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--flair", type=Path, default=SHARED / "patient07" / "FLAIR.nii.gz")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of the whole-volume run")
    parser.add_argument("--lever-slices", type=int, default=16, help="slices per lever measurement")
    parser.add_argument("--matmul-n", type=int, default=4096)
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 lever slices, 1024 matmul, no thread children")
    parser.add_argument("--skip-volume", action="store_true", help="skip the whole-volume run")
    parser.add_argument("--evaluate-only", action="store_true", help="only the evaluate timings (no TensorFlow)")
    # internal: child processes
    parser.add_argument("--child", choices=("volume", "throughput"), help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--intra", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--inter", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--slices", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.child:
        print(json.dumps(_child(args)))
        return
    if args.out is None:
        parser.error("--out FILE.json is required")

    from wmhkeras.io.provenance import package_versions, utc_now

    report: dict = {"created": utc_now(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg(), "versions": package_versions()}
    if not args.evaluate_only:
        report["model"] = {k: list(v) if isinstance(v, tuple) else v for k, v in PAPER_MODEL.items()}
        _segment_benchmark(args, report)
    report["evaluate"] = _evaluate_timing()
    ev = report["evaluate"]
    print(f"evaluate: {ev['metrics_only']['seconds_per_subject']:.2f} s/subject wall, "
          f"{ev['metrics_only']['cpu_seconds_per_subject']:.2f} s CPU (metrics); {ev['with_qc']['seconds_per_subject']:.2f} s "
          f"wall, {ev['with_qc']['cpu_seconds_per_subject']:.2f} s CPU (with QC)", file=sys.stderr)
    report["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
