"""Which prediction goes with which ground truth: finding the files and pairing them by subject id.

No volume is read here (:func:`wmhkeras.evaluation.evaluate.load_pair` reads and checks a pair). The
ground truth is a label file, a folder of label files, a manifest, a BIDS dataset (its WMH masks under
``derivatives/``), a MICCAI 2017 layout folder or a training run folder (its hold-out subjects); the
predictions are a ``wmhkeras segment`` output folder (flat or BIDS derivatives), a NIfTI file, a folder of
them or a CSV. BIDS subjects are keyed by the entities of their names (``sub-01_ses-02_acq-3d``) on both sides.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from wmhkeras.config import load_run_config
from wmhkeras.data.datasets import MANIFEST_NAME, load_dataset
from wmhkeras.data.splits import load_split
from wmhkeras.errors import InputError
from wmhkeras.io.bids import bids_location, find_masks, is_bids_root
from wmhkeras.io.naming import MASK_SUFFIX, is_nifti, is_output_map, strip_nifti, subject_id
from wmhkeras.io.run_folder import RunFolder
from wmhkeras.io.subject_ids import check_subject_ids

log = logging.getLogger(__name__)

#: Trailing name tags of ground-truth files, removed to get the subject id (``sub01_wmh.nii.gz``).
TRUTH_TAGS = ("wmh", "GOLD_STANDARD", "labels", "label", "truth", "seg", "mask")
#: Trailing name tags of prediction files (``sub01_wmh_mask.nii.gz`` is what ``wmhkeras segment`` writes).
PRED_TAGS = ("wmh_mask", "mask", "prediction", "pred", "seg")
#: Tags of image files found beside labels: FLAIR is shown in the QC montage, T1 is skipped.
IMAGE_TAGS = ("FLAIR", "T1")
#: Column of a prediction manifest CSV that holds the file (``subject,pred``).
PRED_COLUMNS = ("pred", "prediction", "mask")


@dataclass(frozen=True)
class TruthCase:
    """One ground-truth subject: its label file, its FLAIR (for QC) when known, and its site."""

    subject: str
    label: Path
    flair: Optional[Path] = None
    site: str = "site0"


# === Finding the files ===


def _has_tag(path: Path, tags) -> bool:
    stem = strip_nifti(path.name).lower()
    return any(stem.endswith(t.lower()) for t in tags)


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith("."))


def _flair_beside(label: Path) -> Optional[Path]:
    """The FLAIR next to a label: the label's name with its tag replaced by ``FLAIR`` (any NIfTI suffix)."""
    stem = strip_nifti(label.name)
    for tag in TRUTH_TAGS:
        if stem.lower().endswith(tag.lower()):
            base = stem[: len(stem) - len(tag)]
            for suffix in (".nii.gz", ".nii"):
                candidate = label.with_name(f"{base}FLAIR{suffix}")
                if candidate.is_file():
                    return candidate.resolve()
    return None


def _holdout(folder: RunFolder) -> list[TruthCase]:
    """The hold-out subjects of a training run folder (``split.json`` over the dataset of ``config.yaml``)."""
    subjects = load_dataset(load_run_config(folder.config).data.path)
    holdout = load_split(folder.split, subjects).holdout
    if not holdout:
        raise InputError(f"{folder.split}: the hold-out list is empty; the run kept no subject for evaluation")
    by_id = {s.subject: s for s in subjects}
    return _cases([by_id[i] for i in holdout], f"{folder.path} hold-out")


def _cases(subjects, source) -> list[TruthCase]:
    cases = [TruthCase(s.subject, s.label, s.flair, s.site) for s in subjects if s.label is not None]
    unlabelled = len(subjects) - len(cases)
    if unlabelled:
        log.warning("%s: %d subjects have no label file and are not evaluated", source, unlabelled)
    if not cases:
        raise InputError(f"{source}: no subject has a label file")
    return cases


def resolve_truth(path: str | Path) -> list[TruthCase]:
    """Ground-truth subjects from ``path`` (no volume is read here).

    ``path`` is one of: a label file (subject id: its name without a trailing ``wmh``/``GOLD_STANDARD``/
    ``label``/``seg``/``mask`` tag, else its folder's name; its FLAIR is the file beside it with that tag
    replaced by ``FLAIR``); a manifest CSV or a folder with ``manifest.csv`` (subjects with a ``label``);
    a training run folder (``config.yaml`` + ``split.json``: its hold-out subjects); a BIDS dataset root or
    ``<root>/derivatives/<pipeline>`` (:func:`wmhkeras.io.bids.read_bids`: the FLAIR images with a WMH
    mask); a folder of label files (FLAIR/T1 files beside them are images, not labels); or a MICCAI 2017
    layout folder. Subject ids must be plain names that do not collide
    (:func:`~wmhkeras.io.subject_ids.check_subject_ids`).
    """
    cases = _truth_cases(Path(path))
    check_subject_ids([c.subject for c in cases], f"{path} (ground truth)", [c.label for c in cases])
    return cases


