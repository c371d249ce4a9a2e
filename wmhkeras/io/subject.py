"""A subject: the one record of an image to train on, check, evaluate or segment, whatever it was read from.

The readers fill it: a manifest (:func:`wmhkeras.data.datasets.read_manifest`), a folder
(:func:`wmhkeras.data.datasets.read_folder`) and a BIDS dataset (:func:`wmhkeras.io.bids.read_bids`), all
reached through :func:`wmhkeras.data.datasets.load_dataset`. Paths are absolute; no file is opened here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from wmhkeras.errors import InputError


@dataclass(frozen=True)
class Subject:
    """One subject's files (absolute paths) and what its source says about it."""

    #: Its id; for a BIDS image, the entities of its name (``sub-01_ses-02_acq-3d``).
    subject: str
    site: str
    flair: Path
    t1: Optional[Path] = None
    label: Optional[Path] = None
    #: The person the image belongs to, when one person has several images (BIDS sessions, a manifest's
    #: optional ``participant`` column): splits keep a participant's images in one set.
    participant: Optional[str] = None
    #: The T1 was named (a manifest's column, ``segment --t1``): checked like every input even where the
    #: model does not use it; a T1 found by its name in a folder or BIDS dataset is checked only when used.
    t1_listed: bool = False
    #: The brain mask that limits ``segment``'s lesions (a manifest's optional ``brain_mask`` column,
    #: ``segment --brain-mask``).
    brain_mask: Optional[Path] = None
    #: The root of the BIDS dataset the FLAIR belongs to (``segment`` then writes BIDS derivatives by default).
    bids_root: Optional[Path] = None

    @property
    def group(self) -> str:
        """The unit a split assigns: the participant, else the subject itself."""
        return self.participant or self.subject

    def modality(self, name: str) -> Path:
        """The file of ``name`` (``flair``, ``t1``).

        Raises:
            InputError: the subject has no such file.
        """
        path = {"flair": self.flair, "t1": self.t1}[name]
        if path is None:
            raise InputError(f"subject {self.subject}: no {name.upper()} file is listed, but the model needs it")
        return path
