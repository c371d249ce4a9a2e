"""``summary.csv``: one row per subject of ``wmhkeras segment``, merged across runs and combined across shards.

Rows are plain ``{column: text}`` dicts, the form they have in the file, so a row read back from an earlier
run (``segment --skip-existing``) or from another shard (``wmhkeras summarize``) is written again unchanged.
The table is sorted by subject id (plain string order) whatever order the subjects were segmented in, so
that one run, a resumed run and n shards combined give the same table, row for row. The cohort QC columns
``qc_flag`` and ``volume_z`` (:func:`wmhkeras.inference.qc.flag_rows`) depend on every row: they are
computed again each time the table is written and never read back.

:func:`summarize` is the library behind ``wmhkeras summarize``. No TensorFlow.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from wmhkeras.errors import InputError
from wmhkeras.inference.qc import QC_HTML_NAME, flag_rows, montage_path, volume_range, write_qc_html
from wmhkeras.io.files import atomic_write_csv
from wmhkeras.io.naming import SUMMARY_NAME

log = logging.getLogger(__name__)

#: Columns before the optional brain volume, and after it.
HEAD_COLUMNS = ("subject", "lesion_volume_ml", "lesion_count")
BRAIN_COLUMN = "brain_volume_ml"
#: The person a scan belongs to (a manifest's ``participant`` column, BIDS ``sub-``): the QC range counts people.
PARTICIPANT_COLUMN = "participant"
TAIL_COLUMNS = ("qc_flag", "volume_z", "status", "error", "flair")
#: Columns a file must have to be read as a summary.
REQUIRED_COLUMNS = ("subject", "lesion_volume_ml", "lesion_count", "status", "flair")


def summary_columns(rows: Iterable[Mapping[str, str]]) -> list[str]:
    """The column order; ``participant`` after ``subject`` when any row has that key (inputs that name the
    person of each scan), ``brain_volume_ml`` when any row has that key (a run with brain masks)."""
    rows = list(rows)
    with_brain = any(BRAIN_COLUMN in row for row in rows)
    with_participant = any(PARTICIPANT_COLUMN in row for row in rows)
    return [HEAD_COLUMNS[0], *([PARTICIPANT_COLUMN] if with_participant else []), *HEAD_COLUMNS[1:],
            *([BRAIN_COLUMN] if with_brain else []), *TAIL_COLUMNS]


def merge_rows(old: Iterable[Mapping[str, str]], new: Iterable[Mapping[str, str]]) -> list[dict[str, str]]:
    """One row per subject, a row of ``new`` replacing the one of ``old`` with the same subject; sorted by subject."""
    by_subject = {row["subject"]: dict(row) for row in old}
    by_subject.update((row["subject"], dict(row)) for row in new)
    return [by_subject[s] for s in sorted(by_subject)]


def write_summary(path: str | Path, rows: Iterable[Mapping[str, str]]) -> Path:
    """Write the table atomically: sorted by subject, QC flags computed over all rows."""
    rows = flag_rows(merge_rows([], rows))
    return atomic_write_csv(path, rows, columns=summary_columns(rows))


def read_summary(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``summary.csv``.

    Raises:
        InputError: the file is missing or unreadable, lacks a column of :data:`REQUIRED_COLUMNS`, or names
            a subject twice.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [{k: v or "" for k, v in row.items() if k is not None} for row in reader]
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{path}: cannot read the summary ({err})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(f"{path}: not a wmhkeras segment summary (no column {', '.join(missing)})")
    seen: set[str] = set()
    for row in rows:
        if row["subject"] in seen:
            raise InputError(f"{path}: subject {row['subject']!r} has two rows")
        seen.add(row["subject"])
    return rows


def summary_file(path: str | Path) -> Path:
    """``path`` itself when it is a file, else ``path/summary.csv``."""
    path = Path(path)
    return path / SUMMARY_NAME if path.is_dir() else path


# === wmhkeras summarize ===


@dataclass
class SummarizeResult:
    """What :func:`summarize` wrote: the combined table, its rows, and the QC index (or None)."""

    summary_csv: Path
    rows: list[dict[str, str]]
    qc_html: Optional[Path]


def combine_summaries(inputs: Sequence[str | Path]) -> tuple[list[dict[str, str]], dict[str, Path]]:
    """The rows of several summaries as one table, and the output folder each subject's row came from.

    Args:
        inputs: ``wmhkeras segment`` output folders (their ``summary.csv``) or ``summary.csv`` files.

    Raises:
        InputError: no input, an input without a readable summary, or a subject in two of them (shards
            never share a subject: two rows would be two different results).
    """
    if not inputs:
        raise InputError("no summary given: name the output folders of the shards (or their summary.csv files)")
    rows: list[dict[str, str]] = []
    origin: dict[str, Path] = {}
    for raw in inputs:
        path = summary_file(raw)
        if not path.is_file():
            raise InputError(f"{raw}: no {SUMMARY_NAME} found (give a segment output folder or a summary CSV)")
        for row in read_summary(path):
            if row["subject"] in origin:
                raise InputError(f"subject {row['subject']!r} is in {origin[row['subject']] / SUMMARY_NAME} and "
                                 f"{path}; every subject must come from one shard")
            origin[row["subject"]] = path.parent
            rows.append(row)
    return merge_rows([], rows), origin


def summarize(inputs: Sequence[str | Path], out: str | Path, qc_html: str | Path | None = None) -> SummarizeResult:
    """Combine the ``summary.csv`` of n shards (``segment --shard i/n``) into the table one run would write.

    The rows are sorted by subject and the cohort QC columns computed over every subject, as one run over
    the whole cohort does. With ``qc_html``, the QC index of the whole cohort is written there too, its
    links pointing at each shard's ``qc/<subject>.png`` (relative to the index's folder).

    Returns:
        :class:`SummarizeResult`. Raises :class:`InputError` as :func:`combine_summaries` does; an ``out``
        that would overwrite one of the inputs is refused.
    """
    rows, origin = combine_summaries(inputs)
    out = Path(out)
    sources = {summary_file(p).resolve() for p in inputs}
    if out.resolve() in sources:
        raise InputError(f"{out}: is one of the summaries being combined; write the combined table elsewhere")
    write_summary(out, rows)
    html = None
    if qc_html is not None:
        montages = {s: montage_path(folder, s) for s, folder in origin.items()}
        html = write_qc_html(qc_html, flag_rows(rows), montages, volume_range(rows))
    n_files = len(inputs)
    log.info("combined %d subjects from %d summaries into %s", len(rows), n_files, out)
    return SummarizeResult(out, flag_rows(rows), html)


__all__ = ["QC_HTML_NAME", "SummarizeResult", "combine_summaries", "merge_rows", "read_summary", "summarize",
           "summary_columns", "write_summary"]
