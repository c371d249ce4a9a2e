"""Benchmark: the training input pipeline's throughput, its cost to a training step, and its memory.

In one run (figures in ``docs/performance.md``, "Data pipeline"):

* throughput: samples/s of ``build_datasets(...).train`` alone (demo config: 96 x 96 slices, rotations
  up to 30 degrees, flips, lesion fraction 0.7, batch 8), on the real shared volumes
  (``$WMH_SHARED_DATA/open_ms_data``, 182 x 218 x 182) and on a synthetic cohort, memory and shards
  caches; plus the paper's 224 x 224 on the real volumes, for information;
* consumption: samples/s of a training step of the demo-size generator (dense U-Net, depth 3, base 8,
  Dice loss, Adam) fed from tensors held in memory; the target is throughput >= 10 x consumption;
* ``pipeline_over_memory``: the median step time fed by the real pipeline over the median step time
  fed by the same batches held in memory (rounds interleaved, so machine noise hits both; target
  <= 1.05); also the same ratio of process CPU time per step, which other processes on a shared
  machine disturb far less than wall time;
* memory: peak RSS growth of a subprocess that builds the pipeline (shards) and draws 200 batches plus
  one validation pass, for a 200-subject and a 20-subject synthetic cohort of small volumes (target
  ratio <= 2); the memory cache is measured too, for comparison.

    python bench/pipeline.py --out bench/results/pipeline_cpu.json
    python bench/pipeline.py --out /tmp/quick.json --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from wmhkeras.data.shared import open_ms_data  # noqa: E402

log = logging.getLogger("bench.pipeline")
SHARED = open_ms_data()
DEMO = {
    "data": {"lesion_fraction": 0.7, "background": "brain", "split": [0.8, 0.1, 0.1]},
    "model": {"arch": "dense_unet", "input_size": [96, 96], "depth": 3, "base_filters": 8},
    "augment": {"rotation_degrees": 30, "flip": True},
    "train": {"batch_size": 8, "seed": 0},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="fewer batches and subjects (smoke run)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--child", nargs=3, metavar=("MANIFEST", "CACHE", "BATCHES"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def rss_mb(field: str = "VmRSS") -> float:
    """Current (``VmRSS``) or peak (``VmHWM``) resident memory of this process in MB.

    ``VmHWM`` rather than ``getrusage``'s ``ru_maxrss``: after fork + exec the latter can report the
    parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_cfg(cache: str, size: int = 96, **data):
    from wmhkeras.config import config_from_dict

    cfg = json.loads(json.dumps(DEMO))
    cfg["data"].update(cache=cache, **data)
    cfg["model"]["input_size"] = [size, size]
    return config_from_dict(cfg)


# === Memory: one subprocess per cohort ===


def memory_child(manifest: str, cache: str, batches: int) -> None:
    """Print ``{"baseline_mb", "peak_mb", "growth_mb"}`` for one pipeline build + ``batches`` batches."""
    import tensorflow as tf

    from wmhkeras.data.datasets import load_dataset
    from wmhkeras.data.splits import make_split
    from wmhkeras.training.pipeline import build_datasets

    tf.reduce_sum(tf.ones((8, 8)))  # start the runtime before the baseline
    subjects = load_dataset(manifest)
    cfg = make_cfg(cache)
    split = make_split(subjects, cfg.data.split, 0)
    baseline = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        data = build_datasets(cfg, subjects, split, cache_dir=Path(tmp) / "shards")
        built = time.perf_counter() - start
        for _ in data.train.take(batches):
            pass
        n_val = sum(int(x.shape[0]) for x, _ in data.validation) if data.validation is not None else 0
    peak = rss_mb("VmHWM")
    print(json.dumps({"subjects": len(subjects), "cache": data.cache_mode, "baseline_mb": round(baseline, 1),
                      "peak_mb": round(peak, 1), "growth_mb": round(peak - baseline, 1),
                      "build_s": round(built, 2), "validation_samples": n_val,
                      "cache_bytes": data.stats["cache_bytes"]}))


