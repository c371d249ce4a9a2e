"""The verification report of an export (``export_report.json``) and its printed table. No TensorFlow here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

from wmhkeras.io.files import read_json

#: File name of the report inside the export folder.
REPORT_NAME = "export_report.json"


@dataclass
class ArtifactCheck:
    """How one artifact compares with the Keras model (``reference``) on the verification slices.

    ``latency_ms``: median wall time of one slice (batch of 1) on this machine, ``segment_volume``: of the
    whole volume divided by its slice count. ``size_bytes`` is ``None`` for a signature of an artifact.
    ``runtime``: what ran it (``TF oneDNN``, ``TF oneDNN bf16``, ``TF GPU``, ``LiteRT XNNPACK``, ...) on
    ``threads`` CPU threads; ``speedup``: the Keras model's time over this artifact's on the same work (one
    slice at a time; for ``segment_volume`` rows the Keras pipeline of ``wmhkeras segment`` on the volume),
    so above 1 is faster than Keras. A report without these fields reads them as empty.
    """

    name: str
    path: str
    size_bytes: int | None
    latency_ms: float
    max_abs_diff: float
    mask_dice: float
    tolerance: dict[str, float] = field(default_factory=dict)
    passed: bool = True
    runtime: str = ""
    threads: Optional[int] = None
    speedup: Optional[float] = None


@dataclass
class ExportReport:
    """What :func:`wmhkeras.export.runner.export` wrote and how every artifact verified.

    ``passed``: all within tolerance. ``skipped``: artifact -> why it was left out (with the figures that
    decided it, e.g. a bfloat16 SavedModel not faster than the float32 one). ``verification``: where the
    verification slices came from. ``calibration``: where the int8 calibration slices came from, or the
    reason int8 was skipped (a string), or ``{}`` when int8 was not asked for.
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

    @classmethod
    def from_dict(cls, data: dict) -> ExportReport:
        """The report of :meth:`to_dict` (``export_report.json``), also one without the runtime, threads and speed fields."""
        names = {f.name for f in fields(ArtifactCheck)}
        artifacts = [ArtifactCheck(**{k: v for k, v in a.items() if k in names}) for a in data["artifacts"]]
        return cls(Path(data["out_dir"]), data["source"], data["created"], artifacts, dict(data.get("skipped") or {}),
                   data.get("verification") or {}, data.get("calibration", {}))

    @classmethod
    def read(cls, path: str | Path) -> ExportReport:
        """``export_report.json`` (the file, or the export folder holding it)."""
        path = Path(path)
        return cls.from_dict(read_json(path / REPORT_NAME if path.is_dir() else path))


_LIMIT_TEXT = {"max_abs_diff": "diff <=", "mask_dice": "Dice >="}


def format_table(report: ExportReport) -> str:
    """The report as a plain-text table (the CLI prints it)."""
    head = (f"{'artifact':<19} {'runtime':<15} {'thr':>3} {'size':>10} {'ms/slice':>9} {'x Keras':>7} "
            f"{'max|diff|':>10} {'mask Dice':>9}  {'tolerance':<16} ok")
    lines = [head, "-" * len(head)]
    for a in report.artifacts:
        size = "-" if a.size_bytes is None else _human_size(a.size_bytes)
        tol = ", ".join(f"{_LIMIT_TEXT[k]} {v:g}" for k, v in a.tolerance.items())
        tol = tol or ("reference" if a.name == "keras" else "none")
        threads = "-" if a.threads is None else str(a.threads)
        speed = "-" if a.speedup is None else f"{a.speedup:.2f}"
        lines.append(f"{a.name:<19} {a.runtime or '-':<15} {threads:>3} {size:>10} {a.latency_ms:>9.2f} {speed:>7} "
                     f"{a.max_abs_diff:>10.2e} {a.mask_dice:>9.4f}  {tol:<16} {'yes' if a.passed else 'NO'}")
    for name, why in report.skipped.items():
        lines.append(f"{name:<19} skipped: {why}")
    v = report.verification
    lines.append(f"verified on {v.get('slices', '?')} slices from {v.get('source', '?')}")
    lines.append("ms/slice: median of one slice at a time (segment_volume: one whole volume / its slices); "
                 "x Keras: the Keras model's time over the artifact's; thr: CPU threads")
    return "\n".join(lines)


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