def _truth_cases(path: Path) -> list[TruthCase]:
    """The subjects of :func:`resolve_truth`, their ids not checked yet."""
    if not path.exists():
        raise InputError(f"{path}: ground truth not found")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return _cases(load_dataset(path), path)
        if not is_nifti(path):
            raise InputError(f"{path}: not a NIfTI file (.nii, .nii.gz), a folder or a manifest CSV")
        return [TruthCase(subject_id(path, TRUTH_TAGS), path.resolve(), _flair_beside(path))]
    run = RunFolder(path)
    if run.split.is_file() and run.config.is_file():
        return _holdout(run)
    if (path / MANIFEST_NAME).is_file():
        return _cases(load_dataset(path), path / MANIFEST_NAME)
    if bids_location(path) is not None:
        return _cases(load_dataset(path), path)
    labels = [p for p in _nifti_files(path) if not _has_tag(p, IMAGE_TAGS)]
    if labels:
        return [TruthCase(subject_id(p, TRUTH_TAGS), p.resolve(), _flair_beside(p)) for p in labels]
    return _cases(load_dataset(path), path)


def resolve_predictions(path: str | Path) -> dict[str, Path]:
    """Predictions by subject id from ``path`` (no volume is read here).

    ``path`` is one of: a NIfTI file; a ``wmhkeras segment`` output folder (its ``*_wmh_mask.nii.gz``
    files, subject = the name before the suffix); a BIDS derivative folder (its
    ``sub-*/[ses-*/]anat/*_label-WMH_mask.nii[.gz]`` files, subject = the name's source entities, e.g.
    ``sub-01_ses-02`` of ``sub-01_ses-02_space-orig_label-WMH_mask.nii.gz``); another folder (every NIfTI file directly inside except
    ``*_wmh_prob``, ``*_wmh_uncertainty`` and FLAIR/T1 files, the id without a trailing ``mask``/``pred``/``seg`` tag); or a CSV
    with the columns ``subject`` and ``pred`` (paths relative to the CSV).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: predictions not found")
    if path.is_file() and path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            column = next((c for c in PRED_COLUMNS if c in (reader.fieldnames or ())), None)
            if "subject" not in (reader.fieldnames or ()) or column is None:
                raise InputError(f"{path}: a prediction CSV needs the columns subject and pred, found {reader.fieldnames}")
            listed = [((row.get("subject") or "").strip(), (path.parent / (row.get(column) or "").strip()).resolve())
                      for row in reader]
            check_subject_ids([s for s, _ in listed], str(path), [p for _, p in listed])
            preds = dict(listed)
    elif path.is_file():
        if not is_nifti(path):
            raise InputError(f"{path}: not a NIfTI file (.nii, .nii.gz), a folder or a CSV")
        preds = {subject_id(path, PRED_TAGS): path.resolve()}
    else:
        files = _nifti_files(path)
        masks = [p for p in files if p.name.endswith(MASK_SUFFIX)]
        if masks:
            preds = {p.name[: -len(MASK_SUFFIX)]: p.resolve() for p in masks}
        elif is_bids_root(path):
            preds = find_masks(path)
        else:
            files = [p for p in files if not is_output_map(p) and not _has_tag(p, IMAGE_TAGS)]
            preds = {subject_id(p, PRED_TAGS): p.resolve() for p in files}
    if not preds:
        raise InputError(f"{path}: no prediction found (expected <subject>{MASK_SUFFIX} files, or BIDS "
                         "sub-*/[ses-*/]anat/*_label-WMH_mask.nii.gz files)")
    check_subject_ids(list(preds), f"{path} (predictions)", list(preds.values()))
    return preds


def match(cases: list[TruthCase], preds: Mapping[str, Path]) -> list[tuple[TruthCase, Optional[Path]]]:
    """Pair each truth subject with its prediction by subject id (None when there is none).

    One truth file and one prediction file are paired whatever their names. Predictions without a
    truth subject are logged and ignored.

    Raises:
        InputError: no prediction matches any truth subject.
    """
    if len(cases) == 1 and len(preds) == 1:
        return [(cases[0], next(iter(preds.values())))]
    pairs = [(c, preds.get(c.subject)) for c in cases]
    extra = sorted(set(preds) - {c.subject for c in cases})
    if extra:
        log.warning("%d predictions have no ground truth and are ignored: %s", len(extra), ", ".join(extra[:10]))
    if all(p is None for _, p in pairs):
        raise InputError(
            f"no prediction matches a ground-truth subject; truth ids: {', '.join(c.subject for c in cases[:5])}; "
            f"prediction ids: {', '.join(list(preds)[:5])}"
        )
    return pairs
