"""The verification report of an export (``export_report.json``) and its printed table. No TensorFlow here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

#: File name of the report inside the export folder.
REPORT_NAME = "export_report.json"


@dataclass
class ArtifactCheck:
    """How one artifact compares with the Keras model (``reference``) on the verification slices.

    ``latency_ms``: median wall time of one slice (batch of 1) on this machine, ``segment_volume``: of the
    whole volume divided by its slice count. ``size_bytes`` is ``None`` for a signature of an artifact.
    """

    name: str
    path: str
    size_bytes: int | None
    latency_ms: float
    max_abs_diff: float
    mask_dice: float
    tolerance: dict[str, float] = field(default_factory=dict)
    passed: bool = True


@dataclass
class ExportReport:
    """What :func:`wmhkeras.export.runner.export` wrote and how every artifact verified.

    ``passed``: all within tolerance. ``skipped``: variant -> why it was left out. ``verification``: where
    the verification slices came from. ``calibration``: where the int8 calibration slices came from, or
    the reason int8 was skipped (a string), or ``{}`` when int8 was not asked for.
    """

    out_dir: Path
    source: str
    created: str
    artifacts: list[ArtifactCheck]
    skipped: dict[str, str]
    verification: dict
    calibration: dict | str

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.artifacts)

    @property
    def failures(self) -> list[str]:
        return [a.name for a in self.artifacts if not a.passed]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["out_dir"] = str(self.out_dir)
        out["passed"] = self.passed
        return out


_LIMIT_TEXT = {"max_abs_diff": "diff <=", "mask_dice": "Dice >="}


def format_table(report: ExportReport) -> str:
    """The report as a plain-text table (the CLI prints it)."""
    head = f"{'artifact':<16} {'size':>10} {'ms/slice':>9} {'max|diff|':>10} {'mask Dice':>9}  {'tolerance':<16} ok"
    lines = [head, "-" * len(head)]
    for a in report.artifacts:
        size = "-" if a.size_bytes is None else _human_size(a.size_bytes)
        tol = ", ".join(f"{_LIMIT_TEXT[k]} {v:g}" for k, v in a.tolerance.items())
        tol = tol or ("reference" if a.name == "keras" else "none")
        lines.append(f"{a.name:<16} {size:>10} {a.latency_ms:>9.2f} {a.max_abs_diff:>10.2e} {a.mask_dice:>9.4f}  "
                     f"{tol:<16} {'yes' if a.passed else 'NO'}")
    for name, why in report.skipped.items():
        lines.append(f"{name:<16} skipped: {why}")
    v = report.verification
    lines.append(f"verified on {v['slices']} slices from {v['source']}")
    return "\n".join(lines)


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
