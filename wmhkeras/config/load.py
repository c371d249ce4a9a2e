"""Loading a config: YAML files deep-merged in order, ``--set`` overrides, typed and validated at load.

A config is built from one or more YAML files, deep-merged left to right, then ``--set`` overrides
(``section.key=value``, the value parsed as YAML). Unknown keys, wrong types and values outside
their allowed set raise :class:`~wmhkeras.errors.ConfigError` naming the key, the value seen and what
is allowed. The resolved config is written into every run folder with :func:`save_config`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Literal

import yaml

from wmhkeras.config.schema import CONFIG_VERSION, Config, ExperimentConfig
from wmhkeras.errors import ConfigError
from wmhkeras.io.files import atomic_write_text
from wmhkeras.io.model_card import MAX_CONTEXT_SLICES

#: Values in a config file that name a file or folder; a relative one is resolved against the file's folder.
RELATIVE_PATHS = (("data", "path"), ("experiment", "external"))
#: Keys whose default changed after runs were saved without them: a run folder's ``config.yaml`` (saved
#: whole, every key written) that lacks one ran with this value (:func:`load_run_config`).
SAVED_RUN_DEFAULTS = {("data", "lesion_position"): "centre"}


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


def _need(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {value!r} is not allowed; {allowed}")


def _check(cfg: Config) -> None:
    """Cross-field and range checks that the types alone do not express, section by section."""
    if cfg.version > CONFIG_VERSION:
        raise ConfigError(f"version: {cfg.version} is newer than this wmhkeras understands ({CONFIG_VERSION})")
    _check_data_and_model(cfg)
    _check_loss_and_augment(cfg)
    _check_synthesis_and_training(cfg)


def _check_data_and_model(cfg: Config) -> None:
    d, m = cfg.data, cfg.model
    _need(len(d.modalities) >= 1 and d.modalities[0] == "flair" and len(set(d.modalities)) == len(d.modalities),
          "data.modalities", d.modalities, "use [flair] or [flair, t1]")
    _need(d.lesion_fraction is None or 0.0 <= d.lesion_fraction <= 1.0, "data.lesion_fraction", d.lesion_fraction, "use a value in [0, 1], or null")
    _need(d.label_smoothing is None or (len(d.label_smoothing) == 2 and 0 <= d.label_smoothing[0] < 0.5 < d.label_smoothing[1] <= 1),
          "data.label_smoothing", d.label_smoothing, "use [low, high] with 0 <= low < 0.5 < high <= 1, or null")
    _need(len(d.split) == 3 and all(s >= 0 for s in d.split) and abs(sum(d.split) - 1) < 1e-6 and d.split[0] > 0,
          "data.split", d.split, "use three non-negative fractions [train, validation, hold-out] summing to 1")
    _need(len(d.patch_size) == 2 and all(p > 0 for p in d.patch_size), "data.patch_size", d.patch_size, "use [height, width] > 0")
    _need(d.memory_limit_gb > 0, "data.memory_limit_gb", d.memory_limit_gb, "use a positive number")
    _need(len(d.spacing) == 2 and all(s > 0 for s in d.spacing), "data.spacing", d.spacing, "use [x, y] in mm > 0")
    _need(0 <= d.context_slices <= MAX_CONTEXT_SLICES, "data.context_slices", d.context_slices,
          f"use 0 (2D) to {MAX_CONTEXT_SLICES}")
    _need(1 <= m.depth <= 7, "model.depth", m.depth, "use 1 to 7")
    _need(m.base_filters >= 1, "model.base_filters", m.base_filters, "use a positive integer")
    _need(0 <= m.bn_momentum < 1, "model.bn_momentum", m.bn_momentum, "use a value in [0, 1)")
    _need(m.output_prior is None or 0 < m.output_prior < 1, "model.output_prior", m.output_prior, "use a value in (0, 1), or null")
    _need(len(m.input_size) == 2 and all(s > 0 for s in m.input_size), "model.input_size", m.input_size, "use [height, width]")
    divisor = 2**m.depth
    _need(all(s % divisor == 0 for s in m.input_size), "model.input_size", m.input_size,
          f"each size must divide by 2^depth = {divisor} (model.depth = {m.depth})")
    if d.sampling == "patches":
        _need(all(s % divisor == 0 for s in d.patch_size), "data.patch_size", d.patch_size,
             f"each size must divide by 2^depth = {divisor}")


def _check_loss_and_augment(cfg: Config) -> None:
    lo, a = cfg.loss, cfg.augment
    _need(len(lo.layers) >= 1, "loss.layers", lo.layers, "name at least one backbone layer")
    _need(lo.weight >= 0, "loss.weight", lo.weight, "use a non-negative weight")
    _need(lo.backbone_learning_rate > 0, "loss.backbone_learning_rate", lo.backbone_learning_rate, "use a positive number")
    _need(0 <= a.rotation_degrees <= 180, "augment.rotation_degrees", a.rotation_degrees, "use 0 to 180")
    _need(0 <= a.intensity_scale < 1, "augment.intensity_scale", a.intensity_scale, "use a value in [0, 1)")
    _need(0 <= a.gamma < 1, "augment.gamma", a.gamma, "use a value in [0, 1)")
    _need(0 <= a.scale < 1, "augment.scale", a.scale, "use a value in [0, 1)")
    _need(0 <= a.intensity_shift <= 1, "augment.intensity_shift", a.intensity_shift, "use a value in [0, 1]")
    _need(0 <= a.noise <= 1, "augment.noise", a.noise, "use a value in [0, 1]")
    _need(0 <= a.bias_field <= 1, "augment.bias_field", a.bias_field, "use a value in [0, 1]")
    _need(0 <= a.blur <= 3, "augment.blur", a.blur, "use 0 to 3 pixels")
    _need(0 <= a.low_resolution <= 3, "augment.low_resolution", a.low_resolution, "use 0 to 3")
    _need(0 <= a.histogram_shift < 0.5, "augment.histogram_shift", a.histogram_shift,
          "use a value in [0, 0.5) (the remapping must stay strictly increasing)")


def _check_synthesis_and_training(cfg: Config) -> None:
    d, t = cfg.data, cfg.train
    ls = d.lesion_synthesis
    _need(ls.volumes >= 1, "data.lesion_synthesis.volumes", ls.volumes, "use at least 1")
    _need(0 <= ls.share <= 1, "data.lesion_synthesis.share", ls.share, "use a value in [0, 1]")
    _need(ls.seed >= 0, "data.lesion_synthesis.seed", ls.seed, "use a non-negative integer")
    _need(not ls.enabled or len(ls.masks) >= 1, "data.lesion_synthesis.masks", ls.masks,
          "name at least one folder (or NIfTI file) of lesion masks when data.lesion_synthesis.enabled is true")
    _need(not ls.enabled or d.lesion_fraction is not None, "data.lesion_fraction", d.lesion_fraction,
          "lesion synthesis paints a share of the lesion samples; set a lesion fraction, not null")
    hn = d.hard_negatives
    _need(0 <= hn.share <= 1, "data.hard_negatives.share", hn.share, "use a value in [0, 1]")
    _need(0 < hn.brightest < 1, "data.hard_negatives.brightest", hn.brightest, "use a fraction in (0, 1)")
    _need(not hn.share or d.sampling == "patches", "data.hard_negatives.share", hn.share,
          "hard negatives centre lesion-free patches; use data.sampling: patches, or share 0")
    _need(not hn.share or (d.lesion_fraction is not None and d.lesion_fraction < 1), "data.lesion_fraction",
          d.lesion_fraction, "hard negatives are a share of the lesion-free patches; use a lesion fraction below 1")
    _need(t.epochs >= 1, "train.epochs", t.epochs, "use at least 1")
    _need(t.steps_per_epoch >= 1, "train.steps_per_epoch", t.steps_per_epoch, "use at least 1")
    _need(t.batch_size >= 1, "train.batch_size", t.batch_size, "use at least 1")
    _need(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "use a positive number")
    _need(0 <= t.beta_1 < 1 and 0 <= t.beta_2 < 1, "train.beta_1/beta_2", (t.beta_1, t.beta_2), "use values in [0, 1)")
    _need(t.early_stopping_patience is None or t.early_stopping_patience >= 1,
          "train.early_stopping_patience", t.early_stopping_patience, "use at least 1, or null")
    _need(t.image_summary_every >= 0, "train.image_summary_every", t.image_summary_every, "use 0 (off) or more")
    f = cfg.finetune
    _need(f.learning_rate > 0, "finetune.learning_rate", f.learning_rate, "use a positive number")
    _need(f.freeze_encoder_epochs >= 0, "finetune.freeze_encoder_epochs", f.freeze_encoder_epochs,
          "use 0 (none) or more (train.epochs or more: frozen throughout)")


def _check_experiment(cfg: Config, exp: ExperimentConfig) -> None:
    """Cross-field checks of the ``experiment`` section; fills the defaults that depend on the run config."""

    def need(ok: bool, key: str, value, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"experiment.{key}: {value!r} is not allowed; {allowed}")

    need(len(exp.losses) >= 1 and len(set(exp.losses)) == len(exp.losses), "losses", exp.losses,
         "list at least one loss, each once")
    if exp.reference is None:
        exp.reference = "content" if "content" in exp.losses else exp.losses[0]
    need(exp.reference in exp.losses, "reference", exp.reference, f"use one of the listed losses {exp.losses}")
    if exp.seeds is None:
        exp.seeds = [cfg.train.seed]
    need(len(exp.seeds) >= 1 and len(set(exp.seeds)) == len(exp.seeds) and all(s >= 0 for s in exp.seeds),
         "seeds", exp.seeds, "list at least one non-negative seed, each once")
    if exp.split_seed is None:
        exp.split_seed = cfg.train.seed
    need(exp.split_seed >= 0, "split_seed", exp.split_seed, "use a non-negative integer")
    need(exp.folds is None or exp.folds >= 2, "folds", exp.folds, "use 2 or more, or null")
    need(not (exp.folds and exp.leave_one_site_out), "leave_one_site_out", exp.leave_one_site_out,
         f"choose K-fold (folds = {exp.folds}) or leave-one-site-out, not both")
    need(not (exp.external and exp.external_site), "external_site", exp.external_site,
         f"give an external dataset (external = {exp.external!r}) or an external site, not both")
    edges = exp.pcd_bins
    need(len(edges) >= 2 and all(b > a for a, b in zip(edges[:-1], edges[1:], strict=True)) and edges[0] >= 0,
         "pcd_bins", edges, "use at least two increasing, non-negative bin edges (%)")
    need(0 < exp.threshold <= 1, "threshold", exp.threshold, "use a value in (0, 1]")
    if exp.mode == "holdout":
        need(cfg.data.split[2] > 0 or exp.external or exp.external_site, "external", exp.external,
             f"data.split {cfg.data.split} leaves no hold-out subject, so name an external set to test on")


def config_from_dict(data: dict) -> Config:
    """Build and validate a :class:`Config` from a plain mapping (its ``experiment`` section included)."""
    cfg = _build(Config, data, "")
    _check(cfg)
    if cfg.experiment is not None:
        _check_experiment(cfg, cfg.experiment)
    return cfg


def read_yaml(path: str | Path) -> dict:
    """A config file's mapping of sections; a missing or malformed file raises :class:`ConfigError`."""
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


