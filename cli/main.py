"""``wmhkeras``: thin click commands that parse arguments and call typed library functions.

Library modules are imported inside each command, so ``wmhkeras --help`` starts without TensorFlow.
Every :class:`~wmhkeras.errors.WmhError` becomes a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from wmhkeras.cli.common import EXIT_BAD_INPUT, handle_errors
from wmhkeras.cli.evaluate import evaluate_command
from wmhkeras.cli.experiment import experiment
from wmhkeras.cli.export import export_command
from wmhkeras.cli.segment import segment_command
from wmhkeras.cli.train import train_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wmhkeras")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """wmhkeras: segment white matter hyperintensities in FLAIR MRI (Siamese content loss)."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--subjects", default=12, show_default=True, type=click.IntRange(1), help="Number of subjects.")
@click.option("--sites", default=3, show_default=True, type=click.IntRange(1), help="Number of scanner sites.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (same seed, same voxels).")
@click.option("--lesion-fraction", nargs=2, type=float, default=(0.0001, 0.01), show_default=True,
              metavar="LOW HIGH", help="Range of lesion load, as a fraction of the volume.")
@handle_errors
def synth(out: str, subjects: int, sites: int, seed: int, lesion_fraction: tuple[float, float]) -> None:
    """Write a synthetic multi-site FLAIR/T1 cohort with lesion labels and OUT/manifest.csv."""
    from wmhkeras.data.synth import make_cohort

    summary = make_cohort(out, subjects=subjects, sites=sites, seed=seed, lesion_fraction=tuple(lesion_fraction))
    click.echo(summary.to_text().rstrip())


@main.command("config")
@click.argument("configs", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a value, e.g. train.epochs=5.")
@handle_errors
def show_config(configs: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """Print the resolved, validated config (CONFIGS deep-merged, then --set overrides)."""
    import yaml

    from wmhkeras.config import load_config

    cfg = load_config(configs, overrides)
    click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)


@main.command()
@click.argument("data", type=click.Path())
@click.option("--t1/--no-t1", default=False, help="Also require and check T1 volumes.")
@click.option("--labels/--no-labels", default=False, help="Require a label for every subject.")
@handle_errors
def check(data: str, t1: bool, labels: bool) -> None:
    """Validate a dataset (manifest CSV or MICCAI-layout folder) without changing anything."""
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
            click.echo(f"FAIL {s.subject}: {exc}")
            continue
        shape = "x".join(str(n) for n in images[0].native_shape)
        lesion = "no label" if label is None else f"{int((label.data == 1).sum())} lesion voxels"
        click.echo(f"ok   {s.subject} ({s.site}): {shape}, {lesion}")
    click.echo(f"{len(subjects) - failures} of {len(subjects)} subjects ok")
    if failures:
        sys.exit(EXIT_BAD_INPUT)


# Commands defined in their own modules.
for _command in (train_command, segment_command, evaluate_command, export_command, experiment):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
