"""Benchmark: training-step time with the Siamese content loss vs the Dice loss alone.

Paper setting by default: dense U-Net (depth 5, base 32), 224 x 224 single-channel slices, batch 8,
Adam; content loss with VGG16's first two pool outputs. Backbone weights are RANDOM (``weights='random'``):
the values do not change the cost, and a benchmark must not need the ImageNet file.

Both models live in one process and are timed in interleaved rounds (content, dice, then dice, content,
...), so machine noise (other processes, frequency changes) hits both; the JSON holds every step time,
both medians and their ratio ``content_over_dice``, plus the same for process CPU time
(``content_over_dice_cpu``), which other processes on a shared machine disturb much less.

Precision comparison (``--precisions float32,mixed_bfloat16``): each loss of ``--losses`` is timed under
each Keras policy, all models interleaved (the order reversed every round); the generator is built under
the policy, the loss (and the content loss's backbone) under float32, as ``wmhkeras train`` does with
``train.precision``. The JSON adds ``precision_speedup`` (float32 median over the policy's median, wall
and CPU time, per loss: above 1 is faster) and each step's loss value per model.

    python bench/train_step.py --out bench/results/train_step_cpu.json
    python bench/train_step.py --out /tmp/quick.json --image-size 64 --batch 2 --steps 3
    python bench/train_step.py --precisions float32,mixed_bfloat16 --out bench/results/train_precision.json
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
from wmhkeras.inference.precision import cpu_supports_bf16  # noqa: E402
from wmhkeras.losses import DiceLoss, SiameseContentLoss  # noqa: E402
from wmhkeras.models import build_dense_unet, count_flops  # noqa: E402

log = logging.getLogger("bench.train_step")

LOSSES = ("content", "dice")
POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    """A comma-separated list of ``allowed`` names, in the given order, each once."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    wrong = [item for item in items if item not in allowed]
    if not items or wrong or len(set(items)) != len(items):
        raise argparse.ArgumentTypeError(f"{what}: {text!r}; give one or more of {', '.join(allowed)}, each once")
    return items


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--steps", type=int, default=4, help="timed rounds (default 4)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model after tracing (default 1)")
    parser.add_argument("--image-size", type=int, default=224, help="slice height = width (default 224)")
    parser.add_argument("--batch", type=int, default=8, help="slices per step (default 8)")
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--base-filters", type=int, default=32)
    parser.add_argument("--backbone", default="vgg16", choices=("vgg16", "vgg19"))
    parser.add_argument("--jit", action="store_true", help="jit_compile=True (XLA); off by default")
    parser.add_argument("--losses", type=lambda t: names(t, LOSSES, "--losses"), default=list(LOSSES),
                        help="comma-separated, of content, dice (default content,dice)")
    parser.add_argument("--precisions", type=lambda t: names(t, POLICIES, "--precisions"), default=["float32"],
                        help="comma-separated Keras policies of the generator, of float32, mixed_bfloat16, "
                             "mixed_float16 (default float32)")
    return parser.parse_args(argv)


def make_model(args, loss, policy: str = "float32") -> keras.Model:
    """The paper's generator built and compiled under ``policy`` (restored after); same weights for all."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)  # every model starts from the same weights
        model = build_dense_unet((args.image_size, args.image_size, 1), args.depth, args.base_filters)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, jit_compile=args.jit)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return model


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads)."""
    times = os.times()
    return times.user + times.system


def timed_step(model, x, y) -> tuple[float, float, float]:
    """(wall seconds, process CPU seconds, loss) of one training step."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    loss = model.train_on_batch(x, y)  # returns host numpy: the step has finished
    return time.perf_counter() - wall, cpu_seconds() - cpu, float(np.ravel(loss)[0])


def cpu_description() -> dict:
    """The CPU's model name and its flags that matter for 16-bit arithmetic (Linux; else empty)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():  # the first processor's lines win
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    wanted = ("avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")
    return {"model": fields.get("model name", ""), "flags": [f for f in wanted if f in flags]}


def arm_name(loss: str, policy: str, precisions: list[str]) -> str:
    """``content`` / ``dice`` with one precision (the historical keys), else ``dice:mixed_bfloat16``."""
    return loss if len(precisions) == 1 else f"{loss}:{policy}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(0)
    shape = (args.batch, args.image_size, args.image_size, 1)
    x = rng.random(shape, dtype=np.float32)
    mask = soft_labels((rng.random(shape) > 0.98).astype("float32"))
    y = np.concatenate([mask, x], axis=-1)  # packed target: mask, image

    # the losses (and the backbone) are built under float32, as the trainer builds them
    content = SiameseContentLoss(backbone=args.backbone, weights="random",
                                 input_size=(args.image_size, args.image_size))
    loss_objects = {"content": content, "dice": DiceLoss()}
    arms = {arm_name(loss, policy, args.precisions): (loss, policy)
            for policy in args.precisions for loss in args.losses}
    models = {name: make_model(args, loss_objects[loss], policy) for name, (loss, policy) in arms.items()}
    trace_s, trace_cpu_s = {}, {}
    for name, model in models.items():  # first call traces the train function
        trace_s[name], trace_cpu_s[name], _ = timed_step(model, x, y)
        for _ in range(args.warmup):
            timed_step(model, x, y)
        log.info("%s: first step (trace) %.1f s (cpu %.1f s)", name, trace_s[name], trace_cpu_s[name])

    times = {name: [] for name in models}
    cpu_times = {name: [] for name in models}
    loss_values = {name: [] for name in models}
    load_before = os.getloadavg()
    for step in range(args.steps):
        order = list(models) if step % 2 == 0 else list(reversed(models))
        for name in order:
            wall, cpu, value = timed_step(models[name], x, y)
            times[name].append(wall)
            cpu_times[name].append(cpu)
            loss_values[name].append(value)
        log.info("round %d/%d: %s", step + 1, args.steps,
                 ", ".join(f"{name} {times[name][-1]:.3f} s (cpu {cpu_times[name][-1]:.1f} s)" for name in models))

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
            "losses": args.losses, "precisions": args.precisions,
            "generator_forward_gflops_per_slice": count_flops(next(iter(models.values()))) / 1e9,
        },
        "arms": {name: {"loss": loss, "precision": policy} for name, (loss, policy) in arms.items()},
        "median_step_s": medians,
        # Process CPU time: robust to other processes competing for the cores (wall time is not).
        "median_step_cpu_s": cpu_medians,
        "step_s": times,
        "step_cpu_s": cpu_times,
        "step_loss": loss_values,
        "first_step_s": trace_s,
        "first_step_cpu_s": trace_cpu_s,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_description(),
        "cpu_native_bf16": cpu_supports_bf16(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpus": [gpu.name for gpu in gpus],
        "device": tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "CPU",
        "loadavg_1_5_15_before_after": [list(load_before), list(os.getloadavg())],
    }
    summary = []
    for policy in args.precisions:
        a, b = arm_name("content", policy, args.precisions), arm_name("dice", policy, args.precisions)
        if a in medians and b in medians:
            suffix = "" if len(args.precisions) == 1 else f"_{policy}"
            result[f"content_over_dice{suffix}"] = medians[a] / medians[b]
            result[f"content_over_dice_cpu{suffix}"] = cpu_medians[a] / cpu_medians[b]
            summary.append(f"content_over_dice{suffix} {medians[a] / medians[b]:.3f} "
                           f"(cpu {cpu_medians[a] / cpu_medians[b]:.3f})")
    if "float32" in args.precisions and len(args.precisions) > 1:
        speedup = {}
        for loss in args.losses:
            base = arm_name(loss, "float32", args.precisions)
            speedup[loss] = {}
            for policy in args.precisions:
                if policy != "float32":
                    name = arm_name(loss, policy, args.precisions)
                    speedup[loss][policy] = {"wall": medians[base] / medians[name],
                                             "cpu": cpu_medians[base] / cpu_medians[name]}
                    summary.append(f"{loss} {policy} speedup {speedup[loss][policy]['wall']:.2f}x "
                                   f"(cpu {speedup[loss][policy]['cpu']:.2f}x)")
        result["precision_speedup"] = speedup
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("median step: %s; %s -> %s", ", ".join(f"{name} {value:.3f} s" for name, value in medians.items()),
             "; ".join(summary), args.out)
    return result


if __name__ == "__main__":
    main()
