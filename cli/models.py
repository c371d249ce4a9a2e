"""``wmhkeras models``: the built-in models (see :mod:`wmhkeras.io.builtin_models`). No TensorFlow.

Exit codes: 0 listed or shown; 2 an unknown name or a broken model card.
"""

from __future__ import annotations

import json

import click

from wmhkeras.cli.common import handle_errors


@click.group("models", invoke_without_command=True)
@click.pass_context
@handle_errors
def models_command(ctx: click.Context) -> None:
    """List the built-in models: name, training data, expected input, hold-out figures, licence.

    A built-in name works wherever a MODEL is taken (segment, export, train --init, the Python API), and
    `wmhkeras segment INPUT...` without a model uses the default one.
    """
    if ctx.invoked_subcommand is not None:
        return
    from wmhkeras.io.builtin_models import builtin_models, models_folder, summarize_model

    models = builtin_models()
    if not models:
        click.echo("no built-in models in this installation")
        return
    click.echo(f"built-in models in {models_folder()}:")
    for model in models:
        s = summarize_model(model)
        click.echo(f"{s.name}{' (default)' if s.default else ''}")
        for label, text in (("trained on", s.trained_on), ("expects", s.expects), ("hold-out", s.holdout),
                            ("licence", s.licence)):
            click.echo(f"  {label}: {text}")
    click.echo("details: wmhkeras models show NAME")


@models_command.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the model card as JSON (model_card.json).")
@handle_errors
def show_command(name: str, as_json: bool) -> None:
    """Print the model card of the built-in model NAME."""
    from wmhkeras.io.builtin_models import builtin_model, card_lines

    model = builtin_model(name)
    if as_json:
        click.echo(json.dumps(model.card().to_dict(), indent=2))
        return
    for line in card_lines(model):
        click.echo(line)
