"""QC of a segmentation without ground truth: cohort volume flags, one montage per subject, one ``qc.html``.

**Flags** (columns ``qc_flag`` and ``volume_z`` of ``summary.csv``, :func:`flag_rows`), over the subjects
whose status is ``ok``:

- ``empty_mask``: the mask has no lesion voxel;
- ``low_volume`` / ``high_volume``: the lesion volume lies outside the cohort's range. WMH volumes are
  right-skewed, so the range is taken on ``ln(volume)``: ``median +- 3 x SD``, with the SD estimated as
  ``1.4826 x MAD`` (the MAD scaled to a standard deviation for normal data, the usual robust z-score), and
  ``volume_z`` is a scan's robust z-score ``(ln v - median) / SD``. The cohort is counted in independent
  people: each participant (the ``participant`` column, from a manifest's column or BIDS ``sub-``; else
  each scan is its own) gives one value, the median of its scans' ``ln(volume)``, so repeated scans of one
  person weigh as one. The range needs :data:`MIN_COHORT` participants with non-empty masks (with fewer,
  nothing is flagged, ``volume_z`` is empty and ``qc.html`` says there are too few independent scans), and
  the SD is never taken below :data:`MIN_LOG_SD`: a handful of alike volumes (repeats of one person, a small
  homogeneous group) cannot make the range so narrow that a scan that is simply lighter reads as an outlier.

**Index** (:func:`write_qc_html`): every subject, outliers first (failed, then empty masks, then by
``|volume_z|`` from the largest), with its montage (relative links), lesion count and volume.

**Montage** (:func:`write_montage`): :func:`wmhkeras.evaluation.figures.qc_montage` with the prediction
only, on the subject's FLAIR. No TensorFlow.
"""

from __future__ import annotations

import html
import math
import os
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from wmhkeras.evaluation.figures import qc_montage
from wmhkeras.io.files import atomic_write_text

#: Folder of the montages inside a segment output folder, and the index beside it.
QC_DIR = "qc"
QC_HTML_NAME = "qc.html"
#: Robust z-score beyond which a lesion volume is outside the cohort's range.
OUTLIER_Z = 3.0
#: MAD -> standard deviation for normally distributed data.
MAD_TO_SD = 1.4826
#: Fewest participants with non-empty masks from which a cohort range is computed.
MIN_COHORT = 5
#: Smallest SD of ln(volume) the range uses: a volume within exp(3 x 0.5) = 4.5 times the median is never
#: flagged, however alike the cohort's volumes are.
MIN_LOG_SD = 0.5
#: Below this many participants ``qc.html`` calls the range rough.
ROUGH_BELOW = 20
EMPTY, LOW, HIGH = "empty_mask", "low_volume", "high_volume"


@dataclass(frozen=True)
class VolumeRange:
    """The cohort's lesion-volume range on a log scale: ``center +- OUTLIER_Z * scale`` of ``ln(mL)``, from
    ``n`` participants (``scans`` non-empty masks); ``floored``: the spread was below :data:`MIN_LOG_SD`."""

    n: int
    center: float
    scale: float
    scans: int = 0
    floored: bool = False

    def z(self, volume_ml: float) -> float:
        """Robust z-score of a (positive) volume."""
        return (math.log(volume_ml) - self.center) / self.scale

    @property
    def median_ml(self) -> float:
        return math.exp(self.center)

    @property
    def low_ml(self) -> float:
        return math.exp(self.center - OUTLIER_Z * self.scale)

    @property
    def high_ml(self) -> float:
        return math.exp(self.center + OUTLIER_Z * self.scale)


def montage_path(out_dir: str | Path, subject: str) -> Path:
    """``<out_dir>/qc/<subject>.png``."""
    return Path(out_dir) / QC_DIR / f"{subject}.png"


