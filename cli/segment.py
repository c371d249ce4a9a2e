"""``wmhkeras segment``: segment FLAIR volumes with a trained model (see :mod:`wmhkeras.inference.segment`).

Exit codes: 0 every subject segmented; 1 some subjects failed (the others are complete, each failure
is listed in ``summary.csv`` and on stderr); 2 invalid model, inputs or options, found before any work
(nothing is written).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from wmhkeras.cli.common import EXIT_SOME_FAILED, handle_errors


@click.command("segment")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (created if missing).")
@click.option("--t1", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
              help="T1 of each FLAIR file, in the same order (models trained on FLAIR + T1).")
@click.option("--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Probability at and above which a voxel is lesion.")
@click.option("--min-lesion-mm3", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Remove 26-connected lesions smaller than this volume (mm^3).")
@click.option("--min-lesion-voxels", default=0, show_default=True, type=click.IntRange(min=0),
              help="Remove 26-connected lesions of fewer voxels (instead of --min-lesion-mm3).")
@click.option("--tta", is_flag=True, help="Average with the prediction on left-right mirrored slices.")
@click.option("--uncertainty", is_flag=True,
              help="Also write <subject>_wmh_uncertainty.nii.gz, the flip disagreement |p - p_flipped| (implies --tta).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Slices per model call.")
@click.option("--brain-mask", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Brain mask of each FLAIR file, in order: predictions outside it are zeroed, and the brain "
                   "volume is reported in summary.csv.")
@click.option("--brain-threshold", default=None, type=click.FloatRange(0, 1), metavar="T",
              help="Zero predictions where the FLAIR divided by its maximum is below T (a brain mask without a file).")
@handle_errors
def segment_command(model: Path, inputs: tuple[Path, ...], out_dir: Path, t1: tuple[Path, ...], threshold: float,
                    min_lesion_mm3: float, min_lesion_voxels: int, tta: bool, uncertainty: bool, batch_size: int,
                    brain_mask: tuple[Path, ...], brain_threshold: float | None) -> None:
    """Segment WMH in FLAIR images.

    MODEL is a .keras file, a training run folder, an exported SavedModel folder or an export's .tflite file;
    its resampling (fixed size, mm spacing or native grid) and 2.5D context come with it. INPUT is a FLAIR
    file (.nii/.nii.gz), a folder of them, or a manifest CSV. Writes <subject>_wmh_prob.nii.gz,
    <subject>_wmh_mask.nii.gz and <subject>_lesions.csv per subject, on the input's own grid, and
    summary.csv. Exit code 1 when some subjects failed, 2 when nothing could start.
    """
    from tqdm import tqdm

    from wmhkeras.inference.segment import segment

    result = segment(model, inputs, out_dir, threshold=threshold, min_lesion_mm3=min_lesion_mm3, tta_flip=tta,
                     batch_size=batch_size, brain_mask=brain_mask, t1=t1,
                     progress=functools.partial(tqdm, unit="subject", disable=None),
                     min_lesion_voxels=min_lesion_voxels, uncertainty=uncertainty, brain_threshold=brain_threshold)
    for r in result.subjects:
        if r.ok:
            click.echo(f"{r.subject}: {r.lesion_count} lesions, {r.lesion_volume_ml:.2f} mL")
        else:
            click.echo(f"failed: {r.subject}: {r.error}", err=True)
    n = len(result.subjects)
    click.echo(f"segmented {n - result.n_failed} of {n} subjects; summary: {result.summary_csv}")
    if result.n_failed:
        sys.exit(EXIT_SOME_FAILED)