def run_child(manifest: Path, cache: str, batches: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--out", "/dev/null", "--child", str(manifest), cache, str(batches)],
                         capture_output=True, text=True, check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    return json.loads(out.stdout.strip().splitlines()[-1])


# === Cohorts ===


def synthetic_cohorts(work: Path, quick: bool) -> dict[str, Path]:
    """A cohort at the synthetic presets' size, and 200 (20) small subjects for the memory test."""
    from wmhkeras.data.datasets import read_manifest, write_manifest
    from wmhkeras.data.synth import SITE_PRESETS, make_cohort

    n_syn, n_big = (6, 60) if quick else (12, 200)
    # Small volumes (64 x 72 x 20 at 1.8 x 1.8 x 5 mm): quick to make, same pipeline work per slice.
    small = [dataclasses.replace(s, voxel_size=(1.8, 1.8, 5.0), shape=(64, 72, 20)) for s in SITE_PRESETS]

    def cohort(name: str, n: int, **kwargs) -> Path:
        manifest = work / name / "manifest.csv"  # reused from an earlier run with the same --work
        return manifest if manifest.is_file() else make_cohort(work / name, subjects=n, sites=3, seed=0, **kwargs).manifest

    big = cohort(f"small_{n_big}", n_big, site_params=small)
    return {
        "synthetic": cohort(f"synthetic_{n_syn}", n_syn),
        f"small_{n_big}": big,
        # Subject i does not depend on the cohort size: the first 20 are the 20-subject cohort.
        "small_20": write_manifest(read_manifest(big)[:20], big.parent / "manifest_20.csv"),
    }


def real_subjects():
    from wmhkeras.data.datasets import Subject

    if not (SHARED / "patient07" / "FLAIR.nii.gz").is_file():
        return None
    return [Subject(p, "ljubljana", SHARED / p / "FLAIR.nii.gz", SHARED / p / "T1.nii.gz", SHARED / p / "GOLD_STANDARD.nii.gz")
            for p in ("patient07", "patient26")]


# === Throughput and consumption ===


def throughput(data, batches: int, warmup: int = 5) -> float:
    it = iter(data.train)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        x, _y = next(it)
        n += int(x.shape[0])
    return n / (time.perf_counter() - start)


class StepTimer:
    """Keras callback: the wall time of every training step (data wait included)."""

    def __init__(self):
        import keras

        timer = self

        class _Callback(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                timer.last = time.perf_counter() if batch == 0 else timer.last

            def on_train_batch_end(self, batch, logs=None):
                now = time.perf_counter()
                timer.times.append(now - timer.last)
                timer.last = now

        self.times: list[float] = []
        self.last = 0.0
        self.callback = _Callback()


def step_times(model, dataset, steps: int) -> tuple[list[float], float]:
    """Wall time of each step (the first, which also starts the iterator, left out) and the process's
    CPU time per step (all threads: the step's and the pipeline's)."""
    timer = StepTimer()
    cpu = time.process_time()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer.callback])
    return timer.times[1:], (time.process_time() - cpu) / steps


