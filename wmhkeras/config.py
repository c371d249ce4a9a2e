"""Typed run configuration: dataclasses loaded from YAML, validated at load, saved with every run.

A config is built from one or more YAML files, deep-merged left to right, then ``--set`` overrides
(``section.key=value``, the value parsed as YAML). Unknown keys, wrong types and values outside
their allowed set raise :class:`~wmhkeras.errors.ConfigError` naming the key, the value seen and what
is allowed. The resolved config is written into every run folder with :func:`save_config`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from wmhkeras.errors import ConfigError

#: Current config schema version; :func:`load_config` refuses files written for a newer one.
CONFIG_VERSION = 1


@dataclass
class DataConfig:
    """Where the data is and how samples are drawn from it."""

    #: A manifest CSV (``subject,site,flair,t1,label``) or a folder in the MICCAI 2017 WMH layout.
    path: Optional[str] = None
    #: Input modalities of the model, FLAIR first.
    modalities: list[Literal["flair", "t1"]] = field(default_factory=lambda: ["flair"])
    normalisation: Literal["max", "zscore"] = "max"
    #: ``slices``: whole axial slices resized to ``model.input_size`` (the paper); ``patches``.
    sampling: Literal["slices", "patches"] = "slices"
    patch_size: list[int] = field(default_factory=lambda: [64, 64])
    #: Fraction of training samples that contain lesion voxels (imbalance-aware sampling);
    #: ``null`` draws samples uniformly, as the paper did.
    lesion_fraction: Optional[float] = 0.5
    #: Where the other samples come from: brain tissue only, or anywhere (empty background too).
    background: Literal["brain", "any"] = "brain"
    balance_sites: bool = False
    #: Soft labels (low, high) for 0 and 1; the paper uses 0.1 / 0.9. ``null`` keeps hard labels.
    label_smoothing: Optional[list[float]] = field(default_factory=lambda: [0.1, 0.9])
    #: Fractions of subjects for train / validation / hold-out, stratified by site.
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    #: ``memory`` keeps preprocessed volumes in RAM; ``shards`` preprocesses once to disk;
    #: ``auto`` picks ``memory`` below ``memory_limit_gb`` of preprocessed data.
    cache: Literal["auto", "memory", "shards"] = "auto"
    memory_limit_gb: float = 4.0
    #: Folder for on-disk shards (kept and reused by later runs on the same data and settings);
    #: ``null`` uses a temporary folder removed when training ends.
    cache_dir: Optional[str] = None


@dataclass
class ModelConfig:
    """The generator."""

    arch: Literal["dense_unet", "unet"] = "dense_unet"
    input_size: list[int] = field(default_factory=lambda: [224, 224])
    depth: int = 5
    base_filters: int = 32
    #: BatchNorm moving-average momentum; 0.9 suits short trainings (the paper does not say).
    bn_momentum: float = 0.99
    #: Initial output probability (head bias log(p/(1-p))); null starts at 0.5.
    output_prior: Optional[float] = None


@dataclass
class LossConfig:
    """The training loss: the Siamese content loss, an overlap loss, or a hybrid of both."""

    name: Literal["content", "dice", "tversky", "generalized_dice", "focal", "bce", "hybrid"] = "content"
    backbone: Literal["vgg16", "vgg19"] = "vgg16"
    layers: list[str] = field(default_factory=lambda: ["block1_pool", "block2_pool"])
    #: ``imagenet`` (Keras cache, never downloaded at run time), ``random`` or a weights file path.
    weights: str = "imagenet"
    reduction: Literal["paper", "per_layer_mean"] = "paper"
    #: For ``hybrid``: content + weight * overlap.
    overlap: Literal["dice", "tversky", "generalized_dice", "focal", "bce"] = "dice"
    weight: float = 1.0
    #: The paper's Table 2 ablation: train the backbone adversarially with its own learning rate.
    finetune_backbone: bool = False
    backbone_learning_rate: float = 1e-5


@dataclass
class AugmentConfig:
    """Augmentation applied identically to image and mask."""

    rotation_degrees: float = 30.0
    flip: bool = False
    intensity_scale: float = 0.0
    gamma: float = 0.0


@dataclass
class TrainConfig:
    """Optimisation and run control."""

    epochs: int = 100
    steps_per_epoch: int = 100
    batch_size: int = 8
    learning_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.999
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    early_stopping_patience: Optional[int] = None
    validation_steps: Optional[int] = None
    image_summary_every: int = 5
    seed: int = 0
    distribution: Literal["none", "mirrored", "multi_worker"] = "none"
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    jit_compile: bool = False


@dataclass
class Config:
    """A whole run configuration."""

    version: int = CONFIG_VERSION
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# === Loading ===


def deep_merge(base: dict, update: dict) -> dict:
    """Return ``base`` updated by ``update``, merging nested mappings instead of replacing them."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict:
    """``'train.epochs=5'`` -> ``{'train': {'epochs': 5}}`` (the value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc})") from None
    for key in reversed(keys):
        value = {key: value}
    return value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp`` and return it (ints accepted for floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key}: {value!r} is not allowed; use one of {allowed}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls, data, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{where}{unknown[0]}: unknown key; known keys{' in ' + prefix if prefix else ''}: {', '.join(names)}"
        )
    kwargs = {}
    for name in names:
        if name in data:
            key = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(data[name], hints[name], key)
    return cls(**kwargs)


def _check(cfg: Config) -> None:
    """Cross-field and range checks that the types alone do not express."""

    def need(ok: bool, key: str, value, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {value!r} is not allowed; {allowed}")

    if cfg.version > CONFIG_VERSION:
        raise ConfigError(f"version: {cfg.version} is newer than this wmhkeras understands ({CONFIG_VERSION})")
    d, m, lo, a, t = cfg.data, cfg.model, cfg.loss, cfg.augment, cfg.train
    need(len(d.modalities) >= 1 and d.modalities[0] == "flair" and len(set(d.modalities)) == len(d.modalities),
         "data.modalities", d.modalities, "use [flair] or [flair, t1]")
    need(d.lesion_fraction is None or 0.0 <= d.lesion_fraction <= 1.0, "data.lesion_fraction", d.lesion_fraction, "use a value in [0, 1], or null")
    need(d.label_smoothing is None or (len(d.label_smoothing) == 2 and 0 <= d.label_smoothing[0] < 0.5 < d.label_smoothing[1] <= 1),
         "data.label_smoothing", d.label_smoothing, "use [low, high] with 0 <= low < 0.5 < high <= 1, or null")
    need(len(d.split) == 3 and all(s >= 0 for s in d.split) and abs(sum(d.split) - 1) < 1e-6 and d.split[0] > 0,
         "data.split", d.split, "use three non-negative fractions [train, validation, hold-out] summing to 1")
    need(len(d.patch_size) == 2 and all(p > 0 for p in d.patch_size), "data.patch_size", d.patch_size, "use [height, width] > 0")
    need(d.memory_limit_gb > 0, "data.memory_limit_gb", d.memory_limit_gb, "use a positive number")
    need(1 <= m.depth <= 7, "model.depth", m.depth, "use 1 to 7")
    need(m.base_filters >= 1, "model.base_filters", m.base_filters, "use a positive integer")
    need(0 <= m.bn_momentum < 1, "model.bn_momentum", m.bn_momentum, "use a value in [0, 1)")
    need(m.output_prior is None or 0 < m.output_prior < 1, "model.output_prior", m.output_prior, "use a value in (0, 1), or null")
    need(len(m.input_size) == 2 and all(s > 0 for s in m.input_size), "model.input_size", m.input_size, "use [height, width]")
    divisor = 2**m.depth
    need(all(s % divisor == 0 for s in m.input_size), "model.input_size", m.input_size,
         f"each size must divide by 2^depth = {divisor} (model.depth = {m.depth})")
    if d.sampling == "patches":
        need(all(s % divisor == 0 for s in d.patch_size), "data.patch_size", d.patch_size,
             f"each size must divide by 2^depth = {divisor}")
    need(len(lo.layers) >= 1, "loss.layers", lo.layers, "name at least one backbone layer")
    need(lo.weight >= 0, "loss.weight", lo.weight, "use a non-negative weight")
    need(lo.backbone_learning_rate > 0, "loss.backbone_learning_rate", lo.backbone_learning_rate, "use a positive number")
    need(0 <= a.rotation_degrees <= 180, "augment.rotation_degrees", a.rotation_degrees, "use 0 to 180")
    need(0 <= a.intensity_scale < 1, "augment.intensity_scale", a.intensity_scale, "use a value in [0, 1)")
    need(0 <= a.gamma < 1, "augment.gamma", a.gamma, "use a value in [0, 1)")
    need(a.gamma == 0 or d.normalisation == "max", "augment.gamma", a.gamma,
         "gamma needs intensities in [0, 1]: use 0 with data.normalisation: zscore")
    need(t.epochs >= 1, "train.epochs", t.epochs, "use at least 1")
    need(t.steps_per_epoch >= 1, "train.steps_per_epoch", t.steps_per_epoch, "use at least 1")
    need(t.batch_size >= 1, "train.batch_size", t.batch_size, "use at least 1")
    need(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "use a positive number")
    need(0 <= t.beta_1 < 1 and 0 <= t.beta_2 < 1, "train.beta_1/beta_2", (t.beta_1, t.beta_2), "use values in [0, 1)")
    need(t.early_stopping_patience is None or t.early_stopping_patience >= 1,
         "train.early_stopping_patience", t.early_stopping_patience, "use at least 1, or null")
    need(t.image_summary_every >= 0, "train.image_summary_every", t.image_summary_every, "use 0 (off) or more")


def config_from_dict(data: dict) -> Config:
    """Build and validate a :class:`Config` from a plain mapping."""
    cfg = _build(Config, data, "")
    _check(cfg)
    return cfg


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def load_config(paths=(), overrides=()) -> Config:
    """Load YAML files (deep-merged in order), apply ``key=value`` overrides, validate.

    Relative ``data.path`` values in a file are resolved against that file's folder.
    """
    merged: dict = {}
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        data = read_yaml(p)
        path_value = (data.get("data") or {}).get("path") if isinstance(data.get("data"), dict) else None
        if isinstance(path_value, str) and not Path(path_value).is_absolute():
            data = deep_merge(data, {"data": {"path": str((Path(p).parent / path_value).resolve())}})
        merged = deep_merge(merged, data)
    for text in overrides:
        merged = deep_merge(merged, parse_override(text))
    return config_from_dict(merged)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    from wmhkeras.io.files import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
