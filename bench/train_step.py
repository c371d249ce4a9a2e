"""Benchmark: training-step time with the Siamese content loss vs the Dice loss alone.

Paper setting by default: dense U-Net (depth 5, base 32), 224 x 224 single-channel slices, batch 8,
Adam; content loss with VGG16's first two pool outputs. Backbone weights are RANDOM (``weights='random'``):
the values do not change the cost, and a benchmark must not need the ImageNet file.

Both models live in one process and are timed in interleaved rounds (content, dice, then dice, content,
...), so machine noise (other processes, frequency changes) hits both; the JSON holds every step time,
both medians and their ratio ``content_over_dice``, plus the same for process CPU time
(``content_over_dice_cpu``), which other processes on a shared machine disturb much less.

    python bench/train_step.py --out bench/results/train_step_cpu.json
    python bench/train_step.py --out /tmp/quick.json --image-size 64 --batch 2 --steps 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from wmhkeras.data.preprocessing import soft_labels  # noqa: E402
from wmhkeras.losses import DiceLoss, SiameseContentLoss  # noqa: E402
from wmhkeras.models import build_dense_unet, count_flops  # noqa: E402

log = logging.getLogger("bench.train_step")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per loss (default 4)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per loss after tracing (default 1)")
    parser.add_argument("--image-size", type=int, default=224, help="slice height = width (default 224)")
    parser.add_argument("--batch", type=int, default=8, help="slices per step (default 8)")
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--base-filters", type=int, default=32)
    parser.add_argument("--backbone", default="vgg16", choices=("vgg16", "vgg19"))
    parser.add_argument("--jit", action="store_true", help="jit_compile=True (XLA); off by default")
    return parser.parse_args(argv)


def make_model(args, loss) -> keras.Model:
    keras.utils.set_random_seed(0)  # both models start from the same weights
    model = build_dense_unet((args.image_size, args.image_size, 1), args.depth, args.base_filters)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, jit_compile=args.jit)
    return model


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads)."""
    times = os.times()
    return times.user + times.system


def timed_step(model, x, y) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one training step."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    model.train_on_batch(x, y)  # returns host numpy: the step has finished
    return time.perf_counter() - wall, cpu_seconds() - cpu


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(0)
    shape = (args.batch, args.image_size, args.image_size, 1)
    x = rng.random(shape, dtype=np.float32)
    mask = soft_labels((rng.random(shape) > 0.98).astype("float32"))
    y = np.concatenate([mask, x], axis=-1)  # packed target: mask, image

    content = SiameseContentLoss(backbone=args.backbone, weights="random",
                                 input_size=(args.image_size, args.image_size))
    models = {"content": make_model(args, content), "dice": make_model(args, DiceLoss())}
    trace_s, trace_cpu_s = {}, {}
    for name, model in models.items():  # first call traces the train function
        trace_s[name], trace_cpu_s[name] = timed_step(model, x, y)
        for _ in range(args.warmup):
            timed_step(model, x, y)
        log.info("%s: first step (trace) %.1f s (cpu %.1f s)", name, trace_s[name], trace_cpu_s[name])

    times = {name: [] for name in models}
    cpu_times = {name: [] for name in models}
    load_before = os.getloadavg()
    for step in range(args.steps):
        order = ["content", "dice"] if step % 2 == 0 else ["dice", "content"]
        for name in order:
            wall, cpu = timed_step(models[name], x, y)
            times[name].append(wall)
            cpu_times[name].append(cpu)
        log.info("round %d/%d: content %.3f s (cpu %.1f s), dice %.3f s (cpu %.1f s)", step + 1, args.steps,
                    times["content"][-1], cpu_times["content"][-1], times["dice"][-1], cpu_times["dice"][-1])

    medians = {name: statistics.median(values) for name, values in times.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu_times.items()}
    gpus = tf.config.list_physical_devices("GPU")
    result = {
        "benchmark": "train_step",
        "command": " ".join(["python bench/train_step.py", *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "setting": {
            "generator": "dense_unet", "depth": args.depth, "base_filters": args.base_filters,
            "image_size": args.image_size, "batch": args.batch, "optimizer": "Adam(1e-3)",
            "content_backbone": args.backbone, "content_layers": list(content.layers),
            "content_weights": "random (cost is independent of the weight values)",
            "jit_compile": args.jit, "steps": args.steps, "warmup": args.warmup,
            "generator_forward_gflops_per_slice": count_flops(models["dice"]) / 1e9,
        },
        "median_step_s": {"content": medians["content"], "dice": medians["dice"]},
        "content_over_dice": medians["content"] / medians["dice"],
        # Process CPU time: robust to other processes competing for the cores (wall time is not).
        "median_step_cpu_s": cpu_medians,
        "content_over_dice_cpu": cpu_medians["content"] / cpu_medians["dice"],
        "step_s": times,
        "step_cpu_s": cpu_times,
        "first_step_s": trace_s,
        "first_step_cpu_s": trace_cpu_s,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpus": [gpu.name for gpu in gpus],
        "device": tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "CPU",
        "loadavg_1_5_15_before_after": [list(load_before), list(os.getloadavg())],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("median step: content %.3f s, dice %.3f s, content_over_dice %.3f (cpu time %.3f) -> %s",
                medians["content"], medians["dice"], result["content_over_dice"],
                result["content_over_dice_cpu"], args.out)
    return result


if __name__ == "__main__":
    main()
