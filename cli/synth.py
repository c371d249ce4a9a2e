"""``wmhkeras synth``: a synthetic multi-site cohort (see :mod:`wmhkeras.data.synth`)."""

from __future__ import annotations

import click

from wmhkeras.cli.common import OutputPath, handle_errors


@click.command("synth")
@click.argument("out", type=OutputPath(file_okay=False))
@click.option("--subjects", default=12, show_default=True, type=click.IntRange(1), help="Number of subjects.")
@click.option("--sites", default=3, show_default=True, type=click.IntRange(1), help="Number of scanner sites.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (same seed, same voxels).")
@click.option("--lesion-fraction", nargs=2, type=float, default=(0.0001, 0.01), show_default=True,
              metavar="LOW HIGH", help="Range of lesion load, as a fraction of the volume.")
@handle_errors
def synth_command(out: str, subjects: int, sites: int, seed: int, lesion_fraction: tuple[float, float]) -> None:
    """Write a synthetic multi-site FLAIR/T1 cohort with lesion labels and OUT/manifest.csv."""
    from wmhkeras.data.synth import make_cohort

    summary = make_cohort(out, subjects=subjects, sites=sites, seed=seed, lesion_fraction=tuple(lesion_fraction))
    click.echo(summary.to_text().rstrip())
