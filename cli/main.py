"""``wmhkeras``: the command group; each command is a thin click command in its own module.

Library modules are imported inside each command, so ``wmhkeras --help`` starts without TensorFlow.
Every :class:`~wmhkeras.errors.WmhError` becomes a one-line message on stderr and exit code 2
(:mod:`wmhkeras.cli.common`).
"""

from __future__ import annotations

import click

from wmhkeras.cli.check import check_command
from wmhkeras.cli.common import configure_logging
from wmhkeras.cli.config import show_config
from wmhkeras.cli.evaluate import evaluate_command
from wmhkeras.cli.experiment import experiment
from wmhkeras.cli.export import export_command
from wmhkeras.cli.models import models_command
from wmhkeras.cli.segment import segment_command
from wmhkeras.cli.summarize import summarize_command
from wmhkeras.cli.synth import synth_command
from wmhkeras.cli.train import train_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wmhkeras")
@click.option("-v", "--verbose", count=True,
              help="More log output (-v info, -vv debug and TensorFlow's own messages, hidden otherwise).")
def main(verbose: int) -> None:
    """wmhkeras: segment white matter hyperintensities in FLAIR MRI (Siamese content loss)."""
    configure_logging(verbose)


for _command in (synth_command, show_config, check_command, train_command, segment_command, summarize_command,
                 evaluate_command, export_command, experiment, models_command):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
