"""``wmhkeras evaluate``: challenge metrics and reports of predictions against ground truth.

Imports no TensorFlow (see :mod:`wmhkeras.evaluation.evaluate`). Exit codes: 0 every subject evaluated; 1 some
subjects failed (missing, unreadable or off-grid prediction; listed in metrics.csv, summary.json and on
stderr); 2 nothing could be evaluated (bad paths, no matching subject), nothing written.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from wmhkeras.cli.common import EXIT_SOME_FAILED, OutputPath, handle_errors


@click.command("evaluate")
@click.option("--pred", required=True, type=click.Path(path_type=Path),
              help="Predictions: a segment output folder (flat or BIDS derivatives), a NIfTI file, a folder of them, "
                   "or a CSV (subject,pred).")
@click.option("--truth", required=True, type=click.Path(path_type=Path),
              help="Ground truth: a label file, a folder, a manifest CSV, a BIDS root or ROOT/derivatives/PIPELINE "
                   "(its WMH masks), or a training run folder (its hold-out).")
@click.option("--out", "-o", "out_dir", required=True, type=OutputPath(file_okay=False, path_type=Path),
              help="Output folder for metrics.csv, summary.json, table.md, report.md and the PNGs.")
@click.option("--model-name", default=None, help="Model row label in table.md (default: the name of --pred).")
@click.option("--dataset-name", default=None, help="Dataset row label in table.md (default: the name of --truth).")
@click.option("--qc/--no-qc", default=True, show_default=True, help="Write one QC montage PNG per subject.")
@handle_errors
def evaluate_command(pred: Path, truth: Path, out_dir: Path, model_name: str | None, dataset_name: str | None,
                     qc: bool) -> None:
    """Score WMH segmentations with the MICCAI 2017 WMH challenge metrics.

    Predictions are matched to ground-truth subjects by subject id (<subject>_wmh_mask.nii.gz as written
    by `wmhkeras segment`; for BIDS, the entities of the names, e.g. sub-01_ses-02). Exit code 1 when some subjects failed, 2 when nothing could be evaluated.
    """
    from tqdm import tqdm

    from wmhkeras.evaluation.evaluate import evaluate

    result = evaluate(pred, truth, out_dir, model_name=model_name, dataset_name=dataset_name, qc=qc,
                      progress=functools.partial(tqdm, unit="subject", disable=None))
    click.echo(result.files["table"].read_text(), nl=False)
    for row in result.rows:
        if row["status"] != "ok":
            click.echo(f"failed: {row['subject']}: {row['error']}", err=True)
    n = len(result.rows)
    click.echo(f"evaluated {n - result.n_failed} of {n} subjects; report: {result.files['report']}")
    if result.n_failed:
        sys.exit(EXIT_SOME_FAILED)
