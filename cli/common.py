"""What every command shares: exit codes, error handling, logging levels, progress, and TensorFlow's start.

- :func:`handle_errors` turns user mistakes into exit code 2, an output that cannot be written into exit 1.
- :func:`configure_logging` (called by the group for ``-v`` / ``-vv``): warnings by default, plus the
  progress lines of long work (:data:`PROGRESS_LOGGERS`); ``-v`` every info line; ``-vv`` debug lines and
  TensorFlow's own start-up and C++ messages, which are hidden otherwise.
- :func:`start_tensorflow` (the compute commands, before any TensorFlow work): imports TensorFlow with its
  start-up lines hidden, and applies ``--threads`` (:func:`threads_option`).
- :func:`progress_bar`: a tqdm bar on a terminal, one line per item in a log file.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator

import click

#: Exit code when some subjects failed (the others are complete; each failure is reported).
EXIT_SOME_FAILED = 1
#: Exit code of ``wmhkeras export`` when an artifact is outside its tolerance (all files are written).
EXIT_OUTSIDE_TOLERANCE = EXIT_SOME_FAILED
#: Exit code for invalid input, config or options, found before any work (nothing written).
EXIT_BAD_INPUT = 2
#: Exit code when an output cannot be written (a full disk, no permission): the command stops there.
EXIT_WRITE_FAILED = 1

#: Loggers whose info lines report the progress of long work; shown at the default verbosity.
PROGRESS_LOGGERS = (
    "wmhkeras.training.cohort",  # the cohort check before training: every tenth of the subjects
    "wmhkeras.training.trainer",  # training starts, ends
    "wmhkeras.experiment.runner",  # the experiment's plan, its test-subject check, its end
    "wmhkeras.experiment.arms",  # each arm: started, resumed, skipped, done
    "wmhkeras.export.runner",  # export steps
    "wmhkeras.export.tflite",  # each TFLite conversion
    "wmhkeras.export.verification",  # each artifact's check against Keras
)
#: Python loggers of TensorFlow and absl: errors only, unless ``-vv``.
TENSORFLOW_LOGGERS = ("tensorflow", "absl")
#: ``TF_CPP_MIN_LOG_LEVEL`` unless ``-vv`` (or the environment sets one): hides C++ info, warnings and
#: errors such as "failed call to cuInit" on a machine without a GPU (Python exceptions still report errors).
QUIET_TF_CPP_LEVEL = "3"


def handle_errors(func):
    """Turn user-fixable errors into ``error: ...`` on stderr and exit code 2 (no traceback); an output
    that cannot be written (:class:`~wmhkeras.errors.WriteError`, any other ``OSError``, TensorFlow's error
    for a file it cannot write: a full disk, no permission) into one such line and exit code
    :data:`EXIT_WRITE_FAILED`."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from wmhkeras.errors import WmhError

        try:
            return func(*args, **kwargs)
        except WmhError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except Exception as exc:  # a write that failed is not the input's fault: files written before are complete
            from wmhkeras.io.files import tf_write_error

            error = exc if isinstance(exc, OSError) else tf_write_error(exc)  # TensorFlow's: e.g. TensorBoard's
            if error is None:
                raise
            logging.getLogger(__name__).debug("stopped by %r", exc, exc_info=True)
            click.echo(f"error: {error}; stopped (files written before are complete)", err=True)
            sys.exit(EXIT_WRITE_FAILED)

    return wrapper


# === Logging ===


def configure_logging(verbose: int) -> None:
    """Log levels for ``-v`` counted ``verbose`` times, and TensorFlow's verbosity, before TensorFlow is imported.

    0: warnings, and info lines of :data:`PROGRESS_LOGGERS`; 1: info; 2 or more: debug, and TensorFlow's
    C++ log (``TF_CPP_MIN_LOG_LEVEL=0``), its start-up lines and its Python loggers at every level.
    Below 2, ``TF_CPP_MIN_LOG_LEVEL`` is :data:`QUIET_TF_CPP_LEVEL` unless the environment already sets it.
    """
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for name in PROGRESS_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose <= 0 else logging.NOTSET)
    for name in TENSORFLOW_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose >= 2 else logging.ERROR)
    if verbose >= 2:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_TF_CPP_LEVEL)


class OutputPath(click.Path):
    """``click.Path`` for output folders and files that refuses an empty value (``--out ""`` would
    otherwise become the current folder)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path: name the output (. is the current folder)", param, ctx)
        return super().convert(value, param, ctx)


# === TensorFlow ===


def threads_option(func):
    """The ``--threads N`` option of the compute commands (pass its value to :func:`start_tensorflow`)."""
    return click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
                        help="TensorFlow threads: N for the ops' own parallelism (intra-op), min(N, 2) for "
                             "running ops side by side (inter-op) [default: TensorFlow's, one per core].")(func)


@contextlib.contextmanager
def _stderr_hidden(hide: bool) -> Iterator[None]:
    """Send file descriptor 2 to /dev/null inside the block (C++ libraries write there directly)."""
    if not hide:
        yield
        return
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def inter_op_threads(threads: int) -> int:
    """Inter-op threads for ``--threads N``: ``min(N, 2)`` (two lets the input pipeline run beside the model)."""
    return min(threads, 2)


def start_tensorflow(threads: int | None = None) -> None:
    """Import TensorFlow and set its thread pools, before it does any work.

    TensorFlow writes start-up lines (oneDNN, CUDA probing) to stderr during its import, before its own
    log level applies; they are hidden unless ``TF_CPP_MIN_LOG_LEVEL`` is ``0`` (``-vv``). ``threads``:
    intra-op ``N`` and inter-op :func:`inter_op_threads`. When TensorFlow already ran (a second command in
    one process), the thread pools cannot change: a warning says so unless they already have these sizes.
    """
    if "tensorflow" not in sys.modules:
        with _stderr_hidden(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") not in ("", "0")):
            import tensorflow  # noqa: F401
    if threads is None:
        return
    import tensorflow as tf

    wanted = (threads, inter_op_threads(threads))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(wanted[0])
        tf.config.threading.set_inter_op_parallelism_threads(wanted[1])
    except RuntimeError:
        now = (tf.config.threading.get_intra_op_parallelism_threads(),
               tf.config.threading.get_inter_op_parallelism_threads())
        if now != wanted:
            click.echo(f"warning: --threads {threads} has no effect: TensorFlow already started in this process", err=True)


# === Progress ===


def _progress_lines(iterable: Iterable, total: int | None = None, unit: str = "item") -> Iterator:
    """Yield every item; after each, one line ``<unit>s: i/n (s elapsed)`` on stderr."""
    start = time.monotonic()
    for i, item in enumerate(iterable, 1):
        yield item
        click.echo(f"{unit}s: {i}/{total if total is not None else '?'} ({time.monotonic() - start:.0f} s)", err=True)


def progress_bar(unit: str):
    """A ``progress(iterable, total=n)`` wrapper: tqdm on a terminal, else one line per item (batch logs)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return functools.partial(tqdm, unit=unit)
    return functools.partial(_progress_lines, unit=unit)
