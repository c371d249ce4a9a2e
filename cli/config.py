"""``wmhkeras config``: print the resolved, validated config (see :mod:`wmhkeras.config`)."""

from __future__ import annotations

import click

from wmhkeras.cli.common import handle_errors


@click.command("config")
@click.argument("configs", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a value, e.g. train.epochs=5.")
@handle_errors
def show_config(configs: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """Print the resolved, validated config (CONFIGS deep-merged, then --set overrides)."""
    import yaml

    from wmhkeras.config import load_config

    cfg = load_config(configs, overrides)
    click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
