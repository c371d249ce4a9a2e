"""``wmhkeras check``: validate a dataset without changing anything (see :mod:`wmhkeras.data.datasets`).

Each subject is checked as every command checks its inputs: the header first (the pre-pass of
:mod:`wmhkeras.io.header_check`: a readable 3D NIfTI with a usable affine that holds its voxels, every file
on the FLAIR's grid), then the voxels (finite, labels 0/1/2). One line per subject: ``ok ...`` on stdout,
``FAIL <subject>: <reason>`` on stderr. Exit codes: 0 every subject is readable and consistent; 2 the
dataset is missing or malformed (subject ids that are paths or collide included), or some subject failed
its check (each one is listed).
"""

from __future__ import annotations

import sys

import click

from wmhkeras.cli.common import EXIT_BAD_INPUT, handle_errors


@click.command("check")
@click.argument("data", type=click.Path())
@click.option("--t1/--no-t1", default=False, help="Also require and check T1 volumes.")
@click.option("--labels/--no-labels", default=False, help="Require a label for every subject.")
@handle_errors
def check_command(data: str, t1: bool, labels: bool) -> None:
    """Validate a dataset without changing anything.

    DATA is a manifest CSV, a folder with manifest.csv, a MICCAI 2017 layout folder, or a BIDS dataset root
    (labels: the WMH masks of its only derivatives pipeline) or ROOT/derivatives/PIPELINE (that pipeline's
    masks); see docs/bids.md.
    """
    from wmhkeras.data.datasets import check_subject, load_dataset
    from wmhkeras.errors import InputError

    subjects = load_dataset(data)
    modalities = ("flair", "t1") if t1 else ("flair",)
    failures = 0
    for s in subjects:
        try:
            images, label = check_subject(s, modalities, need_label=labels)
        except InputError as exc:
            failures += 1
            click.echo(f"FAIL {s.subject}: {exc}", err=True)
            continue
        shape = "x".join(str(n) for n in images[0].native_shape)
        lesion = "no label" if label is None else f"{int((label.data == 1).sum())} lesion voxels"
        click.echo(f"ok   {s.subject} ({s.site}): {shape}, {lesion}")
    click.echo(f"{len(subjects) - failures} of {len(subjects)} subjects ok")
    if failures:
        sys.exit(EXIT_BAD_INPUT)
