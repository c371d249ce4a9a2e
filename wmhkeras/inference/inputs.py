"""The subjects to segment: command-line inputs turned into :class:`SegmentInput` (:func:`resolve_inputs`)
and each subject's volumes read and checked (:func:`load_subject`). No TensorFlow."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from wmhkeras.data.datasets import (
    MANIFEST_NAME,
    Subject,
    check_subject,
    load_dataset,
    read_manifest,
    read_manifest_table,
    unused_t1,
)
from wmhkeras.errors import InputError
from wmhkeras.io import Volume, check_same_grid, load_volume
from wmhkeras.io.bids import bids_key, bids_location, read_bids
from wmhkeras.io.header_check import check_inputs
from wmhkeras.io.naming import OUTPUT_SUFFIXES, is_nifti, is_output_map, strip_nifti, subject_id, swap_tag
from wmhkeras.io.subject_ids import check_subject_ids


@dataclass(frozen=True)
class SegmentInput:
    """One subject to segment: its files (absolute paths)."""

    subject: str
    flair: Path
    t1: Optional[Path] = None
    brain_mask: Optional[Path] = None
    site: str = "site0"
    #: The BIDS dataset root the FLAIR came from (its outputs are then BIDS derivatives by default).
    bids_root: Optional[Path] = None
    #: The T1 was named (a manifest's column, ``--t1``): checked like every input, also when the model does
    #: not use it (:func:`check_input_headers`). A T1 found by its name in a folder or BIDS dataset is not.
    t1_listed: bool = False
    #: The person the scan belongs to, when the input says (a manifest's ``participant`` column, BIDS ``sub-``).
    participant: Optional[str] = None


def _flat_folder(folder: Path) -> list[SegmentInput]:
    """The NIfTI files directly in ``folder`` (rule: see :func:`resolve_inputs`)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith("."))
    files = [p for p in files if not is_output_map(p, OUTPUT_SUFFIXES)]
    flairs = [p for p in files if re.search(r"flair$", strip_nifti(p.name), flags=re.IGNORECASE)]
    if not flairs:
        return [SegmentInput(subject_id(p), p.resolve()) for p in files]
    inputs = []
    for p in flairs:
        t1 = swap_tag(p, "FLAIR", "T1")
        inputs.append(SegmentInput(subject_id(p), p.resolve(), t1.resolve() if t1 is not None and t1.is_file() else None))
    return inputs


def _manifest_inputs(path: Path) -> list[SegmentInput]:
    """Subjects of a manifest; an optional ``brain_mask`` column beside the standard ones is honoured."""
    subjects = read_manifest(path)
    masks = [row.get("brain_mask", "") for _, row in read_manifest_table(path).rows]
    return [
        SegmentInput(s.subject, s.flair, s.t1, (path.parent / m).resolve() if m else None, s.site,
                     t1_listed=s.t1_listed, participant=s.participant)
        for s, m in zip(subjects, masks, strict=True)
    ]


def _inputs_of(path: Path) -> list[SegmentInput]:
    """The subjects of one command-line input (rules: see :func:`resolve_inputs`)."""
    if not path.exists():
        raise InputError(f"{path}: input not found")
    if path.is_dir():
        if (path / MANIFEST_NAME).is_file():
            return _manifest_inputs(path / MANIFEST_NAME)
        if bids_location(path) is not None:
            return [SegmentInput(e.key, e.flair, e.t1, None, e.site, e.root, participant=e.participant)
                    for e in read_bids(path, labels=False)]
        return _flat_folder(path) or [SegmentInput(s.subject, s.flair, s.t1, None, s.site) for s in load_dataset(path)]
    if path.suffix.lower() == ".csv":
        return _manifest_inputs(path)
    if is_nifti(path):
        return [SegmentInput(subject_id(path), path.resolve())]
    raise InputError(f"{path}: not a NIfTI file (.nii, .nii.gz), a folder, a BIDS dataset or a manifest CSV")


def _pair_files(resolved: list[SegmentInput], inputs: Sequence[str | Path], option: str, key: str,
                files: Sequence[str | Path]) -> list[SegmentInput]:
    """Give each subject the file of ``option`` (``--t1``, ``--brain-mask``) at its position, as field ``key``."""
    if not files:
        return resolved
    if not all(Path(p).is_file() and is_nifti(p) for p in inputs):
        raise InputError(f"{option} pairs with FLAIR files given one by one; for folders and manifests use the manifest's columns")
    if len(files) != len(resolved):
        raise InputError(f"{option} is given {len(files)} times for {len(resolved)} FLAIR files; give one per FLAIR file, in order")
    for p in files:
        if not Path(p).is_file():
            raise InputError(f"{p}: {option} file not found")
    named = {"t1_listed": True} if key == "t1" else {}
    return [replace(r, **{key: Path(p).resolve()}, **named) for r, p in zip(resolved, files, strict=True)]


