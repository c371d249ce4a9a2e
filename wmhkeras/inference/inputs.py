"""The subjects to segment: command-line inputs read by :func:`~wmhkeras.data.datasets.load_dataset` with
``--t1``/``--brain-mask`` paired on top (:func:`resolve_inputs`), and each subject's volumes read and
checked (:func:`load_subject`). No TensorFlow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Optional

from wmhkeras.data.datasets import check_subject, load_dataset, unused_t1
from wmhkeras.errors import InputError
from wmhkeras.io import Volume, check_same_grid, load_volume
from wmhkeras.io.bids import bids_key
from wmhkeras.io.header_check import check_inputs
from wmhkeras.io.naming import is_nifti
from wmhkeras.io.subject import Subject
from wmhkeras.io.subject_ids import check_subject_ids


def as_list(value: Sequence[str | Path] | str | Path | None) -> list:
    """A path option given once, many times or not at all, as a list."""
    return [] if value is None else [value] if isinstance(value, (str, Path)) else list(value)


def _pair_files(resolved: list[Subject], inputs: Sequence[str | Path], option: str, key: str,
                files: Sequence[str | Path]) -> list[Subject]:
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
                   brain_mask: Sequence[str | Path] = ()) -> list[Subject]:
    """Turn the command line's inputs into subjects (no volume is read here).

    Each input is a dataset as :func:`~wmhkeras.data.datasets.load_dataset` reads the images to segment
    (``labels=False``):

    - a FLAIR file ``*.nii``/``*.nii.gz``; its subject id is :func:`~wmhkeras.io.naming.subject_id` of it;
    - a manifest CSV (``subject,site,flair,t1,label``, optionally a ``brain_mask`` column);
    - a BIDS dataset root (``sub-<id>[/ses-<id>]/anat/*_FLAIR.nii.gz``, the ``*_T1w`` of the same folder;
      :func:`~wmhkeras.io.bids.read_bids`): subject id ``sub-01_ses-02_acq-3d``;
    - a folder: its ``manifest.csv`` if there is one; else the NIfTI files directly inside it
      (:func:`~wmhkeras.data.datasets.read_images`: ``segment``'s outputs skipped, the ``FLAIR``-named files
      with their ``T1`` when some names end with ``FLAIR``, else every file); else the MICCAI 2017 layout
      (``<site>/<subject>/pre/FLAIR.nii.gz``).

    ``t1`` and ``brain_mask``: one file per input, in the inputs' order; only with FLAIR files given
    one by one (manifests carry their own columns).

    Raises:
        InputError: an input path does not exist, no subject is found, a subject id is not a plain name or
            repeats, also in other case (:func:`~wmhkeras.io.subject_ids.check_subject_ids`), or the
            ``t1``/``brain_mask`` lists do not pair with the inputs.
    """
    if not inputs:
        raise InputError("no input given: name FLAIR files, a folder, a BIDS dataset or a manifest CSV")
    resolved: list[Subject] = []
    for raw in inputs:
        if not Path(raw).exists():
            raise InputError(f"{Path(raw)}: input not found")
        resolved += load_dataset(raw, labels=False)
    resolved = _pair_files(resolved, inputs, "--t1", "t1", t1)
    resolved = _pair_files(resolved, inputs, "--brain-mask", "brain_mask", brain_mask)

    check_subject_ids([r.subject for r in resolved], "inputs", [r.flair for r in resolved])
    return resolved


def bids_output(items: Sequence[Subject], requested: Optional[bool] = None) -> bool:
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


def check_input_headers(items: Sequence[Subject], modalities: Sequence[str]) -> None:
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


def load_subject(item: Subject, modalities: Sequence[str]) -> tuple[list[Volume], Optional[Volume]]:
    """Read and check one subject's volumes: ``(images, brain_mask or None)``, all on the FLAIR grid."""
    images, _ = check_subject(replace(item, label=None), modalities)
    brain = None
    if item.brain_mask is not None:
        brain = load_volume(item.brain_mask)
        check_same_grid(images[0], brain)
    return images, brain
