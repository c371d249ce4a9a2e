"""``wmhkeras train``: train a generator into a run folder, or resume one."""

from __future__ import annotations

import time
from pathlib import Path

import click

from wmhkeras.cli.common import OutputPath, handle_errors, start_tensorflow, threads_option


def default_run_dir(configs: tuple[str, ...]) -> Path:
    """``runs/<name of the last config>-<UTC date-time>``."""
    name = Path(configs[-1]).stem if configs else "run"
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


@click.command("train")
@click.argument("configs", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. train.epochs=5 (repeatable).")
@click.option("--data", "data_path", type=click.Path(), default=None,
              help="Dataset: manifest CSV, folder with manifest.csv, MICCAI 2017 layout, BIDS root or "
                   "ROOT/derivatives/PIPELINE (labels from that pipeline; docs/bids.md) (default: data.path).")
@click.option("--out", "out_dir", type=OutputPath(file_okay=False), default=None,
              help="New run folder (default: runs/<config name>-<date-time>).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="Continue the run in this folder from its last committed epoch (config and split read from it; "
                   "a damaged last checkpoint falls back to the one before). Refused while another process "
                   "trains in it.")
@click.option("--init", "init_model", default=None, metavar="MODEL",
              help="Start from this model's weights (fine-tuning): a built-in model's name, a run folder, a .keras "
                   "file or an exported SavedModel. Refused when the config disagrees with it on what the weights mean "
                   "(modalities, context slices, resampling, normalisation, architecture, width); trains at "
                   "finetune.learning_rate, the encoder frozen for finetune.freeze_encoder_epochs epochs "
                   "(configs/finetune.yaml). Recorded in RUN/init.json.")
@click.option("--split", "split_file", type=click.Path(dir_okay=False), default=None,
              help="Reuse a split.json (e.g. another run's) instead of making a new split.")
@click.option("--quiet", is_flag=True, default=False, help="One line per epoch instead of the progress bar.")
@threads_option
@handle_errors
def train_command(configs: tuple[str, ...], overrides: tuple[str, ...], data_path: str | None, out_dir: str | None,
                  resume_dir: str | None, init_model: str | None, split_file: str | None, quiet: bool,
                  threads: int | None) -> None:
    """Train a segmentation model; CONFIGS are YAML files deep-merged in order (e.g. configs/demo.yaml).

    Writes the run folder: config.yaml, split.json, versions.json, summary.json, log.csv,
    checkpoints/{best,last}.keras (and the epoch before as *.prev) and tensorboard/ (view with
    `tensorboard --logdir RUN_DIR/tensorboard`); one train process per run folder (docs/training.md#resume).
    With --resume RUN_DIR, --set overrides apply on top of RUN_DIR/config.yaml (e.g. train.epochs=200).
    With --init MODEL the run starts from MODEL's weights (fine-tuning; configs/finetune.yaml, docs/finetune.md).
    """
    from wmhkeras.config import load_config, load_run_config
    from wmhkeras.errors import ConfigError
    from wmhkeras.io.run_folder import RunFolder

    if resume_dir is not None:
        run = RunFolder(resume_dir)
        run.check_resume(given=bool(configs or out_dir or split_file or init_model))
        cfg = load_run_config(run.config, overrides)
        target = Path(resume_dir)
        click.echo(f"resuming run folder: {target.resolve()}")
    else:
        if not configs:
            raise ConfigError("give at least one CONFIG file (e.g. configs/demo.yaml), or --resume RUN_DIR")
        cfg = load_config(configs, overrides)
        target = Path(out_dir) if out_dir else default_run_dir(configs)
    init = None
    if init_model is not None:
        from wmhkeras.inference.sources import init_record

        init = init_record(init_model)
        click.echo(f"starting from {init.name} ({init.path}, sha256 {init.sha256})")
    if resume_dir is None:
        click.echo(f"training into {target.resolve()} (once every input is checked)")

    start_tensorflow(threads)  # TensorFlow: only once the arguments are valid
    from wmhkeras.training.trainer import train

    result = train(cfg, target, data_path=data_path, resume=resume_dir is not None, split=split_file,
                   verbose=2 if quiet else 1, init=init)
    s = result.summary
    best = f"{s.best_val_dice:.4f}" if s.best_val_dice is not None else f"n/a ({s.monitor})"
    click.echo(f"run folder: {result.run_dir}")
    click.echo(f"loss {s.loss}, {s.subjects['train']} train / {s.subjects['validation']} validation / "
               f"{s.subjects['holdout']} hold-out subjects")
    click.echo(f"epochs {s.epochs} of {s.epochs_planned}{' (stopped early)' if s.stopped_early else ''}, "
               f"best validation Dice {best} at epoch {s.best_epoch}, {s.wall_time_s:.0f} s")
    click.echo(f"model: {RunFolder(result.run_dir).best}")
    click.echo(f"tensorboard --logdir {RunFolder(result.run_dir).tensorboard}")
