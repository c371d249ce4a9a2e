"""Exceptions raised for problems a user can fix (bad input files, bad configs, missing weights).

The CLI turns every :class:`WmhError` into a one-line message and exit code 2, before any work starts.
"""


class WmhError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""


class InputError(WmhError, ValueError):
    """A data file is missing, unreadable, or not what the toolkit needs (names the file and the problem)."""


class ConfigError(WmhError, ValueError):
    """A configuration key or value is invalid (names the key, the value seen and what is allowed)."""


class WeightsError(WmhError, FileNotFoundError):
    """Pretrained backbone weights are not available offline (says where to put them)."""
