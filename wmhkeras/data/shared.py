"""Where the shared real data lies: the folder of data sets read in place, never copied or downloaded.

``$WMH_SHARED_DATA`` names the folder when it is set (and not empty); else it is ``../shared/data`` beside
the checkout that holds the package. Its ``open_ms_data/`` holds the two MS patients (CC-BY) that the
real-data tests, scripts and benchmarks read.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The checkout (or installation folder) that holds the ``wmhkeras`` package.
CHECKOUT = Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    """The shared data folder: ``$WMH_SHARED_DATA``, else ``../shared/data`` beside the checkout."""
    folder = os.environ.get("WMH_SHARED_DATA")
    return Path(folder) if folder else CHECKOUT.parent / "shared" / "data"


def open_ms_data() -> Path:
    """The ``open_ms_data`` folder of the shared data (:func:`shared_data`); it may not exist."""
    return shared_data() / "open_ms_data"
