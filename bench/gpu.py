"""GPU benchmark: the paper-setting training step and whole-volume inference.

The one script a session runs when it is lent a GPU; it writes one JSON (rewritten after every figure,
so a run stopped at its time limit keeps what it measured):

    python bench/gpu.py --out $OUT/gpu.json                    # on the GPU (meant for < 8 min on an H200)
    python bench/gpu.py --smoke --out /tmp/gpu_smoke.json      # CPU, tiny sizes, about a minute

1. ``train``: one training step of the paper's generator (dense U-Net, depth 5, 32 base filters,
   224 x 224 single-channel slices, batch 8, Adam 1e-3, the Dice loss), ``model.train_on_batch`` of a
   compiled Keras step, per Keras policy (``float32``, ``mixed_float16``; ``mixed_bfloat16`` when the
   GPU has compute capability >= 8.0) and per ``jit_compile`` (XLA off and on). Per figure: the median
   step time over ``--steps`` steps after ``--warmup`` untimed ones, slices per second, the first
   (tracing/compiling) step, the achieved TFLOP/s (3 x the forward FLOPs of
   :func:`wmhkeras.models.unet.count_flops` per slice) and the loss values.
2. ``inference``: one 182 x 218 x 182 FLAIR (open_ms patient07: ``--flair PATH``, else
   ``$WMH_SHARED_DATA/open_ms_data/patient07/FLAIR.nii.gz``, ``../shared/data/...`` or ``shared/data/...``
   in the checkout; else a synthetic volume of that size) through the segmenter's steps (preprocess,
   model in batches, restore), for the paper model (``fixed`` 224 x 224) and the shipped model's
   architecture (dense U-Net depth 4, 12 base filters, ``spacing`` 1 mm, padded to a multiple of 16),
   random weights (the cost does not depend on them), in float32, float16 and bfloat16 (cc >= 8.0), at
   ``--infer-batches``. Per figure: the median whole-volume seconds, the model's slices per second
   (model calls alone) and the largest probability difference from float32.

Backend: TensorFlow (the project's) when it can be imported; there the inference goes through
:class:`wmhkeras.inference.loaders.Segmenter` and :func:`wmhkeras.inference.predictor.predict_maps` as in
``wmhkeras segment`` (bfloat16 through :func:`wmhkeras.inference.precision.bfloat16_predict_fn`, float16
through the same rebuild under ``mixed_float16``). Without TensorFlow (the image of the H200 this
project is lent has JAX with CUDA but no TensorFlow, whose wheels are far larger than what travels to
it), ``--backend jax`` (chosen by ``auto``): Keras 3 on JAX, the same model and Dice loss; the training
step is always XLA-compiled there (``jit_compile`` off would run op by op, not TensorFlow's graph
without XLA, so it is not measured), and the inference steps are done with NumPy and ``keras.ops``
(normalise by the maximum, resize or pad, model, resize back), the segmenter's steps without TensorFlow.
What the JAX run needs on that machine beside its own packages: keras, namex, optree and nibabel (the
real FLAIR, and :mod:`wmhkeras.losses` through :mod:`wmhkeras.io`) carried as wheels; see
docs/performance.md, section "GPU".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

log = logging.getLogger("bench.gpu")

VOLUME_SHAPE = (182, 218, 182)
FLAIR = Path("open_ms_data") / "patient07" / "FLAIR.nii.gz"
#: The shipped model's architecture (saved_models/open_ms_flair/model_card.json, training_config).
NATIVE = {"depth": 4, "base_filters": 12, "spacing_mm": 1.0}
PAPER = {"depth": 5, "base_filters": 32}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, tiny sizes (32 x 32 slices, depth 2, a 40 x 48 x 12 volume; XLA for float32 "
                             "only): checks the script")
    parser.add_argument("--backend", choices=("auto", "tensorflow", "jax"), default="auto",
                        help="auto: tensorflow when it can be imported, else jax")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per figure (default 20; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after the first (default 3; smoke 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed whole-volume runs per figure (default 3; smoke 1)")
    parser.add_argument("--infer-batches", default=None, help="comma-separated slice batches (default 8,32; smoke 4)")
    parser.add_argument("--flair", type=Path, default=None, help="the FLAIR to segment (default: patient07 if found)")
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out: train, inference")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop starting new figures after this many seconds (default 420; smoke: none)")
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.steps = args.steps or (2 if smoke else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 3)
    args.repeats = args.repeats or (1 if smoke else 3)
    args.infer_batches = [int(b) for b in (args.infer_batches or ("4" if smoke else "8,32")).split(",")]
    args.budget_s = args.budget_s if args.budget_s is not None else (None if smoke else 420.0)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    args.image_size, args.batch = (32, 2) if smoke else (224, 8)
    args.paper = {"depth": 1, "base_filters": 4} if smoke else PAPER
    args.native = {"depth": 1, "base_filters": 4, "spacing_mm": 1.0} if smoke else NATIVE
    args.volume_shape = (40, 48, 12) if smoke else VOLUME_SHAPE
    return args


def choose_backend(requested: str, smoke: bool) -> str:
    """Set ``KERAS_BACKEND`` (before Keras is imported) and, for a smoke run, hide any GPU."""
    backend = requested
    if backend == "auto":
        backend = "tensorflow" if importlib.util.find_spec("tensorflow") is not None else "jax"
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ["JAX_PLATFORMS"] = "cpu"
    return backend


# === The device ===


def device_info(backend: str) -> dict:
    """Name and compute capability of the first accelerator, or the CPU."""
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)  # several models in one process
        if not gpus:
            return {"kind": "cpu", "name": platform.processor() or platform.machine(), "compute_capability": None,
                    "gpus": []}
        details = tf.config.experimental.get_device_details(gpus[0])
        capability = details.get("compute_capability")
        return {"kind": "gpu", "name": details.get("device_name", gpus[0].name),
                "compute_capability": list(capability) if capability else None, "details": _plain(details),
                "gpus": [gpu.name for gpu in gpus]}
    import jax

    device = jax.devices()[0]
    if device.platform != "gpu":
        return {"kind": "cpu", "name": platform.processor() or platform.machine(), "compute_capability": None,
                "gpus": []}
    capability = getattr(device, "compute_capability", None)  # "9.0" on CUDA
    return {"kind": "gpu", "name": device.device_kind,
            "compute_capability": [int(v) for v in str(capability).split(".")] if capability else None,
            "gpus": [str(d) for d in jax.devices()]}


def _plain(details: dict) -> dict:
    return {key: (list(value) if isinstance(value, tuple) else value) for key, value in details.items()}


def bf16_native(device: dict, smoke: bool) -> bool:
    """bfloat16 figures: on a GPU of compute capability >= 8.0, or of unknown capability (measured anyway:
    a GPU figure that fails is recorded as an error), and in a smoke run, to check the path."""
    if smoke:
        return True
    capability = device["compute_capability"]
    return device["kind"] == "gpu" and (capability is None or tuple(capability) >= (8, 0))


def versions(backend: str) -> dict:
    import keras
    import numpy as np

    out = {"python": platform.python_version(), "keras": keras.__version__, "numpy": np.__version__,
           "backend": backend}
    if backend == "tensorflow":
        import tensorflow as tf

        out["tensorflow"] = tf.__version__
        build = tf.sysconfig.get_build_info()
        out["cuda"], out["cudnn"] = build.get("cuda_version"), build.get("cudnn_version")
        out["tensor_float_32"] = bool(tf.config.experimental.tensor_float_32_execution_enabled())
    else:
        import jax

        out["jax"], out["jaxlib"] = jax.__version__, getattr(jax.lib, "__version__", None)
        # None: XLA's default, which lets float32 matmuls and convolutions use TF32 on GPUs that have it
        out["jax_default_matmul_precision"] = jax.config.jax_default_matmul_precision
    return out


# === Training step ===


def dice_loss_class(backend: str):
    """The project's Dice loss (``wmhkeras.losses.overlap.DiceLoss``), under either backend: importing
    :mod:`wmhkeras.losses` needs Keras, not TensorFlow."""
    from wmhkeras.losses import DiceLoss

    return DiceLoss


def build(policy: str, shape, depth: int, base_filters: int):
    """The dense U-Net built under ``policy`` (restored after), seed 0."""
    import keras

    from wmhkeras.models import build_dense_unet

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        return build_dense_unet(shape, depth, base_filters)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def forward_flops(model, size) -> float | None:
    from wmhkeras.models import count_flops

    try:
        return float(count_flops(model, size))
    except Exception as exc:  # a benchmark figure, not worth failing the run for
        log.warning("FLOPs not counted: %s", exc)
        return None


def train_figure(args, backend: str, policy: str, jit: bool, x, y) -> dict:
    import keras
    import numpy as np

    size = args.image_size
    model = build(policy, (size, size, 1), **args.paper)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=dice_loss_class(backend)(), jit_compile=jit)
    finally:
        keras.mixed_precision.set_global_policy(previous)

    def step() -> tuple[float, float]:
        start = time.perf_counter()
        loss = model.train_on_batch(x, y)  # returns host numpy: the step has finished
        return time.perf_counter() - start, float(np.ravel(loss)[0])

    first, first_loss = step()
    for _ in range(args.warmup):
        step()
    timed = [step() for _ in range(args.steps)]
    times = [t for t, _ in timed]
    median = statistics.median(times)
    flops = forward_flops(model, (size, size))
    return {
        "precision": policy, "jit_compile": jit, "optimizer": type(model.optimizer).__name__,
        "median_step_s": median, "slices_per_s": args.batch / median,
        "achieved_tflops": None if flops is None else 3 * flops * args.batch / median / 1e12,
        "first_step_s": first, "step_s": times, "loss_first": first_loss, "loss_last": timed[-1][1],
    }


def train_section(args, backend: str, device: dict, record, budget) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (args.batch, args.image_size, args.image_size, 1)
    x = rng.random(shape, dtype=np.float32)
    mask = (rng.random(shape) > 0.98).astype("float32")
    y = np.concatenate([mask, x], axis=-1)  # packed target: mask, image
    policies = ["float32", "mixed_float16"] + (["mixed_bfloat16"] if bf16_native(device, args.smoke) else [])
    # JAX compiles every Keras step with XLA; jit_compile=False there would run op by op
    jits = (False, True) if backend == "tensorflow" else (True,)
    section = record["train"] = {
        "setting": {"generator": "dense_unet", **args.paper, "image_size": args.image_size, "batch": args.batch,
                    "loss": "dice", "optimizer": "Adam(1e-3)", "steps": args.steps, "warmup": args.warmup},
        "figures": [],
        "not_measured": [] if backend == "tensorflow" else
        ["jit_compile=False under JAX: Keras runs the step op by op, not TensorFlow's graph without XLA"],
    }
    for policy in policies:
        for jit in jits:
            if args.smoke and jit and policy != "float32" and len(jits) > 1:
                continue  # XLA compiles slowly on a CPU; the smoke run checks the XLA path once
            name = f"{policy}, jit_compile={jit}"
            figure = measure(section, record, budget, "train", name,
                             lambda policy=policy, jit=jit: train_figure(args, backend, policy, jit, x, y),
                             failed={"precision": policy, "jit_compile": jit})
            if figure is not None and "error" not in figure:
                log.info("train %s: %.4f s/step, %.1f slices/s (first step %.1f s)", name, figure["median_step_s"],
                         figure["slices_per_s"], figure["first_step_s"])


# === Inference ===


def find_flair(args) -> Path | None:
    from wmhkeras.data.shared import shared_data

    candidates = [args.flair] if args.flair else []
    candidates += [shared_data() / FLAIR, REPO.parent / "shared" / "data" / FLAIR, REPO / "shared" / "data" / FLAIR]
    return next((path for path in candidates if path and path.is_file()), None)


def load_flair(args) -> tuple:
    """(volume [X, Y, Z] float32 in canonical RAS, voxel size, source description)."""
    import numpy as np

    path = None if args.smoke else find_flair(args)
    if path is not None:
        try:
            import nibabel as nib

            img = nib.as_closest_canonical(nib.load(str(path)))
            return np.asarray(img.dataobj, np.float32), tuple(float(v) for v in img.header.get_zooms()[:3]), str(path)
        except ImportError:
            log.warning("nibabel is missing: a synthetic volume instead of %s", path)
    rng = np.random.default_rng(0)
    volume = rng.random(args.volume_shape, dtype=np.float32) * 100.0
    return volume, (1.0, 1.0, 1.0), f"synthetic {'x'.join(map(str, args.volume_shape))} (uniform noise)"


def policy_copy(model, policy: str):
    """``model`` rebuilt under ``policy`` (float32 variables), the same weights."""
    import keras

    def clone(layer):
        config = layer.get_config()
        if not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = keras.DTypePolicy(policy)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def predict_fns_tf(model, channels: int, precisions: list[str]) -> dict:
    """precision -> TensorFlow function float32 slices -> float32 probabilities (as ``segment`` builds them)."""
    import tensorflow as tf

    from wmhkeras.inference.precision import bfloat16_predict_fn

    spec = [tf.TensorSpec((None, *model.input_shape[1:3], channels), tf.float32)]
    fns = {}
    for precision in precisions:
        if precision == "bfloat16":
            fns[precision] = bfloat16_predict_fn(model)
            continue
        runner = model if precision == "float32" else policy_copy(model, "mixed_float16")

        @tf.function(input_signature=spec)
        def predict(x, runner=runner):
            return tf.cast(runner(x, training=False), tf.float32)

        predict.model = runner
        fns[precision] = predict
    return fns


def volume_runner_tf(kind: str, args, model, fn, voxel_size):
    """One whole volume through ``predict_maps`` of a :class:`Segmenter` around ``fn``."""
    from wmhkeras.data.preprocessing import Resampling
    from wmhkeras.inference.loaders import Segmenter
    from wmhkeras.inference.predictor import predict_maps

    if kind == "paper":
        resampling = Resampling("fixed", (args.image_size, args.image_size))
    else:
        spacing = args.native["spacing_mm"]
        resampling = Resampling("spacing", spacing=(spacing, spacing), multiple=2 ** args.native["depth"])
    segmenter = Segmenter(fn, ("flair",), "max", source=kind, model=model, resampling=resampling)

    def run(volume, batch):
        return predict_maps(segmenter, [volume], batch, voxel_size=voxel_size)[0]

    def slices(volume):
        return segmenter.preprocess([volume], voxel_size)

    return run, slices


def predict_fns_jax(model, precisions: list[str]) -> dict:
    import numpy as np

    fns = {}
    for precision in precisions:
        policy = {"float32": None, "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}[precision]
        runner = model if policy is None else policy_copy(model, policy)
        fns[precision] = (lambda x, runner=runner: np.asarray(runner.predict_on_batch(x), np.float32))
    return fns


def volume_runner_jax(kind: str, args, model, fn, voxel_size):
    """The segmenter's steps with NumPy and ``keras.ops``: normalise by the maximum, slices along Z, resize
    to the fixed size (paper) or zero-pad to a multiple of 2^depth (native, a 1 mm volume), model, back."""
    import keras
    import numpy as np

    multiple = 2 ** args.native["depth"]

    def slices(volume):
        x = np.moveaxis(volume / max(float(volume.max()), 1e-12), 2, 0)[..., None].astype(np.float32)
        if kind == "paper":
            return np.asarray(keras.ops.image.resize(x, (args.image_size, args.image_size)), np.float32)
        h, w = x.shape[1:3]
        ph, pw = -h % multiple, -w % multiple
        return np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))

    def run(volume, batch):
        x = slices(volume)
        out = np.concatenate([fn(x[i : i + batch]) for i in range(0, len(x), batch)])
        h, w = volume.shape[:2]
        if kind == "paper":
            out = np.asarray(keras.ops.image.resize(out, (h, w)), np.float32)
        else:
            top, left = (out.shape[1] - h) // 2, (out.shape[2] - w) // 2
            out = out[:, top : top + h, left : left + w]
        return np.clip(np.moveaxis(out[..., 0], 0, 2), 0.0, 1.0)

    return run, slices


def inference_section(args, backend: str, device: dict, record, budget) -> None:
    volume, voxel_size, source = load_flair(args)
    precisions = ["float32", "float16"] + (["bfloat16"] if bf16_native(device, args.smoke) else [])
    section = record["inference"] = {
        "volume": {"source": source, "shape": list(volume.shape), "voxel_size_mm": list(voxel_size)},
        "path": ("Segmenter + predict_maps (as wmhkeras segment)" if backend == "tensorflow" else
                 "NumPy + keras.ops: the segmenter's steps without TensorFlow"),
        "repeats": args.repeats, "figures": [], "not_measured": [],
    }
    for kind, arch in (("paper", args.paper), ("native", args.native)):
        size = (args.image_size, args.image_size) if kind == "paper" else (None, None)
        model = build("float32", (*size, 1), arch["depth"], arch["base_filters"])
        fns = (predict_fns_tf(model, 1, precisions) if backend == "tensorflow" else predict_fns_jax(model, precisions))
        runner = volume_runner_tf if backend == "tensorflow" else volume_runner_jax
        reference = {}  # this model's float32 probabilities, once measured
        for precision in precisions:
            for batch in args.infer_batches:
                name = f"{kind} {precision} batch {batch}"
                run = (kind, runner, model, fns[precision], precision, batch, reference)
                figure = measure(section, record, budget, "inference", name,
                                 lambda run=run: compared_figure(args, volume, voxel_size, *run),
                                 after={"model": kind, "precision": precision, "batch": batch})
                if figure is not None and "error" not in figure:
                    log.info("inference %s: %.2f s per volume, %.0f slices/s in the model", name,
                             figure["median_volume_s"], figure["model_slices_per_s"])


def compared_figure(args, volume, voxel_size, kind, runner, model, fn, precision, batch, reference: dict) -> dict:
    """The figure of ``model`` at ``precision`` and ``batch``, with its largest difference from the model's float32
    probabilities (``reference["prob"]``, set by the float32 figure) and its forward GFLOPs per slice."""
    import numpy as np

    run, slices = runner(kind, args, model, fn, voxel_size)
    figure = inference_figure(args, run, slices, fn, volume, batch)
    prob = figure.pop("probabilities")
    if precision == "float32" and reference.get("prob") is None:
        reference["prob"] = prob
    figure["max_abs_diff_vs_float32"] = float(np.abs(prob - reference.get("prob")).max())
    figure["model_forward_gflops_per_slice"] = (
        None if (flops := forward_flops(model, figure["model_input_hw"])) is None else flops / 1e9)
    return figure


def inference_figure(args, run, slices, fn, volume, batch: int) -> dict:
    import numpy as np

    start = time.perf_counter()
    prob = run(volume, batch)  # traces / compiles
    first = time.perf_counter() - start
    volume_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        prob = run(volume, batch)
        volume_times.append(time.perf_counter() - start)
    x = np.asarray(slices(volume), np.float32)
    model_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            np.asarray(fn(x[i : i + batch]))  # host copy: the call has finished
        model_times.append(time.perf_counter() - start)
    model_s = statistics.median(model_times)
    return {"median_volume_s": statistics.median(volume_times), "volume_s": volume_times, "first_volume_s": first,
            "slices": int(x.shape[0]), "model_input_hw": [int(v) for v in x.shape[1:3]],
            "median_model_s": model_s, "model_slices_per_s": x.shape[0] / model_s, "probabilities": prob}


# === The record ===


class Record(dict):
    """The JSON, rewritten (atomically) after every figure."""

    def __init__(self, path: Path, **fields):
        super().__init__(**fields)
        self.path = path

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)


def measure(section: dict, record, budget: Budget, stage: str, name: str, compute, failed: dict | None = None,
            after: dict | None = None) -> dict | None:
    """One figure of ``section``: ``compute()`` timed (``figure_wall_s``), appended to ``section["figures"]`` and
    the record saved; a failure is recorded as the figure ``{**failed, "error": ...}``, so that one failing
    figure (e.g. a kernel missing for a dtype) does not end the run. ``after`` is added to the figure either
    way. None, and the figure listed under ``not_measured``, once the time budget is spent."""
    if budget.exhausted():
        section["not_measured"].append(f"{name}: time budget")
        return None
    start = time.perf_counter()
    try:
        figure = compute()
    except Exception as exc:
        log.exception("%s %s failed", stage, name)
        figure = {**(failed or {}), "error": f"{type(exc).__name__}: {exc}"[:500]}
    figure.update(after or {}, figure_wall_s=time.perf_counter() - start)
    section["figures"].append(figure)
    record.save()
    return figure


class Budget:
    def __init__(self, seconds: float | None):
        self.start, self.seconds = time.perf_counter(), seconds

    def exhausted(self) -> bool:
        return self.seconds is not None and time.perf_counter() - self.start > self.seconds


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    backend = choose_backend(args.backend, args.smoke)
    budget = Budget(args.budget_s)
    device = device_info(backend)
    record = Record(args.out, benchmark="gpu", smoke=args.smoke,
                    command=" ".join(["python bench/gpu.py", *(argv if argv is not None else sys.argv[1:])]),
                    date_utc=datetime.now(UTC).isoformat(timespec="seconds"), device=device,
                    versions=versions(backend), platform=platform.platform(), cpu_count=os.cpu_count())
    record["start_s"] = time.perf_counter() - started  # imports and device start
    record.save()
    log.info("%s backend on %s (%s), start %.1f s", backend, device["name"], device["kind"], record["start_s"])
    if device["kind"] != "gpu" and not args.smoke:
        log.warning("no GPU visible: these are CPU figures")
    if "train" not in args.skip:
        train_section(args, backend, device, record, budget)
    if "inference" not in args.skip:
        inference_section(args, backend, device, record, budget)
    record["total_s"] = time.perf_counter() - started
    record.save()
    log.info("done in %.0f s -> %s", record["total_s"], args.out)
    return dict(record)


if __name__ == "__main__":
    main()