def _resolve_relative_paths(data: dict, folder: Path) -> dict:
    """``data.path``, ``experiment.external`` and ``data.lesion_synthesis.masks`` of one file, when
    relative, made absolute from ``folder`` (the masks after ``$VARIABLE`` and ``~`` expansion)."""
    for section, key in RELATIVE_PATHS:
        value = data.get(section).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            data = deep_merge(data, {section: {key: str((folder / value).resolve())}})
    synthesis = data.get("data", {}).get("lesion_synthesis") if isinstance(data.get("data"), dict) else None
    masks = synthesis.get("masks") if isinstance(synthesis, dict) else None
    if isinstance(masks, list) and all(isinstance(m, str) for m in masks):
        data = deep_merge(data, {"data": {"lesion_synthesis": {"masks": [_absolute(m, folder) for m in masks]}}})
    return data


def _absolute(path: str, folder: Path) -> str:
    """``path`` with ``$VARIABLES`` and ``~`` expanded, made absolute from ``folder`` when relative."""
    expanded = Path(os.path.expandvars(path)).expanduser()
    return str(expanded if expanded.is_absolute() else (folder / expanded).resolve())


def load_config(paths=(), overrides=(), *, experiment: bool = False) -> Config:
    """Load YAML files (deep-merged in order), apply ``key=value`` overrides, validate.

    Relative ``data.path`` and ``experiment.external`` values in a file are resolved against that file's
    folder. Overrides reach every section, e.g. ``train.epochs=5`` or ``experiment.folds=5``.

    Args:
        paths: one YAML file or several.
        overrides: ``section.key=value`` strings, applied after the files.
        experiment: give the config an ``experiment`` section (all defaults) when the files and
            overrides have none, as ``wmhkeras experiment`` does: any run config is an experiment config.
            Otherwise ``cfg.experiment`` is ``None`` unless a file has the section.
    """
    merged: dict = {}
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        merged = deep_merge(merged, _resolve_relative_paths(read_yaml(p), Path(p).parent))
    for text in overrides:
        merged = deep_merge(merged, parse_override(text))
    if experiment and merged.get("experiment") is None:
        merged["experiment"] = {}
    return config_from_dict(merged)


def load_run_config(path: str | Path, overrides=()) -> Config:
    """A run folder's saved ``config.yaml``, read as the run was made: a key of :data:`SAVED_RUN_DEFAULTS`
    that the file lacks takes the value such a run was made with, not the current default; then ``overrides`` apply, as in :func:`load_config`."""
    merged = _resolve_relative_paths(read_yaml(path), Path(path).parent)
    for (section, key), value in SAVED_RUN_DEFAULTS.items():
        if isinstance(merged.get(section), dict) and key not in merged[section]:
            merged[section] = {**merged[section], key: value}
    for text in overrides:
        merged = deep_merge(merged, parse_override(text))
    return config_from_dict(merged)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    return atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
