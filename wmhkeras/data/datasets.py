"""Datasets: a manifest CSV, a folder in the MICCAI 2017 WMH challenge layout, or a BIDS dataset.

Manifest: a CSV with the header ``subject,site,flair,t1,label``; ``t1`` and ``label`` may be empty;
paths may be relative to the manifest's folder.

MICCAI 2017 layout (as downloaded): ``<root>/<site>/<subject>/pre/FLAIR.nii.gz``,
``.../pre/T1.nii.gz`` and ``<root>/<site>/<subject>/wmh.nii.gz`` (labels 0, 1, 2).

BIDS: a dataset root, or ``<root>/derivatives/<pipeline>`` to name the pipeline whose WMH masks are the
labels (rules: :mod:`wmhkeras.io.bids`); one subject per FLAIR image, its id the entities of the name
(``sub-01_ses-02_acq-3d``), its site from ``participants.tsv`` (a ``site`` column) or ``site0``.

No volume is opened here (only the CSV, or a BIDS dataset's JSON/TSV): :func:`check_subject` reads and
validates volumes.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from wmhkeras.errors import InputError
from wmhkeras.io.bids import bids_location, read_bids
from wmhkeras.io.files import atomic_write_text
from wmhkeras.io.header_check import check_inputs
from wmhkeras.io.subject_ids import check_subject_ids

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("subject", "site", "flair", "t1", "label")
MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class Subject:
    """One subject's files (absolute paths)."""

    subject: str
    site: str
    flair: Path
    t1: Optional[Path] = None
    label: Optional[Path] = None
    #: The person the image belongs to, when one person has several images (BIDS sessions, a manifest's
    #: optional ``participant`` column): splits keep a participant's images in one set.
    participant: Optional[str] = None

    @property
    def group(self) -> str:
        """The unit a split assigns: the participant, else the subject itself."""
        return self.participant or self.subject

    def modality(self, name: str) -> Path:
        path = {"flair": self.flair, "t1": self.t1}[name]
        if path is None:
            raise InputError(f"subject {self.subject}: no {name.upper()} file is listed, but the model needs it")
        return path


