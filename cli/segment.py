"""``wmhkeras segment``: segment FLAIR volumes with a trained model (see :mod:`wmhkeras.inference.segment`).

Exit codes: 0 every subject segmented; 1 some subjects failed (the others are complete, each failure
is listed in ``summary.csv`` and on stderr); 2 invalid model, inputs or options, found before any work
(subject ids that are paths, a file failing the header pre-pass), or no subject could be segmented:
one ``error:`` line, and ``--out`` is left as it was found (not created). ``--shard`` values are checked by click, ``--skip-existing`` against the folder's
``segment.json`` before the model is loaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from wmhkeras.cli.common import (
    EXIT_SOME_FAILED,
    OutputPath,
    handle_errors,
    progress_bar,
    start_tensorflow,
    threads_option,
)


def _shard(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """``--shard i/n`` checked before any work (exit 2 when malformed)."""
    from wmhkeras.errors import ConfigError
    from wmhkeras.inference.batch import parse_shard

    try:
        return parse_shard(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1]) from None


@click.command("segment")
@click.argument("arguments", nargs=-1, required=True, metavar="[MODEL] INPUT...")
@click.option("--out", "-o", "out_dir", required=True, type=OutputPath(file_okay=False, path_type=Path),
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
@click.option("--bids-out/--flat-out", "bids_out", default=None,
              help="Write BIDS derivatives (sub-X[/ses-Y]/anat/<key>_space-orig_label-WMH_{probseg,mask}.nii.gz, JSON "
                   "sidecars, dataset_description.json) or flat <subject>_wmh_* files. Default: BIDS when every "
                   "INPUT is a BIDS dataset.")
@click.option("--skip-existing", is_flag=True,
              help="Keep the subjects whose outputs in --out are complete (an ok row in summary.csv, every file "
                   "there and readable) and segment the others; summary.csv keeps the earlier rows. Resumes an "
                   "interrupted run; --out must have been made with the same model and settings.")
@click.option("--shard", default=None, callback=_shard, metavar="I/N",
              help="Segment only shard I of N (1-based): every N-th subject of the subjects sorted by id, from the "
                   "I-th. Give each shard its own --out; `wmhkeras summarize` combines their summaries.")
@click.option("--qc", is_flag=True,
              help="Also write qc/<subject>.png (FLAIR with the predicted outlines) and qc.html, every subject "
                   "with its montage, lesion count and volume, outliers first.")
@click.option("--precision", default="float32", show_default=True, type=click.Choice(["auto", "float32", "bfloat16"]),
              help="Compute precision of a .keras model or run folder: auto is bfloat16 on a CPU with AVX512-BF16/AMX "
                   "or a GPU of compute capability >= 8.0, else float32. bfloat16 is used only if its masks match "
                   "float32's (Dice >= 0.99) on 8 slices of the first subject. SavedModel/TFLite compute as exported: an "
                   "export's saved_model_bf16/ in bfloat16, the others in float32 (bfloat16 refused for them).")
@threads_option
@handle_errors
def segment_command(arguments: tuple[str, ...], out_dir: Path, t1: tuple[Path, ...], threshold: float,
                    min_lesion_mm3: float, min_lesion_voxels: int, tta: bool, uncertainty: bool, batch_size: int,
                    brain_mask: tuple[Path, ...], brain_threshold: float | None, bids_out: bool | None,
                    skip_existing: bool, shard: tuple[int, int] | None, qc: bool, precision: str,
                    threads: int | None) -> None:
    """Segment WMH in FLAIR images.

    MODEL is a built-in model's name (`wmhkeras models`), a .keras file, a training run folder, an exported
    SavedModel folder or an export's .tflite file; without it, the default built-in model segments (named
    in the output and in segment.json). A path that shares a built-in model's name wins (builtin:NAME names
    the built-in one). The model's resampling (fixed size, mm spacing or native grid) and 2.5D context come
    with it. INPUT is a FLAIR
    file (.nii/.nii.gz), a folder of them, a BIDS dataset root (docs/bids.md) or a manifest CSV. Writes
    <subject>_wmh_prob.nii.gz, <subject>_wmh_mask.nii.gz and <subject>_lesions.csv per subject, on the
    input's own grid (BIDS derivatives for BIDS input), and summary.csv (with --qc, qc/ and qc.html).
    Exit code 1 when some subjects failed, 2 when nothing could start or no subject succeeded (then --out is left
    as it was found).
    """
    from wmhkeras.inference.qc import QC_HTML_NAME
    from wmhkeras.inference.record import SegmentSettings
    from wmhkeras.inference.segment import segment
    from wmhkeras.inference.sources import split_model_argument
    from wmhkeras.io.builtin_models import default_model

    settings = SegmentSettings(threshold=threshold, min_lesion_mm3=min_lesion_mm3, tta_flip=tta, batch_size=batch_size,
                               min_lesion_voxels=min_lesion_voxels, uncertainty=uncertainty,
                               brain_threshold=brain_threshold, bids_out=bids_out, qc=qc, precision=precision)
    model, inputs = split_model_argument(arguments)
    if model is None:
        click.echo(f"model: the built-in model {default_model().name} (the default; no MODEL given)")
    start_tensorflow(threads)
    result = segment(model, inputs, out_dir, settings, t1=t1, brain_mask=brain_mask, skip_existing=skip_existing,
                     shard=shard, progress=progress_bar("subject"))
    for r in result.subjects:
        if r.ok:
            kept = " (complete from an earlier run)" if r.skipped else ""
            click.echo(f"{r.subject}: {r.lesion_count} lesions, {r.lesion_volume_ml:.2f} mL{kept}")
        else:
            click.echo(f"failed: {r.subject}: {r.error}", err=True)
    n, kept = len(result.subjects), sum(r.skipped for r in result.subjects)
    kept_note = f" ({kept} kept from an earlier run)" if kept else ""
    shard_note = f" in shard {shard[0]}/{shard[1]}" if shard else ""
    click.echo(f"segmented {n - result.n_failed} of {n} subjects{shard_note}{kept_note}; summary: {result.summary_csv}")
    if qc:
        click.echo(f"QC index: {result.out_dir / QC_HTML_NAME}")
    if result.n_failed:
        sys.exit(EXIT_SOME_FAILED)
