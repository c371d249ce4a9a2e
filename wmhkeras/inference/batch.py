"""Long batch runs of ``wmhkeras segment``: shards for array jobs, and resuming (``--skip-existing``).

**Shards** (:func:`parse_shard`, :func:`select_shard`): ``i/n``, 1-based (``1/4`` ... ``4/4``), takes every
n-th subject of the subject list sorted by id, starting with the i-th; the n shards cover every subject once.

**Complete subject** (:func:`is_complete`): a subject is skipped by ``--skip-existing`` when

1. ``summary.csv`` of the output folder has an ``ok`` row for it, made from the same FLAIR file, and
2. every output file the current options ask for exists under its final name and is readable (NIfTI: the
   header parses; lesion table: a header line; montage: the PNG signature).

Outputs are written atomically (temporary name, then rename) and the subject's row is written after its
files, so an interrupted subject has either no row or missing files, and is segmented again; a finished
file is never truncated, which is why reading its header is check enough. A subject whose row is
``failed`` is always tried again.

The folder must also have been made with the same model and settings
(:func:`wmhkeras.inference.record.check_previous_record`).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional, TypeVar

import nibabel as nib

from wmhkeras.errors import ConfigError

T = TypeVar("T")

_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def parse_shard(value: str | tuple[int, int] | None) -> Optional[tuple[int, int]]:
    """``"2/4"`` or ``(2, 4)`` -> ``(2, 4)``; None stays None.

    Raises:
        ConfigError: not ``i/n`` with integers ``1 <= i <= n``.
    """
    if value is None:
        return None
    match = _SHARD.fullmatch(value) if isinstance(value, str) else None
    parts = (int(match.group(1)), int(match.group(2))) if match else value if isinstance(value, tuple) else None
    if (parts is None or len(parts) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) for p in parts)
            or not 1 <= parts[0] <= parts[1]):
        raise ConfigError(f"shard (--shard): {value!r} is not allowed; use i/n with 1 <= i <= n (1-based: "
                          "--shard 1/4 ... --shard 4/4)")
    return parts


def select_shard(items: Sequence[T], shard: Optional[tuple[int, int]], key=lambda item: item.subject) -> list[T]:
    """Every n-th item of ``items`` sorted by ``key``, from the i-th (all items, in their order, without a shard)."""
    if shard is None:
        return list(items)
    i, n = shard
    return sorted(items, key=key)[i - 1::n]


def _readable(path: Path) -> bool:
    """Whether a finished output file can be read: a NIfTI header, a CSV header, a PNG signature."""
    try:
        name = path.name.lower()
        if name.endswith((".nii", ".nii.gz")):
            nib.load(str(path)).header.get_data_shape()
        elif name.endswith(".csv"):
            with open(path, newline="", encoding="utf-8") as f:
                return next(csv.reader(f), None) is not None
        elif name.endswith(".png"):
            with open(path, "rb") as f:
                return f.read(8) == _PNG_SIGNATURE
        return path.is_file()
    except Exception:  # any reading error means: not complete, segment it again
        return False


def is_complete(row: Optional[Mapping[str, str]], flair: Path, files: Mapping[str, Path]) -> bool:
    """Whether a subject's earlier result can be kept (rules: module docstring).

    Args:
        row: its row in the folder's ``summary.csv`` (None when it has none).
        flair: the FLAIR file it is segmented from now.
        files: the output files the current options ask for.
    """
    if row is None or row.get("status") != "ok" or row.get("flair") != str(flair):
        return False
    return all(path.is_file() and _readable(path) for path in files.values())
