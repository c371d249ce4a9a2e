"""Provenance written beside every result: package versions and timestamps."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata

#: Packages whose versions are written beside every result.
PROVENANCE_PACKAGES = ("wmhkeras", "tensorflow", "keras", "numpy", "scipy", "nibabel", "scikit-image")


def package_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Installed versions of the packages that decide a result, plus Python and the platform.

    ``extra``: more package names, listed after :data:`PROVENANCE_PACKAGES` ("not installed" if absent).
    """
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in (*PROVENANCE_PACKAGES, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
