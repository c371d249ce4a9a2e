"""The model card of an export: built from the run and the exporter's statements, portable, written twice.

:func:`build_card` fills a :class:`~wmhkeras.io.model_card.ModelCard` from the exported model, its run
folder (config, split, ``summary.json``, the training subjects' voxel sizes read from their NIfTI headers,
hold-out metrics of ``wmhkeras evaluate``, the content loss's backbone weights as ``versions.json`` records
them, with their credit, and for a fine-tuned run the model it started from, from its ``init.json``: that
model's SHA-256, training data and licence, as the card's ``parent``) and the free texts of a card-info file
(:func:`read_card_info`: intended use, limitations, input requirements, licence and citation;
:data:`~wmhkeras.io.model_card.NOT_STATED` where nobody said). :func:`portable` makes every path in it
relative and drops the exporting machine's folders. :func:`write_card` writes it beside the SavedModel and
inside it (``assets.extra/``).
"""

from __future__ import annotations

import logging
import os
import re
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import nibabel as nib
import yaml

from wmhkeras import __version__
from wmhkeras.data.datasets import Subject
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.export.report import REPORT_NAME
from wmhkeras.export.source import ExportSource, RunSubjects
from wmhkeras.io.files import read_json
from wmhkeras.io.model_card import (
    ASSETS_EXTRA,
    MODEL_CARD_NAME,
    MODEL_CARD_VERSION,
    ORIENTATION,
    THRESHOLD,
    HoldoutMetrics,
    InputRequirements,
    ModelCard,
    ParentModel,
    ServingLayout,
    TrainingData,
    VoxelSize,
)
from wmhkeras.io.nifti import canonical_grid
from wmhkeras.io.provenance import package_versions, utc_now

log = logging.getLogger(__name__)

#: Free-text fields a card-info file may set (``wmhkeras export --card-info FILE``), with the keys each
#: section accepts; everything else in the card is computed by the export.
CARD_INFO_KEYS = {
    "intended_use": None,
    "not_intended_for": None,
    "limitations": None,
    "input_requirements": ("skull_stripped", "bias_corrected", "notes"),
    "training_data": ("dataset", "description", "licence", "citation"),
    "holdout_metrics": ("source", "protocol", "n_subjects", "overall", "by_site", "results"),
}
#: Where a run folder keeps the ``wmhkeras evaluate`` output of its hold-out subjects (found by the export).
RUN_EVALUATION = Path("evaluate") / "summary.json"
#: The licence and credit of pretrained VGG weights (the ImageNet VGG of K. Simonyan and A. Zisserman, Visual
#: Geometry Group, University of Oxford), in the card of every model trained with them (``backbone``).
VGG_LICENCE = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"
VGG_CREDIT = ('K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", '
              "ICLR 2015, arXiv:1409.1556")
#: An absolute or ``~/`` path inside a text (not a URL's ``//host``, not ``a/b``).
_ABSOLUTE = re.compile(r"(?<![\w.~+:/-])(?:~(?=/)|/[\w.~+-]+)(?:/[\w.~+-]+)*/?")


# === Inputs of the card, checked before the export starts ===


def read_card_info(path: str | Path | None) -> dict:
    """The statements of a card-info file (YAML or JSON), checked; ``{}`` without a file.

    Raises:
        InputError: the file is missing or not YAML/JSON. ConfigError: a key that is not in
            :data:`CARD_INFO_KEYS`, or a value of the wrong kind (e.g. ``skull_stripped: maybe``).
    """
    if path is None:
        return {}
    path = Path(path)
    try:
        info = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise InputError(f"{path}: cannot read the card info ({err.__class__.__name__}: {err})") from None
    if not isinstance(info, dict):
        raise ConfigError(f"{path}: the card info must be a mapping of {', '.join(CARD_INFO_KEYS)}")
    for key, value in info.items():
        if key not in CARD_INFO_KEYS:
            raise ConfigError(f"{path}: {key!r} is not a card-info key; use any of {', '.join(CARD_INFO_KEYS)}")
        allowed = CARD_INFO_KEYS[key]
        extra = sorted(set(value) - set(allowed)) if allowed and isinstance(value, dict) else []
        if extra:
            raise ConfigError(f"{path}: {key}.{extra[0]} is not a card-info key; {key} takes {', '.join(allowed)}")
    checked = dict(info)
    if isinstance(info.get("holdout_metrics"), dict):
        checked["holdout_metrics"] = {"source": "card info", **info["holdout_metrics"]}
    try:  # the card checks every value; a bare card around the statements says which one is wrong
        ModelCard(("flair",), "max", (1, 1), **checked)
    except InputError as err:
        raise ConfigError(f"{path}: {str(err).removeprefix('model card: ')}") from None
    return info


