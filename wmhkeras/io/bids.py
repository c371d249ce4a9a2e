"""BIDS in and out: the FLAIR/T1w images and WMH masks of a BIDS dataset, and the BIDS-derivative names
and sidecars of ``wmhkeras segment``. No TensorFlow; no volume is read here.

In (:func:`read_bids`): a dataset root (``dataset_description.json`` and/or ``sub-*`` folders) holds
``sub-<id>[/ses-<id>]/anat/*_FLAIR.nii[.gz]``. Each FLAIR image is one
:class:`~wmhkeras.io.subject.Subject`, its id the entities of its name (``sub-01_ses-02_acq-3d``), its
participant ``sub-<id>``, its site the ``site`` column of ``participants.tsv`` (else ``site0``); its T1 is
the ``*_T1w`` image of the same folder with the same entities, else the only ``*_T1w`` image there. Its
lesion mask is
``derivatives/<pipeline>/sub-<id>[/ses-<id>]/anat/<key>[_space-..][_desc-..]_label-WMH_mask.nii[.gz]``.
The pipeline is the only one under ``derivatives/`` holding such masks (those written by wmhkeras itself,
by their ``GeneratedBy`` name, are predictions and never taken as labels); with several, the dataset
path names one: ``<root>/derivatives/<pipeline>`` stands for the root's images with that pipeline's masks.

Out (:func:`output_paths`, :func:`write_derivative`): ``<out>/sub-X[/ses-Y]/anat/<key>_space-orig_label-WMH_
{probseg,mask}.nii.gz`` with one JSON sidecar each, ``<out>/dataset_description.json`` (``DatasetType:
derivative``) and ``<out>/.bidsignore`` for the non-BIDS tables (lesion tables, ``summary.csv``).
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from wmhkeras import __version__
from wmhkeras.errors import InputError
from wmhkeras.io.files import atomic_write_json, atomic_write_text, read_json
from wmhkeras.io.naming import LESIONS_SUFFIX, MASK_SUFFIX, PROB_SUFFIX, UNCERTAINTY_SUFFIX, is_nifti, strip_nifti
from wmhkeras.io.subject import Subject
from wmhkeras.io.subject_ids import check_subject_ids

log = logging.getLogger(__name__)

BIDS_VERSION = "1.10.0"
DESCRIPTION_NAME = "dataset_description.json"
PARTICIPANTS_NAME = "participants.tsv"
DERIVATIVES = "derivatives"
#: Name in ``GeneratedBy`` of the derivatives this package writes.
GENERATOR = "wmhkeras"
WMH_LABEL = "WMH"
#: Outputs lie on their source image's own grid.
SPACE = "orig"
FLAIR_SUFFIX = "FLAIR"
T1_SUFFIX = "T1w"
#: Entities a derivative adds to its source's name; without them a mask's name gives its image's key.
DERIVATIVE_ENTITIES = ("space", "res", "den", "label", "desc")
#: Files of a derivative folder that are not BIDS files (patterns of ``.bidsignore``): the tables, the run
#: record, the QC pages of ``wmhkeras segment --qc`` and the lock file a killed run leaves
#: (:data:`wmhkeras.io.lock.LOCK_NAME`).
BIDSIGNORE = ("summary.csv", "segment.json", f"*{LESIONS_SUFFIX}", "qc/", "qc.html", ".wmhkeras.lock")
_ENTITY = re.compile(r"([a-zA-Z]+)-([a-zA-Z0-9]+)")
_LABEL = re.compile(r"[a-zA-Z0-9]+")


@dataclass(frozen=True)
class BidsName:
    """A BIDS file name: its ``key-value`` entities in order, its suffix and extension."""

    entities: tuple[tuple[str, str], ...]
    suffix: str
    extension: str

    def get(self, entity: str) -> Optional[str]:
        return dict(self.entities).get(entity)

    @property
    def key(self) -> str:
        """The source entities (derivative ones dropped): ``sub-01_ses-02_acq-3d``."""
        return "_".join(f"{k}-{v}" for k, v in self.entities if k not in DERIVATIVE_ENTITIES)


def parse_name(name: str) -> Optional[BidsName]:
    """``'sub-01_ses-02_FLAIR.nii.gz'`` -> :class:`BidsName`; None unless it is ``sub-<label>[_<key>-<value>...]_<suffix>``."""
    stem = strip_nifti(name) if is_nifti(name) else name.split(".")[0]
    *parts, suffix = stem.split("_")
    matches = [_ENTITY.fullmatch(p) for p in parts]
    if not parts or not all(matches) or matches[0].group(1) != "sub" or not _LABEL.fullmatch(suffix):
        return None
    return BidsName(tuple((m.group(1), m.group(2)) for m in matches), suffix, name[len(stem):])


# === Reading a dataset ===


def is_bids_root(path: str | Path) -> bool:
    """A folder holding ``dataset_description.json`` or ``sub-<label>`` folders."""
    path = Path(path)
    return path.is_dir() and ((path / DESCRIPTION_NAME).is_file() or bool(_subject_dirs(path)))


def bids_location(path: str | Path) -> Optional[tuple[Path, Optional[Path]]]:
    """``(root, pipeline folder or None)`` when ``path`` is a BIDS root or ``<root>/derivatives/<pipeline>``."""
    path = Path(path)
    if path.is_dir() and path.parent.name == DERIVATIVES and is_bids_root(path.parent.parent):
        return path.parent.parent.resolve(), path.resolve()
    return (path.resolve(), None) if is_bids_root(path) else None


def _subject_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("sub-*") if p.is_dir() and _LABEL.fullmatch(p.name[4:]))


def _anat_files(root: Path) -> list[tuple[BidsName, Path]]:
    """The parsed NIfTI files of every ``sub-*/anat`` and ``sub-*/ses-*/anat`` folder under ``root``."""
    found = []
    for sub in _subject_dirs(root):
        for anat in [sub / "anat", *sorted(sub.glob("ses-*/anat"))]:
            files = sorted(p for p in anat.glob("sub-*") if p.is_file() and is_nifti(p)) if anat.is_dir() else []
            found += [(n, p) for p in files if (n := parse_name(p.name)) is not None]
    return found


def find_masks(folder: str | Path) -> dict[str, Path]:
    """The WMH masks (``*_label-WMH_mask.nii[.gz]``) under a derivative folder, by their source key.

    Raises:
        InputError: two masks have the same key (e.g. two ``desc-`` variants).
    """
    masks: dict[str, Path] = {}
    for name, path in _anat_files(Path(folder)):
        if name.suffix == "mask" and name.get("label") == WMH_LABEL:
            if name.key in masks:
                raise InputError(f"{folder}: two WMH masks for {name.key} ({masks[name.key].name}, {path.name}); "
                                 "keep one per image")
            masks[name.key] = path.resolve()
    return masks


def _generated_by_us(folder: Path) -> bool:
    if not (folder / DESCRIPTION_NAME).is_file():
        return False
    generated = read_json(folder / DESCRIPTION_NAME).get("GeneratedBy") or [{}]
    return isinstance(generated, list) and isinstance(generated[0], dict) and generated[0].get("Name") == GENERATOR


def label_pipelines(root: str | Path) -> dict[str, Path]:
    """The folders under ``<root>/derivatives`` that hold WMH masks, by name (wmhkeras' own outputs left out)."""
    folder = Path(root) / DERIVATIVES
    found = {}
    for pipeline in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        if _generated_by_us(pipeline):
            log.info("%s: written by %s, so predictions, not labels: skipped", pipeline, GENERATOR)
        elif find_masks(pipeline):
            found[pipeline.name] = pipeline
    return found


def _masks_of(root: Path, pipeline: Optional[Path]) -> dict[str, Path]:
    """The label masks of the dataset: the named pipeline's, else the only pipeline's, else none."""
    if pipeline is not None:
        masks = find_masks(pipeline)
        if not masks:
            raise InputError(f"{pipeline}: no sub-*/[ses-*/]anat/*_label-{WMH_LABEL}_mask.nii[.gz] file found")
        return masks
    pipelines = label_pipelines(root)
    if len(pipelines) > 1:
        raise InputError(f"{root}: WMH masks in several derivative pipelines ({', '.join(pipelines)}); give the "
                         f"pipeline folder as the dataset, e.g. {root / DERIVATIVES / next(iter(pipelines))}")
    if pipelines:
        log.info("%s: labels from derivatives/%s", root, next(iter(pipelines)))
    return find_masks(next(iter(pipelines.values()))) if pipelines else {}


def _sites(root: Path) -> dict[str, str]:
    """``participant_id -> site`` from ``participants.tsv`` when it has a ``site`` column."""
    path = root / PARTICIPANTS_NAME
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {r["participant_id"].strip(): r["site"].strip() for r in rows
            if (r.get("participant_id") or "").strip() and (r.get("site") or "").strip() not in ("", "n/a")}


def _t1_for(flair: BidsName, folder: Path, t1s: Sequence[tuple[BidsName, Path]]) -> Optional[Path]:
    """The ``*_T1w`` image of ``flair``'s folder: the one with the same entities, else the only one there."""
    here = [(n, p) for n, p in t1s if p.parent == folder]
    same = [p for n, p in here if n.key == flair.key]
    if same or len(here) == 1:
        return (same or [here[0][1]])[0].resolve()
    if here:
        log.warning("%s: %d T1w images and none with the FLAIR's entities %s; no T1", folder, len(here), flair.key)
    return None


def read_bids(path: str | Path, labels: bool = True) -> list[Subject]:
    """The FLAIR images of a BIDS dataset, each with its T1 and (``labels``) its WMH mask (rules: module doc).

    ``path`` is a BIDS root or ``<root>/derivatives/<pipeline>``. Masks without an image are logged.

    Raises:
        InputError: ``path`` is not a BIDS dataset, it holds no FLAIR image, a key repeats, a named
            pipeline has no mask, or (``labels``) several pipelines hold masks and none is named.
    """
    location = bids_location(path)
    if location is None:
        raise InputError(f"{path}: not a BIDS dataset (no {DESCRIPTION_NAME} and no sub-* folder)")
    root, pipeline = location
    masks = _masks_of(root, pipeline) if labels else {}
    sites = _sites(root)
    files = _anat_files(root)
    t1s = [(n, p) for n, p in files if n.suffix == T1_SUFFIX]
    subjects: dict[str, Subject] = {}
    for name, flair in ((n, p) for n, p in files if n.suffix == FLAIR_SUFFIX):
        if name.key in subjects:
            raise InputError(f"{root}: two FLAIR images for {name.key} ({subjects[name.key].flair.name}, {flair.name})")
        participant = name.key.split("_")[0]
        subjects[name.key] = Subject(name.key, sites.get(participant, "site0"), flair.resolve(),
                                     _t1_for(name, flair.parent, t1s), masks.get(name.key), participant,
                                     bids_root=root)
    if not subjects:
        raise InputError(f"{root}: a BIDS dataset, but no sub-*/[ses-*/]anat/*_{FLAIR_SUFFIX}.nii[.gz] image found")
    check_subject_ids(list(subjects), str(root), [s.flair.name for s in subjects.values()])
    orphans = sorted(set(masks) - set(subjects))
    if orphans:
        log.warning("%s: %d WMH masks match no FLAIR image and are ignored: %s", root, len(orphans), ", ".join(orphans[:5]))
    log.info("%s: %d BIDS FLAIR images, %d with a WMH mask", root, len(subjects), sum(s.label is not None for s in subjects.values()))
    return list(subjects.values())


# === Writing derivatives ===


def bids_key(subject: str) -> str:
    """The source entities of a subject's outputs: a BIDS key as it is, else ``sub-<its letters and digits>``.

    Raises:
        InputError: the id has no letter or digit.
    """
    name = parse_name(f"{subject}_x")
    if name is not None:
        return name.key
    label = re.sub(r"[^a-zA-Z0-9]", "", subject)
    if not label:
        raise InputError(f"subject id {subject!r} has no letter or digit to make a BIDS sub-<label> of")
    return f"sub-{label}"


def output_paths(out_dir: str | Path, subject: str, uncertainty: bool = True, bids: bool = False) -> dict[str, Path]:
    """The files ``wmhkeras segment`` writes for ``subject``: ``prob``, ``mask``, ``lesions`` (and ``uncertainty``).

    Flat: ``<out>/<subject>_wmh_prob.nii.gz`` ... BIDS (``bids``): ``<out>/sub-X[/ses-Y]/anat/<key>_space-orig_
    label-WMH_probseg.nii.gz``, ``..._mask.nii.gz``, ``..._lesions.csv`` and ``..._desc-uncertainty_probseg.nii.gz``.
    """
    out_dir = Path(out_dir)
    if bids:
        key = bids_key(subject)
        name = parse_name(f"{key}_x")
        folder = out_dir.joinpath(*(f"{e}-{name.get(e)}" for e in ("sub", "ses") if name.get(e)), "anat")
        base = folder / f"{key}_space-{SPACE}_label-{WMH_LABEL}"
        suffixes = ("_probseg.nii.gz", "_mask.nii.gz", LESIONS_SUFFIX, "_desc-uncertainty_probseg.nii.gz")
    else:
        base = out_dir / subject
        suffixes = (PROB_SUFFIX, MASK_SUFFIX, LESIONS_SUFFIX, UNCERTAINTY_SUFFIX)
    roles = ("prob", "mask", "lesions", "uncertainty")
    paths = {role: Path(f"{base}{suffix}") for role, suffix in zip(roles, suffixes, strict=True)}
    if not uncertainty:
        del paths["uncertainty"]
    return paths


@dataclass(frozen=True)
class DerivativeOutput:
    """One subject's written files (role -> path, as :func:`output_paths`), its FLAIR and its BIDS root if any."""

    files: Mapping[str, Path]
    flair: Path
    root: Optional[Path] = None


_DESCRIPTIONS = {
    "prob": "WMH probability per voxel, on the source image's grid",
    "mask": "WMH mask (1 = lesion): the probability thresholded, small lesions removed",
    "uncertainty": "Disagreement |p - p_flipped| of the left-right flip test-time augmentation",
}


def _links(out_dir: Path, outputs: Sequence[DerivativeOutput]) -> dict[str, Path]:
    """``raw``, ``raw2``, ... -> each distinct BIDS root of the sources, in order."""
    roots = list(dict.fromkeys(o.root for o in outputs if o.root is not None))
    return {("raw" if i == 0 else f"raw{i + 1}"): r for i, r in enumerate(roots)}


def _source_uri(output: DerivativeOutput, names: Mapping[Path, str]) -> str:
    if output.root is None:
        return output.flair.resolve().as_uri()
    return f"bids:{names[output.root]}:{output.flair.relative_to(output.root).as_posix()}"


def write_derivative(out_dir: str | Path, outputs: Sequence[DerivativeOutput], model: Mapping,
                     settings: Mapping) -> Path:
    """Write a JSON sidecar beside each NIfTI output, ``dataset_description.json`` and ``.bidsignore``.

    A sidecar holds ``Description``, ``Sources`` (a BIDS URI ``bids:raw:<path in the source dataset>``,
    or a ``file://`` URI for a non-BIDS input), ``Model`` (the model record), ``Version`` (wmhkeras),
    ``Threshold`` and every segment ``Settings``; the mask's also ``Type: Lesion``. A sidecar left from an
    earlier run whose image is gone (a subject that failed this time) is removed. Returns the description's path.
    """
    out_dir = Path(out_dir)
    links = _links(out_dir, outputs)
    names = {root: name for name, root in links.items()}
    for output in outputs:
        for role, path in output.files.items():
            if role not in _DESCRIPTIONS:
                continue
            sidecar = {"Description": _DESCRIPTIONS[role], "Sources": [_source_uri(output, names)],
                       **({"Type": "Lesion"} if role == "mask" else {}), "Model": dict(model), "Version": __version__,
                       "Threshold": settings.get("threshold"), "Settings": dict(settings)}
            atomic_write_json(Path(f"{strip_nifti(str(path))}.json"), sidecar)
    description = {
        "Name": "wmhkeras WMH segmentation", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
        "GeneratedBy": [{"Name": GENERATOR, "Version": __version__,
                         "Description": "White matter hyperintensity segmentation of FLAIR images"}],
    }
    if links:
        description["DatasetLinks"] = {name: Path(os.path.relpath(root, out_dir.resolve())).as_posix()
                                       for name, root in links.items()}
    for stale in out_dir.glob(f"sub-*/**/*_label-{WMH_LABEL}_*.json"):
        if not stale.with_suffix(".nii.gz").is_file():
            stale.unlink()
    atomic_write_text(out_dir / ".bidsignore", "".join(f"{p}\n" for p in BIDSIGNORE))
    return atomic_write_json(out_dir / DESCRIPTION_NAME, description)
