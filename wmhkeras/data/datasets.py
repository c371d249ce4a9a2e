"""Datasets: a manifest CSV, a folder in the MICCAI 2017 WMH challenge layout, or a BIDS dataset, read into
:class:`~wmhkeras.io.subject.Subject` records by one reader each, all reached through :func:`load_dataset`.

Manifest: a CSV with the columns ``subject,site,flair,t1,label`` (``t1`` and ``label`` may be empty), and
optionally ``participant`` and ``brain_mask``; paths may be relative to the manifest's folder. Read as
spreadsheet programs write it (:func:`read_manifest_table`): UTF-8 with or without a byte-order mark, or
UTF-16 with one; comma, semicolon or tab between fields; CRLF, LF or CR line ends; quoted fields; columns
in any order and header names in any case; empty rows and empty trailing columns skipped. Refused, naming
the line: another encoding, a row with a value beyond the header's columns or under an unnamed one, a
Windows path, two columns of one name (docs/data_pipeline.md, "Manifests").

MICCAI 2017 layout (as downloaded): ``<root>/<site>/<subject>/pre/FLAIR.nii.gz``,
``.../pre/T1.nii.gz`` and ``<root>/<site>/<subject>/wmh.nii.gz`` (labels 0, 1, 2).

BIDS: a dataset root, or ``<root>/derivatives/<pipeline>`` to name the pipeline whose WMH masks are the
labels (rules: :mod:`wmhkeras.io.bids`); one subject per FLAIR image, its id the entities of the name
(``sub-01_ses-02_acq-3d``), its site from ``participants.tsv`` (a ``site`` column) or ``site0``.

Images to segment (``load_dataset(path, labels=False)``): also a FLAIR file on its own, or the NIfTI files
directly in a folder (:func:`read_images`), which come before the MICCAI layout.

No volume is opened here (only the CSV, or a BIDS dataset's JSON/TSV): :func:`check_subject` reads and
validates volumes.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from wmhkeras.errors import InputError
from wmhkeras.io.bids import bids_location, read_bids
from wmhkeras.io.files import atomic_write_text
from wmhkeras.io.header_check import check_inputs
from wmhkeras.io.naming import OUTPUT_SUFFIXES, is_nifti, is_output_map, strip_nifti, subject_id, swap_tag
from wmhkeras.io.subject import Subject
from wmhkeras.io.subject_ids import check_subject_ids

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("subject", "site", "flair", "t1", "label")
MANIFEST_NAME = "manifest.csv"


#: Field separators a manifest may use (spreadsheet programs write ``;`` where the decimal mark is a comma).
DELIMITERS = (",", ";", "\t")
_SEPARATOR_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}
#: A Windows path: a drive letter (``C:``) or a backslash.
_WINDOWS_PATH = re.compile(r"^[A-Za-z]:|\\")


@dataclass(frozen=True)
class ManifestTable:
    """A manifest read as a table: ``columns`` (lower-case header names, in file order, unnamed ones
    dropped) and ``rows``, each ``(line number, {column: stripped value})``."""

    path: Path
    columns: tuple[str, ...]
    rows: tuple[tuple[int, dict[str, str]], ...]


def _manifest_text(path: Path) -> tuple[str, str]:
    """The text of a manifest and its encoding's name: UTF-8 (a byte-order mark dropped) or UTF-16 with a mark."""
    data = path.read_bytes()
    if data.startswith(b"PK\x03\x04"):
        raise InputError(f"{path}: a spreadsheet workbook (.xlsx/.ods), not CSV text; save it as 'CSV UTF-8'")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16"), "UTF-16"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the manifest as "
                         "'CSV UTF-8' (Excel) or with the UTF-8 character set (LibreOffice, Numbers)") from None
    if "\x00" in text:
        raise InputError(f"{path}: holds NUL characters; not a CSV text file")
    return text, "UTF-8 with a byte-order mark" if data.startswith(codecs.BOM_UTF8) else "UTF-8"


def _header(path: Path, text: str) -> tuple[str, list[str]]:
    """The delimiter whose first row names every :data:`MANIFEST_COLUMNS`, and that row's names (lower case)."""
    first = next((line for line in text.splitlines() if line.strip().strip(",;\t")), "")
    for delimiter in DELIMITERS:
        names = [h.strip().lower() for h in next(csv.reader([first], delimiter=delimiter), [])]
        if set(MANIFEST_COLUMNS) <= set(names):
            return delimiter, names
    found = ",".join(next(csv.reader([first]), [])) or "nothing"
    raise InputError(f"{path}: the header must name the columns {','.join(MANIFEST_COLUMNS)} (any order, separated by "
                     f"commas, semicolons or tabs), found {found}")