def find_holdout_summary(metrics: str | Path | None, run_dir: Optional[Path]) -> Optional[Path]:
    """The ``summary.json`` of a ``wmhkeras evaluate`` output: ``metrics`` (the folder or the file), else the
    run folder's ``evaluate/summary.json`` when it exists, else ``None``.

    Raises:
        InputError: ``metrics`` is given and is not an ``evaluate`` output.
    """
    if metrics is None:
        found = None if run_dir is None else run_dir / RUN_EVALUATION
        return found if found is not None and found.is_file() else None
    path = Path(metrics)
    path = path / "summary.json" if path.is_dir() else path
    summary = read_json(path)
    if not isinstance(summary.get("overall"), dict) or "n_subjects" not in summary:
        raise InputError(f"{path}: not the summary.json of wmhkeras evaluate (no overall / n_subjects)")
    return path


# === Computed sections ===


def training_voxel_size(subjects: Optional[Sequence[Subject]]) -> Optional[VoxelSize]:
    """Voxel sizes of the training subjects' FLAIR (NIfTI headers only, canonical axes), or ``None`` when
    there are no subjects or a header cannot be read."""
    if not subjects:
        return None
    try:
        sizes = [canonical_grid(nib.load(str(s.flair)))[1] for s in subjects]
    except Exception as exc:  # nibabel raises many types; the card then records no voxel size
        log.warning("training voxel sizes not recorded: %s", exc)
        return None
    axes = list(zip(*sizes, strict=True))
    return VoxelSize(tuple(min(a) for a in axes), tuple(max(a) for a in axes),
                     tuple(float(statistics.median(a)) for a in axes), len(sizes))


def backbone_section(src: ExportSource) -> Optional[dict]:
    """The card's ``backbone``: what the run's ``versions.json`` records of the content loss's backbone
    (name, layers, weights, source, file, sha256), else the config's recipe with ``source``, ``file`` and
    ``sha256`` null (a run folder that recorded none), plus the licence and credit of pretrained weights.
    ``None`` without a config or for a loss without a backbone."""
    cfg = src.config
    if cfg is None or not cfg.loss.uses_backbone:
        return None
    lo = cfg.loss
    recorded = None
    run = src.run
    if run is not None and run.versions.is_file():
        try:
            recorded = read_json(run.versions).get("backbone")
        except InputError as err:
            log.warning("the card records no backbone weights: %s", err)
    if not isinstance(recorded, dict):
        recorded = {"name": lo.backbone, "layers": list(lo.layers), "weights": lo.weights, "source": None,
                    "file": None, "sha256": None}
    if recorded.get("weights") == "random":
        return dict(recorded)
    return {**recorded, "licence": VGG_LICENCE, "credit": VGG_CREDIT}


def holdout_metrics(summary_path: Optional[Path], run_dir: Optional[Path]) -> Optional[HoldoutMetrics]:
    """The hold-out section from an ``evaluate`` ``summary.json`` (its overall and per-site statistics)."""
    if summary_path is None:
        return None
    summary = read_json(summary_path)
    truth = summary.get("truth")
    own = run_dir is not None and truth is not None and _same_path(truth, run_dir, summary_path)
    protocol = (f"wmhkeras evaluate of predictions {summary.get('pred')!s} against {truth!s}"
                + (" (this run's hold-out subjects, never trained on)" if own else ""))
    return HoldoutMetrics(source=str(summary_path), protocol=protocol, n_subjects=summary.get("n_subjects"),
                          overall=summary.get("overall") or {}, by_site=summary.get("by_site") or {})


def _same_path(recorded: str, target: Path, summary_path: Path) -> bool:
    """Whether a path recorded by ``evaluate`` (relative to where it ran) names ``target``."""
    target = target.resolve()
    return any(Path(base, recorded).resolve() == target for base in (Path.cwd(), summary_path.parent.parent))


# === Portable paths ===


def _bases(extra: Sequence[Path]) -> list[Path]:
    """Folders paths are made relative to: never one above the home or temporary folder (``/``, ``/home``)."""
    private = [Path.home().resolve(), Path(tempfile.gettempdir()).resolve()]
    out = []
    for base in (Path.cwd(), *extra):
        base = Path(os.path.abspath(base))
        if not any(base in p.parents for p in private) and base not in out:
            out.append(base)
    return out


def portable_path(path: str, bases: Sequence[Path]) -> str:
    """An absolute (or ``~``) path relative to the first of ``bases`` that holds it, else its name alone."""
    p = Path(os.path.abspath(os.path.expanduser(path)))
    for base in bases:
        for candidate, root in ((p, base), (p.resolve(), base.resolve())):
            if candidate.is_relative_to(root):
                return candidate.relative_to(root).as_posix()
    return p.name


