"""``wmhkeras export``: a trained model as a verified SavedModel and TFLite files (see :mod:`wmhkeras.export`).

Exit codes: 0 every artifact verified within its tolerance; 1 an artifact is outside its tolerance (all
files and ``export_report.json`` are written, for inspection); 2 bad model, output folder or options,
found before any work (nothing is written).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from wmhkeras.cli.common import EXIT_OUTSIDE_TOLERANCE, OutputPath, handle_errors, start_tensorflow, threads_option


@click.command("export")
@click.argument("model_or_run_dir", type=click.Path(path_type=Path))
@click.option("--out", "-o", "out_dir", default=None, type=OutputPath(file_okay=False, path_type=Path),
              help="Export folder [default: saved_models/<run name>].")
@click.option("--tflite", default=None, metavar="LIST",
              help="TFLite variants, comma-separated, from fp32,fp16,dynamic,int8, or none "
                   "[default: all; int8 only when calibration data exists].")
@click.option("--saved-model", "saved_models", default=None, metavar="LIST",
              help="SavedModel precisions, comma-separated, from float32,bfloat16; float32 is always written, "
                   "bfloat16 (OUT/saved_model_bf16, bfloat16 compute, float32 in and out) when listed "
                   "[default: float32 alone].")
@click.option("--calibration", default=None, type=click.Path(path_type=Path), metavar="DATA",
              help="int8 calibration data: a dataset (manifest CSV or folder) or a .npy of preprocessed slices "
                   "[default: the run's training subjects].")
@click.option("--card-info", default=None, type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="YAML/JSON file of the model card's texts: intended_use, not_intended_for, limitations, "
                   "input_requirements (skull_stripped, bias_corrected, notes), training_data (dataset, description, "
                   "licence, citation) [default: 'not stated'].")
@click.option("--metrics", default=None, type=click.Path(path_type=Path), metavar="EVAL_DIR",
              help="A `wmhkeras evaluate` output (folder or summary.json) of the model's hold-out subjects, for the "
                   "card [default: RUN/evaluate/summary.json when it exists].")
@click.option("--serving-version", default=None, type=click.IntRange(min=1), metavar="N",
              help="Write the SavedModel in TensorFlow Serving's layout OUT/NAME/N/ with warm-up requests.")
@click.option("--serving-name", default=None, metavar="NAME",
              help="The served model's name in that layout [default: the export folder's name].")
@click.option("--force", is_flag=True, help="Replace an existing, non-empty export folder.")
@threads_option
@handle_errors
def export_command(model_or_run_dir: Path, out_dir: Path | None, tflite: str | None, saved_models: str | None,
                   calibration: Path | None, card_info: Path | None, metrics: Path | None,
                   serving_version: int | None, serving_name: str | None, force: bool, threads: int | None) -> None:
    """Export MODEL_OR_RUN_DIR (a run folder or a .keras file) for deployment.

    Writes OUT/saved_model (signatures serving_default and segment_volume; loads with plain TensorFlow;
    the model card inside, in assets.extra/, so the folder alone segments), OUT/tflite/model_<variant>.tflite,
    OUT/model_card.json and OUT/export_report.json, after checking every artifact against the Keras model
    on held-back slices. The model's resampling (fixed size, mm spacing or native grid) and 2.5D context
    are exported with it and recorded in the card; free-size models keep slice height and width free, in
    the SavedModel and in the TFLite files. With --serving-version N the SavedModel is at OUT/NAME/N/
    instead, ready for tensorflow_model_server (docs/export.md). The table gives each artifact's runtime,
    CPU threads and speed on this machine beside its parity with Keras, to pick the fastest that passes.
    """
    start_tensorflow(threads)  # before the export modules import TensorFlow
    from wmhkeras.export.options import default_out_dir, parse_saved_models, parse_variants
    from wmhkeras.export.report import format_table
    from wmhkeras.export.runner import BF16_ARTIFACT, export

    if serving_name is not None and serving_version is None:
        raise click.UsageError("--serving-name needs --serving-version N")
    variants = parse_variants(tflite)
    precisions = parse_saved_models(saved_models)
    out_dir = out_dir or default_out_dir(model_or_run_dir)
    report = export(model_or_run_dir, out_dir, tflite=variants, force=force, calibration_data=calibration,
                    card_info=card_info, metrics=metrics, serving_version=serving_version, serving_name=serving_name,
                    saved_models=precisions)
    click.echo(format_table(report))
    paths = {a.name: a.path for a in report.artifacts}
    bf16 = f", bfloat16 SavedModel {paths[BF16_ARTIFACT]}/" if BF16_ARTIFACT in paths else ""
    click.echo(f"exported to {out_dir} (SavedModel {paths['saved_model']}/{bf16}, model_card.json, export_report.json)")
    if not report.passed:
        click.echo(f"error: outside tolerance: {', '.join(report.failures)} (see {out_dir / 'export_report.json'})",
                   err=True)
        sys.exit(EXIT_OUTSIDE_TOLERANCE)