def resolve_inputs(inputs: Sequence[str | Path], t1: Sequence[str | Path] = (),
                   brain_mask: Sequence[str | Path] = ()) -> list[SegmentInput]:
    """Turn the command line's inputs into subjects (no volume is read here).

    Each input is one of:

    - a FLAIR file ``*.nii``/``*.nii.gz``; its subject id is :func:`~wmhkeras.io.naming.subject_id` of it;
    - a manifest CSV (``subject,site,flair,t1,label``, optionally a ``brain_mask`` column);
    - a BIDS dataset root (``sub-<id>[/ses-<id>]/anat/*_FLAIR.nii.gz``, the ``*_T1w`` of the same folder;
      :func:`~wmhkeras.io.bids.read_bids`): subject id ``sub-01_ses-02_acq-3d``;
    - a folder: its ``manifest.csv`` if there is one; else the NIfTI files directly inside it, where our
      outputs (``*_wmh_prob``, ``*_wmh_mask``, ``*_wmh_uncertainty``) are skipped and, if some names end
      with ``FLAIR``, only those are FLAIR images and the file with ``FLAIR`` replaced by ``T1`` is the
      T1; else every file is a FLAIR image; else the MICCAI 2017 layout (``<site>/<subject>/pre/FLAIR.nii.gz``).

    ``t1`` and ``brain_mask``: one file per input, in the inputs' order; only with FLAIR files given
    one by one (manifests carry their own columns).

    Raises:
        InputError: an input path does not exist, no subject is found, a subject id is not a plain name or
            repeats, also in other case (:func:`~wmhkeras.io.subject_ids.check_subject_ids`), or the
            ``t1``/``brain_mask`` lists do not pair with the inputs.
    """
    if not inputs:
        raise InputError("no input given: name FLAIR files, a folder, a BIDS dataset or a manifest CSV")
    resolved = [item for raw in inputs for item in _inputs_of(Path(raw))]
    resolved = _pair_files(resolved, inputs, "--t1", "t1", t1)
    resolved = _pair_files(resolved, inputs, "--brain-mask", "brain_mask", brain_mask)

    check_subject_ids([r.subject for r in resolved], "inputs", [r.flair for r in resolved])
    return resolved


def bids_output(items: Sequence[SegmentInput], requested: Optional[bool] = None) -> bool:
    """Whether the outputs are BIDS derivatives: ``requested``, else (None) when every input came from a BIDS dataset.

    Raises:
        InputError: with BIDS output, two subjects would get the same BIDS name (:func:`~wmhkeras.io.bids.bids_key`).
    """
    bids = all(i.bids_root is not None for i in items) if requested is None else requested
    if bids:
        seen: dict[str, str] = {}
        for item in items:
            key = bids_key(item.subject)
            if key in seen:
                raise InputError(f"subjects {seen[key]!r} and {item.subject!r} both become {key} in BIDS names; "
                                 "rename one or write flat outputs (--flat-out)")
            seen[key] = item.subject
    return bids


def check_input_headers(items: Sequence[SegmentInput], modalities: Sequence[str]) -> None:
    """The header pre-pass of ``segment`` (:func:`wmhkeras.io.header_check.check_inputs`): every subject's
    FLAIR, T1 (when ``modalities`` hold it, or when it was named: a manifest's column, ``--t1``) and brain
    mask parse, are 3D with a usable affine, hold the voxels their headers claim, and lie on the FLAIR's
    grid. No voxel is read. Named T1 images the model does not use are logged (:func:`unused_t1`).

    Raises:
        InputError: one line naming the first file with a problem.
    """
    t1 = "t1" in modalities
    unused_t1([i.subject for i in items if i.t1_listed and not t1], "the model uses FLAIR only")
    check_inputs({i.subject: [i.flair, i.t1 if t1 or i.t1_listed else None, i.brain_mask] for i in items})


def load_subject(item: SegmentInput, modalities: Sequence[str]) -> tuple[list[Volume], Optional[Volume]]:
    """Read and check one subject's volumes: ``(images, brain_mask or None)``, all on the FLAIR grid."""
    images, _ = check_subject(Subject(item.subject, item.site, item.flair, item.t1), modalities)
    brain = None
    if item.brain_mask is not None:
        brain = load_volume(item.brain_mask)
        check_same_grid(images[0], brain)
    return images, brain
