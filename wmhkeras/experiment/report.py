"""The experiment's reports: Table 1, Figure 5, the per-subject CSV and the paired tests.

Written from the per-subject rows of every arm (:mod:`wmhkeras.experiment.statistics` computes the
numbers); every file atomically (:mod:`wmhkeras.io.files`).
"""

from __future__ import annotations

import math
from pathlib import Path

from wmhkeras.config import ExperimentConfig
from wmhkeras.evaluation.figures import plot_avd_vs_pcd
from wmhkeras.evaluation.metrics import METRIC_KEYS
from wmhkeras.evaluation.reports import TABLE_HEADERS, markdown_table
from wmhkeras.experiment.statistics import (
    ROW_KEYS,
    loss_label,
    paired_tests,
    subject_means,
    table_results,
    table_rows,
)
from wmhkeras.io.files import atomic_write_csv, atomic_write_text


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def tests_markdown(tests: list[dict], datasets: dict[str, str]) -> str:
    """``wilcoxon.md``: one line per dataset, metric and compared loss."""
    lines = [
        "| data | metric | reference | loss | n | reference mean | loss mean | median diff. | p |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in tests:
        p = row["p_value"]
        p_text = "n/a" if math.isnan(p) else f"{p:.3g}"
        lines.append(
            f"| {datasets.get(row['dataset'], row['dataset'])} | {TABLE_HEADERS.get(row['metric'], row['metric'])} "
            f"| {loss_label(row['reference'])} | {loss_label(row['loss'])} "
            f"| {row['n']} | {_number(row['reference_mean'])} | {_number(row['loss_mean'])} "
            f"| {_number(row['median_difference'])} | {p_text} |"
        )
    return "\n".join(lines) + "\n"


def _figure5(means: list[dict], out_dir: Path, exp: ExperimentConfig, datasets: dict[str, str]) -> Path:
    """``figure5.png``: mean AVD per PCD bin, one line per loss, over the datasets that have results."""
    series = {
        loss_label(loss): ([r["pcd"] for r in means if r["loss"] == loss],
                           [r["avd"] for r in means if r["loss"] == loss])
        for loss in exp.losses
    }
    names = " + ".join(datasets[k] for k in datasets if any(r["dataset"] == k for r in means))
    return plot_avd_vs_pcd(series, out_dir / "figure5.png", edges=exp.pcd_bins, title=f"AVD against PCD ({names})")


def write_reports(rows: list[dict], out_dir: Path, exp: ExperimentConfig, datasets: dict[str, str]) -> dict:
    """Write Table 1, Figure 5, the per-subject CSV and the paired tests from per-subject rows.

    Args:
        rows: per-subject metric rows (keys :data:`~wmhkeras.experiment.statistics.ROW_KEYS` and the metrics).
        out_dir: the experiment folder.
        exp: the experiment config (losses, reference loss, PCD bins).
        datasets: ``{dataset key: label in the tables}``, in table order.

    Returns:
        ``{"table": markdown, "tests": rows, "files": {name: path}}``.
    """
    out_dir = Path(out_dir)
    files = {"per_subject": atomic_write_csv(out_dir / "per_subject.csv", rows, columns=[*ROW_KEYS, *METRIC_KEYS])}
    means = subject_means(rows)
    table = markdown_table(table_results(means, datasets, exp.losses))
    files["table_md"] = atomic_write_text(out_dir / "table.md", table)
    files["table_csv"] = atomic_write_csv(out_dir / "table.csv", table_rows(means, datasets, exp.losses))
    files["figure5"] = _figure5(means, out_dir, exp, datasets)
    tests = paired_tests(means, exp.reference, exp.losses, list(datasets))
    files["wilcoxon_csv"] = atomic_write_csv(out_dir / "wilcoxon.csv", tests)
    files["wilcoxon_md"] = atomic_write_text(out_dir / "wilcoxon.md", tests_markdown(tests, datasets))
    return {"table": table, "tests": tests, "files": files}