def read_manifest_table(path: str | Path) -> ManifestTable:
    """Read a manifest as spreadsheet programs save it (rules: the module docstring).

    Raises:
        InputError: a missing file, another encoding than UTF-8/UTF-16, a header without the five columns or
            with a name twice, or a row with a value beyond the header or under an unnamed column (a
            separator inside an unquoted value shifts the fields), each naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    text, encoding = _manifest_text(path)
    delimiter, names = _header(path, text)
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    if repeated:
        raise InputError(f"{path}: the header names the column {repeated[0]!r} twice")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows, header_seen = [], False
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue  # empty rows, also ",,,,"
        if not header_seen:
            header_seen = True
            continue
        for i, cell in enumerate(cells):
            if cell.strip() and (i >= len(names) or not names[i]):
                raise InputError(f"{path}, line {line}: the value {cell.strip()!r} in field {i + 1} is beyond the "
                                 f"header's named columns ({len([n for n in names if n])}); a separator inside an "
                                 "unquoted value? Quote it")
        rows.append((line, {n: (cells[i].strip() if i < len(cells) else "") for i, n in enumerate(names) if n}))
    if (delimiter, encoding) != (",", "UTF-8") or "\r" in text:
        log.info("%s: read as %s-separated %s%s", path, _SEPARATOR_NAMES[delimiter], encoding,
                 " with CRLF line ends" if "\r\n" in text else " with CR line ends" if "\r" in text else "")
    return ManifestTable(path, tuple(n for n in names if n), tuple(rows))


def read_manifest(path: str | Path) -> list[Subject]:
    """Read a manifest CSV (:func:`read_manifest_table`); relative paths are taken from the manifest's folder.

    Optional columns beside :data:`MANIFEST_COLUMNS`: ``participant`` and ``brain_mask`` (``segment``).
    """
    table = read_manifest_table(path)
    path, base = table.path, table.path.parent

    def resolve(value: str, line: int, column: str) -> Optional[Path]:
        if not value:
            return None
        if os.sep == "/" and _WINDOWS_PATH.search(value):
            raise InputError(f"{path}, line {line}: {column} {value!r} is a Windows path; write paths as this "
                             "machine sees them, with / (relative paths are read from the manifest's folder)")
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    subjects = []
    for line, row in table.rows:
        name, flair = row["subject"], resolve(row["flair"], line, "flair")
        if not name or flair is None:
            raise InputError(f"{path}, line {line}: subject and flair must not be empty")
        t1 = resolve(row["t1"], line, "t1")
        subjects.append(Subject(name, row["site"] or "site0", flair, t1, resolve(row["label"], line, "label"),
                                row.get("participant") or None, t1_listed=t1 is not None,
                                brain_mask=resolve(row.get("brain_mask", ""), line, "brain_mask")))
    check_subject_ids([s.subject for s in subjects], str(path))
    if not subjects:
        raise InputError(f"{path}: the manifest lists no subject")
    return subjects


def write_manifest(subjects: list[Subject], path: str | Path) -> Path:
    """Write a manifest with paths relative to its folder where possible (atomically); returns its path.

    The optional ``participant`` and ``brain_mask`` columns are written when a subject has one.
    """
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
    masks = any(s.brain_mask for s in subjects)
    writer.writerow(MANIFEST_COLUMNS + (("participant",) if participants else ()) + (("brain_mask",) if masks else ()))
    for s in subjects:
        writer.writerow([s.subject, s.site, rel(s.flair), rel(s.t1), rel(s.label)]
                        + ([s.participant or ""] if participants else []) + ([rel(s.brain_mask)] if masks else []))
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
        subjects = [replace(s, subject=f"{s.site}_{s.subject}") for s in subjects]
    return subjects


def image_subject(path: str | Path) -> Subject:
    """A FLAIR file on its own: its subject id is :func:`~wmhkeras.io.naming.subject_id` of it."""
    return Subject(subject_id(path), "site0", Path(path).resolve())


def read_images(folder: str | Path) -> list[Subject]:
    """The NIfTI files directly in ``folder`` as FLAIR images (hidden files and ``segment``'s outputs skipped):
    if some names end with ``FLAIR``, only those, each with the file named with ``T1`` instead as its T1
    when there is one; else every file."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith("."))
    files = [p for p in files if not is_output_map(p, OUTPUT_SUFFIXES)]
    flairs = [p for p in files if re.search(r"flair$", strip_nifti(p.name), flags=re.IGNORECASE)]
    if not flairs:
        return [image_subject(p) for p in files]
    subjects = []
    for p in flairs:
        t1 = swap_tag(p, "FLAIR", "T1")
        subjects.append(replace(image_subject(p), t1=t1.resolve() if t1 is not None and t1.is_file() else None))
    return subjects


def read_folder(root: str | Path, images: bool = False) -> list[Subject]:
    """The subjects of a folder that holds no manifest and is no BIDS dataset: with ``images``, the NIfTI
    files directly inside it (:func:`read_images`) when there are some; else the MICCAI 2017 layout
    (:func:`discover_miccai`).

    Raises:
        InputError: no subject found; an id is not a plain name or ids collide.
    """
    root = Path(root)
    subjects = read_images(root) if images else []
    if not subjects:
        subjects = discover_miccai(root)
        if not subjects:
            raise InputError(
                f"{root}: no {MANIFEST_NAME} and no MICCAI 2017 layout (<site>/<subject>/pre/FLAIR.nii.gz) found, "
                "nor a BIDS dataset (sub-*/[ses-*/]anat/*_FLAIR.nii.gz)"
            )
        log.info("discovered %d subjects in the MICCAI layout under %s", len(subjects), root)
    check_subject_ids([s.subject for s in subjects], str(root), [s.flair for s in subjects])
    return subjects


def _log_participants(path: Path, subjects: list[Subject]) -> None:
    """Log the participants with several images (BIDS sessions), which splits keep in one set."""
    images: dict[str, int] = {}
    for s in subjects:
        images[s.group] = images.get(s.group, 0) + 1
    repeated = sorted(p for p, n in images.items() if n > 1)
    if repeated:
        log.info("%s: %d participants with several FLAIR images (e.g. %s); splits keep each participant's images "
                 "in one set", path, len(repeated), ", ".join(repeated[:3]))


def load_dataset(path: str | Path, labels: bool = True) -> list[Subject]:
    """The subjects of a dataset, each source read by its one reader: a manifest CSV or a folder holding
    ``manifest.csv`` (:func:`read_manifest`), a BIDS dataset (:func:`~wmhkeras.io.bids.read_bids`, each
    participant's images logged), or another folder (:func:`read_folder`).

    With ``labels`` False, the images to segment: a BIDS dataset's masks are not looked for, and a FLAIR
    file on its own (:func:`image_subject`) or the NIfTI files directly in a folder are a dataset too.

    Raises:
        InputError: no path, a path that is not a dataset, or any reader's refusal.
    """
    if path is None:
        raise InputError("no dataset given: set data.path in the config or pass --data PATH")
    path = Path(path)
    if path.is_file():
        if labels or path.suffix.lower() == ".csv":
            return read_manifest(path)
        if not is_nifti(path):
            raise InputError(f"{path}: not a NIfTI file (.nii, .nii.gz), a folder, a BIDS dataset or a manifest CSV")
        subjects = [image_subject(path)]
        check_subject_ids([s.subject for s in subjects], str(path), [path])
        return subjects
    if not path.is_dir():
        raise InputError(f"{path}: dataset not found (expected a manifest CSV or a folder)")
    if (path / MANIFEST_NAME).is_file():
        return read_manifest(path / MANIFEST_NAME)
    if bids_location(path) is not None:
        subjects = read_bids(path, labels=labels)
        if labels:
            _log_participants(path, subjects)
        return subjects
    return read_folder(path, images=not labels)


def unused_t1(subjects: list[str], why: str) -> None:
    """Log that these subjects' named T1 images are checked but not used (``why``: e.g. the model's modalities)."""
    if subjects:
        shown = ", ".join(subjects[:3]) + (f" and {len(subjects) - 3} more" if len(subjects) > 3 else "")
        log.warning("a T1 image is listed for %d subject(s) (%s) but %s: it is not used, and is checked like every "
                    "input (it must exist, be readable and lie on the FLAIR's grid)", len(subjects), shown, why)


def check_headers(subjects: list[Subject], modalities=("flair",), labels: bool = True) -> None:
    """The header pre-pass of a cohort (:func:`wmhkeras.io.header_check.check_inputs`), before any voxel is
    read: every file of every subject (``modalities``, a T1 a manifest lists even when unused, and the label
    when ``labels`` and listed) parses, is 3D with a usable affine and holds its voxels, and each subject's
    files share the FLAIR's grid.

    Raises:
        InputError: one line naming the first file with a problem; a modality the subject lacks.
    """
    extra = [s for s in subjects if s.t1_listed and "t1" not in modalities]
    unused_t1([s.subject for s in extra], f"the modalities are {list(modalities)}")
    groups = {s.subject: [s.modality(m) for m in modalities] + [s.t1 if s in extra else None]
              + [s.label if labels else None] for s in subjects}
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
