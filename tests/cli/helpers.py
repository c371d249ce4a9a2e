"""Helpers shared by the CLI tests."""

from __future__ import annotations

from click.testing import CliRunner, Result

from wmhkeras.cli.main import main


def run_cli(*args) -> Result:
    """``wmhkeras ARGS...`` in this process (click's :class:`~click.testing.CliRunner`), each argument as a string."""
    return CliRunner().invoke(main, [str(a) for a in args])