def read_manifest(path: str | Path) -> list[Subject]:
    """Read a manifest CSV; relative paths are taken from the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    text = path.read_text()
    reader = csv.DictReader(io.StringIO(text))
    header = tuple(h.strip() for h in (reader.fieldnames or ()))
    if header[: len(MANIFEST_COLUMNS)] != MANIFEST_COLUMNS:
        raise InputError(f"{path}: header must be {','.join(MANIFEST_COLUMNS)}, found {','.join(header) or 'nothing'}")
    base = path.parent

    def resolve(value: str | None) -> Optional[Path]:
        value = (value or "").strip()
        if not value:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    subjects = []
    for line, row in enumerate(reader, start=2):
        name = (row.get("subject") or "").strip()
        flair = resolve(row.get("flair"))
        if not name or flair is None:
            raise InputError(f"{path}, line {line}: subject and flair must not be empty")
        subjects.append(
            Subject(name, (row.get("site") or "").strip() or "site0", flair, resolve(row.get("t1")), resolve(row.get("label")),
                    (row.get("participant") or "").strip() or None)
        )
    check_subject_ids([s.subject for s in subjects], str(path))
    if not subjects:
        raise InputError(f"{path}: the manifest lists no subject")
    return subjects


def write_manifest(subjects: list[Subject], path: str | Path) -> Path:
    """Write a manifest with paths relative to its folder where possible (atomically); returns its path."""
    path = Path(path)
    base = path.parent.resolve()

    def rel(p: Optional[Path]) -> str:
        if p is None:
            return ""
        try:
            return Path(p).resolve().relative_to(base).as_posix()
        except ValueError:
            return str(p)

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    participants = any(s.participant for s in subjects)
    writer.writerow(MANIFEST_COLUMNS + (("participant",) if participants else ()))
    for s in subjects:
        writer.writerow([s.subject, s.site, rel(s.flair), rel(s.t1), rel(s.label)]
                        + ([s.participant or ""] if participants else []))
    return atomic_write_text(path, out.getvalue())


def discover_miccai(root: str | Path) -> list[Subject]:
    """Find subjects laid out as ``<site>/<subject>/pre/FLAIR.nii.gz`` anywhere under ``root``."""
    root = Path(root)
    subjects = []
    for flair in sorted(root.glob("**/pre/FLAIR.nii*")):
        subject_dir = flair.parent.parent
        t1 = next(iter(sorted(flair.parent.glob("T1.nii*"))), None)
        label = next(iter(sorted(subject_dir.glob("wmh.nii*"))), None)
        site = subject_dir.parent.name if subject_dir.parent != root.parent else "site0"
        subjects.append(Subject(subject_dir.name, site, flair.resolve(), t1 and t1.resolve(), label and label.resolve()))
    if any(sum(s.subject == o.subject for o in subjects) > 1 for s in subjects):
        subjects = [Subject(f"{s.site}_{s.subject}", s.site, s.flair, s.t1, s.label) for s in subjects]
    return subjects


def read_bids_dataset(path: str | Path) -> list[Subject]:
    """The subjects of a BIDS dataset (a root, or ``<root>/derivatives/<pipeline>``), with their labels.

    Each FLAIR image is one subject, with its participant (``sub-<id>``) recorded: splits keep a
    participant's sessions and acquisitions in one set.
    """
    entries = read_bids(path, labels=True)
    images: dict[str, int] = {}
    for e in entries:
        images[e.participant] = images.get(e.participant, 0) + 1
    repeated = sorted(p for p, n in images.items() if n > 1)
    if repeated:
        log.info("%s: %d participants with several FLAIR images (e.g. %s); splits keep each participant's images "
                 "in one set", path, len(repeated), ", ".join(repeated[:3]))
    return [Subject(e.key, e.site, e.flair, e.t1, e.label, e.participant) for e in entries]


def load_dataset(path: str | Path) -> list[Subject]:
    """Subjects from a manifest CSV, a folder holding ``manifest.csv``, a BIDS dataset or a MICCAI-layout folder."""
    if path is None:
        raise InputError("no dataset given: set data.path in the config or pass --data PATH")
    path = Path(path)
    if path.is_file():
        return read_manifest(path)
    if not path.is_dir():
        raise InputError(f"{path}: dataset not found (expected a manifest CSV or a folder)")
    if (path / MANIFEST_NAME).is_file():
        return read_manifest(path / MANIFEST_NAME)
    if bids_location(path) is not None:
        return read_bids_dataset(path)
    subjects = discover_miccai(path)
    if not subjects:
        raise InputError(
            f"{path}: no {MANIFEST_NAME} and no MICCAI 2017 layout (<site>/<subject>/pre/FLAIR.nii.gz) found, "
            "nor a BIDS dataset (sub-*/[ses-*/]anat/*_FLAIR.nii.gz)"
        )
    check_subject_ids([s.subject for s in subjects], str(path), [s.flair for s in subjects])
    log.info("discovered %d subjects in the MICCAI layout under %s", len(subjects), path)
    return subjects


def check_headers(subjects: list[Subject], modalities=("flair",), labels: bool = True) -> None:
    """The header pre-pass of a cohort (:func:`wmhkeras.io.header_check.check_inputs`), before any voxel is
    read: every file of every subject (``modalities``, and the label when ``labels`` and listed) parses,
    is 3D with a usable affine and holds its voxels, and each subject's files share the FLAIR's grid.

    Raises:
        InputError: one line naming the first file with a problem; a modality the subject lacks.
    """
    groups = {s.subject: [s.modality(m) for m in modalities] + [s.label if labels else None] for s in subjects}
    check_inputs(groups)


def check_subject(subject: Subject, modalities=("flair",), need_label: bool = False):
    """Read and validate one subject's volumes; returns ``(images, label)`` in canonical RAS.

    ``images`` is a list of :class:`~wmhkeras.io.Volume` in ``modalities`` order; ``label`` is a
    Volume or None. All volumes must lie on the FLAIR's grid.
    """
    from wmhkeras.io import check_same_grid, load_volume

    images = [load_volume(subject.modality(m)) for m in modalities]
    for other in images[1:]:
        check_same_grid(images[0], other)
    label = None
    if subject.label is not None:
        label = load_volume(subject.label, kind="label")
        check_same_grid(images[0], label)
    elif need_label:
        raise InputError(f"subject {subject.subject}: no label file is listed, but training and evaluation need one")
    return images, label