def portable(value: Any, bases: Sequence[Path]) -> Any:
    """``value`` (a card's dict) with every absolute path, whole or inside a text, made relative."""
    if isinstance(value, dict):
        return {k: portable(v, bases) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, bases) for v in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and ("/" in value or value.startswith("~")):
        return _ABSOLUTE.sub(lambda m: portable_path(m.group(0), bases) or ".", value)
    return value


# === The card ===


def build_card(src: ExportSource, *, variants: Sequence[str], subjects: Optional[RunSubjects],
               calibration: dict | str | None, passed: bool, info: dict, holdout_summary: Optional[Path],
               saved_model: str, signatures: dict, tflite: dict, serving: Optional[ServingLayout] = None,
               saved_models: Optional[dict] = None) -> ModelCard:
    """The card of an export: the model's settings, what the run tells, and the statements of ``info``
    (:func:`read_card_info`), with every path made :func:`portable`. ``saved_models``: every SavedModel
    written, by precision (``{"float32": {"path": ..., "compute": ...}, ...}``); the card describes the
    float32 one at ``saved_model``."""
    run = src.run
    stated = info.get("holdout_metrics")
    card = ModelCard(
        modalities=tuple(src.modalities), normalisation=src.normalisation, input_size=src.input_size,
        resample=src.segmenter.settings["resample"], context_slices=src.context_slices,
        format_version=MODEL_CARD_VERSION, created=utc_now(), source=src.description, project_version=__version__,
        **{k: info[k] for k in ("intended_use", "not_intended_for", "limitations") if k in info},
        input_requirements=InputRequirements(
            tuple(src.modalities), voxel_size_mm=training_voxel_size(subjects["train"] if subjects else None),
            **info.get("input_requirements", {})),
        training_data=_training_data(src, subjects, info.get("training_data", {})),
        holdout_metrics=(HoldoutMetrics(**{"source": "stated by the exporter (card info)", **stated}) if stated
                         else holdout_metrics(holdout_summary, src.run_dir)),
        saved_model=saved_model, precision="float32",
        saved_models=saved_models or {"float32": {"path": saved_model, "compute": "float32"}},
        serving=serving, parent=_parent(src), signatures=signatures, orientation=ORIENTATION,
        threshold=THRESHOLD, tflite=tflite, calibration=calibration if "int8" in variants else None,
        training_config=src.config.to_dict() if src.config is not None else None, backbone=backbone_section(src),
        validation_metrics=run.read_summary().to_dict() if run is not None and run.summary.is_file() else None,
        versions=package_versions(extra=("ai-edge-litert",)),
        verification={"passed": passed, "report": REPORT_NAME},
    )
    bases = _bases([] if src.run_dir is None else [src.run_dir.parent])
    return ModelCard.from_dict(portable(card.to_dict(), bases), "model card")


def _parent(src: ExportSource) -> Optional[ParentModel]:
    """The model a fine-tuned run started from (its ``init.json``), with that model's training data and licence."""
    run = src.run
    record = run.read_init() if run is not None else None
    return None if record is None else record.parent_model()


def _training_data(src: ExportSource, subjects: Optional[RunSubjects], stated: dict) -> TrainingData:
    """The dataset, subjects per split set and their sites (a run folder with ``split.json``), then ``stated``."""
    run, data = src.run, {}
    if run is not None and run.split.is_file():
        data = {"dataset": src.config.data.path if src.config else None, "subjects": run.read_split().counts()}
        if subjects is not None:
            data["sites"] = {k: sorted({s.site for s in v}) for k, v in subjects.items()}
    return TrainingData(**{**data, **stated})


def write_card(card: ModelCard, folder: Path) -> list[Path]:
    """Write ``card`` into the export ``folder`` and into the ``assets.extra/`` of each of its SavedModels
    (``card.saved_models``; inside another SavedModel than ``card.saved_model``, the card with
    ``saved_model`` and ``precision`` naming that one). Returns the paths, the export folder's first."""
    cards = {card.saved_model: card}
    for precision, entry in card.saved_models.items():
        if entry["path"] != card.saved_model:
            cards[entry["path"]] = replace(card, saved_model=entry["path"], precision=precision)
    written = [card.write(folder / MODEL_CARD_NAME)]
    for path, inner in cards.items():
        inside = folder / path / ASSETS_EXTRA / MODEL_CARD_NAME
        inside.parent.mkdir(exist_ok=True)
        written.append(inner.write(inside))
    return written
