"""``wmhkeras summarize``: combine the ``summary.csv`` of ``segment --shard`` runs into one table
(see :func:`wmhkeras.inference.summary.summarize`). No TensorFlow.

Exit codes: 0 written; 2 a missing or malformed summary, or a subject in two of them (nothing written).
"""

from __future__ import annotations

from pathlib import Path

import click

from wmhkeras.cli.common import OutputPath, handle_errors


@click.command("summarize")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "-o", "out", required=True, type=OutputPath(dir_okay=False, path_type=Path),
              help="The combined summary CSV to write.")
@click.option("--qc-html", default=None, type=OutputPath(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also write the QC index of the whole cohort here, linking each shard's qc/<subject>.png "
                   "(from segment --qc).")
@handle_errors
def summarize_command(inputs: tuple[Path, ...], out: Path, qc_html: Path | None) -> None:
    """Combine the summaries of several segment runs (shards) into the table one run would have written.

    INPUTS are segment output folders (their summary.csv) or summary CSV files. The rows are sorted by
    subject and the cohort QC columns (qc_flag, volume_z) are computed over every subject. A subject may
    appear in one input only.
    """
    from wmhkeras.inference.summary import summarize

    result = summarize(inputs, out, qc_html)
    flagged = [r for r in result.rows if r["qc_flag"]]
    failed = [r for r in result.rows if r["status"] != "ok"]
    click.echo(f"{len(result.rows)} subjects from {len(inputs)} summaries ({len(failed)} failed, "
               f"{len(flagged)} flagged): {result.summary_csv}")
    for row in flagged:
        click.echo(f"  {row['subject']}: {row['qc_flag']} ({row['lesion_volume_ml']} mL)")
    if result.qc_html is not None:
        click.echo(f"QC index: {result.qc_html}")
