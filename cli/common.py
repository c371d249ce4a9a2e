"""What every command shares: the exit codes, and the error handling that turns user mistakes into exit code 2."""

from __future__ import annotations

import functools
import sys

import click

#: Exit code when everything asked for was done.
#: Exit code when some subjects failed (the others are complete; each failure is reported).
EXIT_SOME_FAILED = 1
#: Exit code of ``wmhkeras export`` when an artifact is outside its tolerance (all files are written).
EXIT_OUTSIDE_TOLERANCE = EXIT_SOME_FAILED
#: Exit code for invalid input, config or options, found before any work (nothing written).
EXIT_BAD_INPUT = 2


def handle_errors(func):
    """Turn user-fixable errors into ``error: ...`` on stderr and exit code 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from wmhkeras.errors import WmhError

        try:
            return func(*args, **kwargs)
        except WmhError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper
