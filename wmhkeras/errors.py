"""Exceptions raised for problems a user can fix (bad input files, bad configs, missing weights).

The CLI turns every :class:`WmhError` into a one-line message and exit code 2, before any work starts;
:class:`WriteError` (an output that cannot be written, not the user's input) into one line and exit code 1.
"""


class WmhError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""


class InputError(WmhError, ValueError):
    """A data file is missing, unreadable, or not what the toolkit needs (names the file and the problem)."""


class ConfigError(WmhError, ValueError):
    """A configuration key or value is invalid (names the key, the value seen and what is allowed)."""


class WeightsError(WmhError, FileNotFoundError):
    """Pretrained backbone weights are not available offline (says where to put them)."""


class FolderInUseError(WmhError):
    """Another process holds the output or run folder (:mod:`wmhkeras.io.lock`; names its pid)."""


class WriteError(OSError):
    """An output could not be written (a full disk, no permission): names the file and the system's reason.

    Not a problem with the input, so not a :class:`WmhError`: the command stops, and the CLI reports it in
    one line with exit code 1. The files written before are complete; no partial file is left under a
    final name (:mod:`wmhkeras.io.files`).
    """

    def __init__(self, path, cause: BaseException):
        reason = getattr(cause, "strerror", None) or str(cause) or cause.__class__.__name__
        super().__init__(getattr(cause, "errno", None), reason)
        self.filename = str(path)

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def one_line(text: str) -> str:
    """``text`` on one line: line breaks and other control characters become spaces, runs of spaces one."""
    return " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())


def exception_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as it goes into a message: ``Class: message`` on one line, cut at ``limit`` characters
    (``...`` marks the cut)."""
    text = one_line(f"{exc.__class__.__name__}: {exc}")
    return text if len(text) <= limit else text[:limit] + "..."
