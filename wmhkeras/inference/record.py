"""The settings of a segmentation run and its record ``segment.json`` (model, settings, outcome, versions).

``segment.json`` is written when a run starts writing into its folder, once its first subject succeeded
(``state: running``), and again when it ends (``done``), so a folder whose run was interrupted still says
how its outputs were made (a run in which no subject succeeds writes none, and leaves the folder as it
found it); ``segment --skip-existing`` resumes
only into a folder made with the same model source and the same settings (:func:`check_previous_record`),
except those that do not change the outputs' content (:data:`FREE_SETTINGS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from wmhkeras.errors import ConfigError, InputError
from wmhkeras.inference.loaders import Segmenter
from wmhkeras.inference.precision import check_precision
from wmhkeras.inference.sources import ModelSpec
from wmhkeras.io.files import atomic_write_json, read_json
from wmhkeras.io.naming import SUMMARY_NAME
from wmhkeras.io.provenance import package_versions, utc_now
from wmhkeras.io.subject import Subject

#: Settings that may differ between the runs writing into one folder (they change no output's content).
FREE_SETTINGS = ("batch_size", "qc", "precision")

#: Provenance of a segmentation run (model, settings, versions), written beside the outputs.
RUN_RECORD_NAME = "segment.json"


@dataclass(frozen=True)
class SegmentSettings:
    """The options of :func:`~wmhkeras.inference.segment.segment` (and of ``wmhkeras.segment_image``) that
    decide its outputs, recorded in ``segment.json``; built once, by the command line or the Python API."""

    #: Probability at and above which a voxel is lesion, in (0, 1].
    threshold: float = 0.5
    #: 26-connected lesions smaller than this volume (mm^3) are removed from the mask.
    min_lesion_mm3: float = 0.0
    #: Average with the prediction on left-right mirrored slices (implied by ``uncertainty``).
    tta_flip: bool = False
    #: Slices per model call.
    batch_size: int = 8
    #: 26-connected lesions of fewer voxels are removed (instead of ``min_lesion_mm3``).
    min_lesion_voxels: int = 0
    #: Also write the flip disagreement ``|p - p_flipped|``.
    uncertainty: bool = False
    #: Zero predictions where the max-normalised FLAIR is below this fraction.
    brain_threshold: Optional[float] = None
    #: BIDS-derivative names and sidecars (:mod:`wmhkeras.io.bids`) instead of flat ``<subject>_wmh_*`` names;
    #: None: when every input is a BIDS dataset (``segment`` records what it resolved to).
    bids_out: Optional[bool] = None
    #: A prediction-only montage per subject (``qc/<subject>.png``) and the index ``qc.html``.
    qc: bool = False
    #: ``auto``, ``float32`` or ``bfloat16`` (:mod:`wmhkeras.inference.precision`); bfloat16 only where the
    #: parity gate passes, so it may differ between runs resuming one folder.
    precision: str = "float32"

    def __post_init__(self):
        if self.uncertainty:
            object.__setattr__(self, "tta_flip", True)

    def check(self) -> None:
        """Raises ConfigError naming the option (and its command-line flag) that is out of range."""
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold (--threshold): {self.threshold!r} is not allowed; use a value in (0, 1]")
        if not self.min_lesion_mm3 >= 0.0:
            raise ConfigError(f"min_lesion_mm3 (--min-lesion-mm3): {self.min_lesion_mm3!r} is not allowed; use 0 or more")
        if isinstance(self.min_lesion_voxels, bool) or not isinstance(self.min_lesion_voxels, int) or self.min_lesion_voxels < 0:
            raise ConfigError(f"min_lesion_voxels (--min-lesion-voxels): {self.min_lesion_voxels!r} is not allowed; "
                              "use an integer >= 0")
        if self.min_lesion_mm3 > 0 and self.min_lesion_voxels > 0:
            raise ConfigError("--min-lesion-mm3 and --min-lesion-voxels both set the minimum lesion size; give one")
        if self.brain_threshold is not None and not 0.0 <= self.brain_threshold <= 1.0:
            raise ConfigError(f"brain_threshold (--brain-threshold): {self.brain_threshold!r} is not allowed; "
                              "use a value in [0, 1] (a fraction of the FLAIR's maximum)")
        check_precision(self.precision)
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(f"batch_size (--batch-size): {self.batch_size!r} is not allowed; use an integer >= 1")


def model_record(spec: Optional[ModelSpec], segmenter: Optional[Segmenter],
                 modalities: Optional[Sequence[str]], default: bool = False) -> dict:
    """The model as loaded (else as inspected): source, format and preprocessing; for a built-in model its
    ``builtin`` name, and ``default: true`` when it was used because no model was named."""
    record = {"source": str(spec.source) if spec else segmenter.source if segmenter else "",
              "format": spec.format if spec else "segmenter"}
    if spec is not None and spec.builtin is not None:
        record |= {"builtin": spec.builtin.name, "default": default}
    if segmenter is not None:
        return {**record, **segmenter.settings, "precision": segmenter.precision}
    r = spec.resampling
    return {**record, "modalities": list(modalities or ()), "normalisation": spec.normalisation,
            "input_size": None if spec.input_size is None else list(spec.input_size),
            "resample": None if r is None else r.record(),
            "context_slices": spec.context_slices}


def write_record(path: Path, model: dict, settings: SegmentSettings, items: Sequence[Subject],
                 results: Sequence, state: str = "done", shard: Optional[tuple[int, int]] = None) -> Path:
    """``segment.json``: the model, the settings (every option), brain masks, the outcome and the versions;
    written when the run starts writing (``state`` ``running``, no outcome yet) and when it ends (``done``)."""
    return atomic_write_json(path, {
        "created": utc_now(),
        "state": state,
        "model": model,
        "settings": asdict(settings),
        "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
        "brain_masks": {i.subject: str(i.brain_mask) for i in items if i.brain_mask is not None},
        "subjects": {"total": len(results), "ok": sum(r.ok for r in results), "failed": sum(not r.ok for r in results),
                     "kept": sum(r.skipped for r in results)},
        "summary": SUMMARY_NAME,
        "versions": package_versions(),
    })


def check_previous_record(path: Path, model_source: str, settings: Mapping) -> None:
    """Refuse to resume into a folder whose ``segment.json`` has another model source or other settings.

    A folder without ``segment.json`` has nothing to compare; a setting missing on either side (a record
    written by another version) is not compared.

    Raises:
        ConfigError: a setting or the model differs (names the first one, both values, and the way out).
        InputError: ``segment.json`` exists but cannot be read.
    """
    if not path.is_file():
        return
    record = read_json(path)
    before = record.get("settings", {})
    if not isinstance(before, dict):
        raise InputError(f"{path}: 'settings' is not an object")
    changed = [(k, before[k], v) for k, v in settings.items() if k in before and k not in FREE_SETTINGS and before[k] != v]
    source = (record.get("model") or {}).get("source")
    if source is not None and source != model_source:
        changed.insert(0, ("model", source, model_source))
    if changed:
        key, old, new = changed[0]
        raise ConfigError(f"--skip-existing: {path.parent} holds outputs made with {key} {old!r}, now {new!r}; "
                          "the folder would mix two settings: use another --out, or leave out --skip-existing "
                          "to segment every subject again")