def consumption(data, rounds: int, steps: int) -> dict:
    """Train the demo generator fed by the pipeline and by the same batches held in memory."""
    import keras
    import tensorflow as tf

    from wmhkeras.losses import get_loss
    from wmhkeras.models.unet import build_generator

    keras.utils.set_random_seed(0)
    m = DEMO["model"]
    model = build_generator(m["arch"], input_shape=(*m["input_size"], 1), depth=m["depth"], base_filters=m["base_filters"])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("dice"))
    held = [(x, y) for x, y in data.train.take(steps + 1)]
    xs = tf.stack([x for x, _ in held])
    ys = tf.stack([y for _, y in held])
    in_memory = tf.data.Dataset.from_tensor_slices((xs, ys)).repeat().prefetch(tf.data.AUTOTUNE)
    step_times(model, in_memory, 3)  # trace and warm up
    wall = {"memory": [], "pipeline": []}
    cpu = {"memory": [], "pipeline": []}
    for r in range(rounds):  # interleaved: memory, pipeline, pipeline, memory, ...
        order = (("memory", in_memory), ("pipeline", data.train))
        for name, ds in order if r % 2 == 0 else order[::-1]:
            times, cpu_per_step = step_times(model, ds, steps)
            wall[name].extend(times)
            cpu[name].append(cpu_per_step)
    memory_times, pipeline_times = wall["memory"], wall["pipeline"]
    batch = DEMO["train"]["batch_size"]
    med_memory, med_pipeline = statistics.median(memory_times), statistics.median(pipeline_times)

    def q1(values):  # lower quartile: less sensitive to other processes stealing the CPU
        return statistics.quantiles(values, n=4)[0]

    return {
        "model": f"{m['arch']} depth {m['depth']} base {m['base_filters']}, 96 x 96 x 1, batch {batch}, Dice loss, Adam",
        "params": int(model.count_params()),
        "step_s_memory_median": med_memory,
        "step_s_pipeline_median": med_pipeline,
        "samples_per_s": batch / med_memory,
        "pipeline_over_memory": med_pipeline / med_memory,
        "pipeline_over_memory_lower_quartile": q1(pipeline_times) / q1(memory_times),
        "pipeline_over_memory_min": min(pipeline_times) / min(memory_times),
        # CPU time is far less sensitive than wall time to other processes on a shared machine.
        "cpu_s_per_step_memory": statistics.median(cpu["memory"]),
        "cpu_s_per_step_pipeline": statistics.median(cpu["pipeline"]),
        "pipeline_over_memory_cpu": statistics.median(cpu["pipeline"]) / statistics.median(cpu["memory"]),
        "steps_timed_each": len(memory_times),
        "step_s_memory": memory_times,
        "step_s_pipeline": pipeline_times,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        memory_child(args.child[0], args.child[1], int(args.child[2]))
        return {}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("wmhkeras").setLevel(logging.WARNING)
    import keras
    import tensorflow as tf

    from wmhkeras.data.datasets import load_dataset
    from wmhkeras.data.splits import make_split
    from wmhkeras.training.pipeline import build_datasets

    batches = 40 if args.quick else 150
    result = {
        "benchmark": "pipeline",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python bench/pipeline.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average_start": os.getloadavg(),
                    "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "config": DEMO,
        "targets": {"throughput_over_consumption": ">= 10", "pipeline_over_memory": "<= 1.05",
                    "peak_memory_ratio_200_over_20": "<= 2"},
    }
    work = Path(args.work or tempfile.mkdtemp(prefix="wmhkeras-bench-"))
    start = time.perf_counter()
    cohorts = synthetic_cohorts(work, args.quick)
    result["cohort_generation_s"] = round(time.perf_counter() - start, 1)

    # === Throughput ===
    thr = {}
    real = real_subjects()
    real_split = {"train": ["patient07", "patient26"], "validation": [], "holdout": []}
    synthetic = load_dataset(cohorts["synthetic"])
    synthetic_split = make_split(synthetic, (0.8, 0.1, 0.1), 0)
    for cache in ("memory", "shards"):
        if real is not None:
            data = build_datasets(make_cfg(cache), real, real_split, cache_dir=work / "shards_real")
            thr[f"real_{cache}"] = throughput(data, batches)
        data = build_datasets(make_cfg(cache), synthetic, synthetic_split, cache_dir=work / "shards_synthetic")
        thr[f"synthetic_{cache}"] = throughput(data, batches)
    if real is not None:
        thr["real_memory_224_for_information"] = throughput(build_datasets(make_cfg("memory", 224), real, real_split), batches // 2)
    result["throughput_samples_per_s"] = thr
    log.info("throughput (samples/s): %s", {k: round(v) for k, v in thr.items()})

    # === Consumption and pipeline_over_memory (real volumes when present) ===
    fed = build_datasets(make_cfg("memory"), real, real_split) if real is not None else \
        build_datasets(make_cfg("memory"), synthetic, synthetic_split)
    result["consumption"] = consumption(fed, rounds=2 if args.quick else 8, steps=10 if args.quick else 13)
    result["consumption"]["fed_by"] = "real volumes" if real is not None else "synthetic volumes"
    slowest = min(thr[k] for k in thr if not k.endswith("for_information"))
    result["throughput_over_consumption"] = slowest / result["consumption"]["samples_per_s"]
    # Time the pipeline alone (all cores) needs for one batch, over the step time: the most it can add.
    result["pipeline_batch_time_over_step"] = DEMO["train"]["batch_size"] / slowest / result["consumption"]["step_s_memory_median"]
    log.info("consumption %.1f samples/s; pipeline_over_memory %.3f (CPU time %.3f); slowest throughput / "
                "consumption %.1f", result["consumption"]["samples_per_s"], result["consumption"]["pipeline_over_memory"],
                result["consumption"]["pipeline_over_memory_cpu"], result["throughput_over_consumption"])

    # === Memory in subprocesses ===
    big = next(k for k in cohorts if k.startswith("small_") and k != "small_20")
    mem = {}
    for cache in ("shards", "memory"):
        for name in ("small_20", big):
            mem[f"{name}_{cache}"] = run_child(cohorts[name], cache, 200)
        mem[f"ratio_{cache}"] = mem[f"{big}_{cache}"]["growth_mb"] / max(mem[f"small_20_{cache}"]["growth_mb"], 1e-9)
    result["memory"] = mem
    log.info("peak RSS growth (MB): %s", {k: (v["growth_mb"] if isinstance(v, dict) else round(v, 2)) for k, v in mem.items()})

    result["machine"]["load_average_end"] = os.getloadavg()
    result["meets_targets"] = {
        "throughput_over_consumption": result["throughput_over_consumption"] >= 10,
        "pipeline_over_memory": result["consumption"]["pipeline_over_memory"] <= 1.05,
        "peak_memory_ratio_shards": mem["ratio_shards"] <= 2,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s: %s", args.out, result["meets_targets"])
    return result


if __name__ == "__main__":
    main()