def _volume(row: Mapping[str, str]) -> Optional[float]:
    """The lesion volume (mL) of an ``ok`` row; None for a failed or malformed row."""
    if row.get("status") != "ok":
        return None
    try:
        value = float(row.get("lesion_volume_ml") or "nan")
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _by_participant(rows: Iterable[Mapping[str, str]]) -> dict[str, list[float]]:
    """``ln(volume)`` of the non-empty ``ok`` rows, by participant (a row without one is its own)."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        volume = _volume(row)
        if volume is not None and volume > 0:
            groups.setdefault(row.get("participant") or f"\0{row['subject']}", []).append(math.log(volume))
    return groups


def volume_range(rows: Iterable[Mapping[str, str]]) -> Optional[VolumeRange]:
    """The range of the non-empty ``ok`` rows' volumes (rules: the module docstring); None with fewer than
    :data:`MIN_COHORT` participants."""
    groups = _by_participant(rows)
    if len(groups) < MIN_COHORT:
        return None
    values = np.array([np.median(v) for v in groups.values()])
    center = float(np.median(values))
    spread = MAD_TO_SD * float(np.median(np.abs(values - center)))
    return VolumeRange(len(groups), center, max(spread, MIN_LOG_SD), sum(map(len, groups.values())),
                       spread < MIN_LOG_SD)


def flag_rows(rows: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """Copies of ``rows`` with ``qc_flag`` and ``volume_z`` set from the cohort (rules: module docstring)."""
    cohort = volume_range(rows)
    flagged = []
    for row in rows:
        volume, flag, z = _volume(row), "", ""
        if volume == 0:
            flag = EMPTY
        elif volume is not None and cohort is not None:
            score = cohort.z(volume)
            z = f"{round(score, 2) + 0.0:.2f}"
            flag = HIGH if score > OUTLIER_Z else LOW if score < -OUTLIER_Z else ""
        flagged.append({**row, "qc_flag": flag, "volume_z": z})
    return flagged


def qc_order(rows: Iterable[Mapping[str, str]]) -> list[Mapping[str, str]]:
    """Outliers first: failed rows, empty masks, then by ``|volume_z|`` from the largest (none last); then by subject."""

    def key(row: Mapping[str, str]):
        failed = row.get("status") != "ok"
        z = abs(float(row["volume_z"])) if row.get("volume_z") else -1.0
        return (not failed, row.get("qc_flag") != EMPTY, -z, row["subject"])

    return sorted(rows, key=key)


def write_montage(flair: np.ndarray, mask: np.ndarray, path: str | Path, title: str) -> Path:
    """The prediction-only QC montage of one subject (canonical ``[X, Y, Z]`` arrays), written atomically."""
    return qc_montage(flair, None, mask, path, title=title)


# === qc.html ===

_STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
          "tr.flag td{background:#fff3f0}img{width:420px}")


def _link(target: Path, folder: Path) -> str:
    return urllib.parse.quote(Path(os.path.relpath(target, folder)).as_posix())


def _cohort_line(rows: Sequence[Mapping[str, str]], cohort: Optional[VolumeRange]) -> str:
    counts = {f: sum(r.get("qc_flag") == f for r in rows) for f in (EMPTY, LOW, HIGH)}
    failed = sum(r.get("status") != "ok" for r in rows)
    line = (f"{len(rows)} subjects: {failed} failed, {counts[EMPTY]} empty masks, "
            f"{counts[LOW] + counts[HIGH]} volumes outside the cohort's range")
    if cohort is None:
        groups = _by_participant(rows)
        scans = sum(map(len, groups.values()))
        return line + (f". No range: too few independent scans, {scans} non-empty mask{'s' if scans != 1 else ''} "
                       f"of {len(groups)} participant{'s' if len(groups) != 1 else ''}; a range needs {MIN_COHORT} "
                       "participants (repeated scans of one person count once).")
    floor = f", the spread taken as its floor, SD {MIN_LOG_SD:g} of ln volume" if cohort.floored else ""
    return line + (f" ({cohort.low_ml:.3g} to {cohort.high_ml:.3g} mL: median {cohort.median_ml:.3g} mL, "
                   f"robust z within +-{OUTLIER_Z:g} on log volume, from {cohort.scans} non-empty masks of "
                   f"{cohort.n} participants{floor})." + (
                       f" From {cohort.n} participants the range is rough: it orders the review, it does not judge."
                       if cohort.n < ROUGH_BELOW else ""))


def _table_row(rank: int, row: Mapping[str, str], montage: Optional[Path], folder: Path) -> str:
    e = html.escape
    flag = row.get("qc_flag") or ("failed: " + row.get("error", "") if row.get("status") != "ok" else "")
    image = (f'<a href="{_link(montage, folder)}"><img src="{_link(montage, folder)}" loading="lazy" '
             f'alt="{e(row["subject"])}"></a>') if montage is not None and montage.is_file() else "no montage"
    cells = [str(rank), e(row["subject"]), e(flag), e(row.get("lesion_count", "")),
             e(row.get("lesion_volume_ml", "")), e(row.get("volume_z", "")), image]
    css = ' class="flag"' if flag else ""
    return f"<tr{css}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def write_qc_html(path: str | Path, rows: Sequence[Mapping[str, str]], montages: Mapping[str, Path],
                  cohort: Optional[VolumeRange]) -> Path:
    """``qc.html``: one table row per subject in :func:`qc_order`, montages linked relative to ``path``'s folder.

    Args:
        rows: summary rows with their flags (:func:`flag_rows`).
        montages: ``{subject: montage PNG}``; a subject without an existing file shows "no montage".
        cohort: the range the flags came from (:func:`volume_range`), described above the table.
    """
    path = Path(path)
    folder = path.parent.resolve()
    head = ["#", "subject", "flag", "lesions", "volume (mL)", "robust z", "montage (prediction in red)"]
    lines = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>WMH segmentation QC</title><style>{_STYLE}</style></head><body>",
             "<h1>WMH segmentation QC</h1>", f"<p>{html.escape(_cohort_line(rows, cohort), quote=False)}</p>",
             "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for rank, row in enumerate(qc_order(rows), 1):
        montage = montages.get(row["subject"])
        lines.append(_table_row(rank, row, None if montage is None else Path(montage).resolve(), folder))
    lines += ["</table>", "</body></html>", ""]
    return atomic_write_text(path, "\n".join(lines))
