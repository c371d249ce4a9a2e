"""Thick-slice copies of 1 mm scans: how does a model do on 2D FLAIR of 3 mm slices? (docs/real_data.md)

Many centres acquire 2D FLAIR with axial slices of 3 mm or more. This script makes such a copy of each
subject of a manifest (``subject,site,flair,t1,label``): every ``factor`` consecutive axial slices are
averaged into one (the partial-volume effect of a thick slice; trailing slices that do not fill a group
are dropped), the label becomes lesion where at least half of the averaged voxels were, and the affine
places each thick slice at the centre of the thin slices it averages. The copies and a manifest of them
go to ``--out``; ``wmhkeras segment`` and ``wmhkeras evaluate`` then run on them as on any scan.

    python scripts/thick_slices.py MANIFEST.csv --out runs/thick [--factor 3]

The axial axis must be a voxel axis of the scans (the third for open_ms_data's LAS volumes); oblique
scans are refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wmhkeras.data.datasets import read_manifest, write_manifest  # noqa: E402


def axial_axis(affine: np.ndarray) -> int:
    """The voxel axis along superior-inferior; refuses an oblique grid whose slices are not axial."""
    import nibabel as nib

    codes = nib.aff2axcodes(affine)
    for axis, code in enumerate(codes):
        if code in ("S", "I"):
            column = affine[:3, axis] / np.linalg.norm(affine[:3, axis])
            if abs(abs(column[2]) - 1.0) > 1e-3:
                break
            return axis
    raise SystemExit(f"the grid {''.join(codes)} has no axial voxel axis: thick slices need axial slices")


def thicken(data: np.ndarray, affine: np.ndarray, factor: int, axis: int, label: bool = False):
    """``factor`` consecutive slices along ``axis`` -> one (mean; for a label, at least half), and the
    affine of the thick grid (slice ``k`` centred on thin slices ``k * factor .. k * factor + factor - 1``)."""
    n = data.shape[axis] // factor * factor
    if n == 0:
        raise SystemExit(f"{data.shape[axis]} slices are fewer than the factor {factor}")
    kept = np.take(np.asarray(data, dtype=np.float32), np.arange(n), axis=axis)
    shape = list(kept.shape)
    shape[axis:axis + 1] = [n // factor, factor]
    thick = kept.reshape(shape).mean(axis=axis + 1)
    if label:
        thick = (thick >= 0.5).astype(np.uint8)
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = affine[:3, 3] + affine[:3, axis] * (factor - 1) / 2.0
    out[:3, axis] = affine[:3, axis] * factor
    return thick, out


def main(argv=None) -> int:
    import nibabel as nib

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--factor", type=int, default=3)
    args = parser.parse_args(argv)
    if args.factor < 2:
        raise SystemExit("--factor must be 2 or more")
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for subject in read_manifest(args.manifest):
        folder = args.out / subject.subject
        folder.mkdir(exist_ok=True)
        copies = {}
        for key, is_label in (("flair", False), ("t1", False), ("label", True)):
            source = getattr(subject, key)
            if source is None:
                continue
            image = nib.load(str(source))
            axis = axial_axis(image.affine)
            data, affine = thicken(image.get_fdata(), image.affine, args.factor, axis, label=is_label)
            copies[key] = folder / f"{key}.nii.gz"
            nib.save(nib.Nifti1Image(data if is_label else data.astype(np.float32), affine), str(copies[key]))
        written.append(dataclasses.replace(subject, **{"t1": None, "label": None, **copies}))
    write_manifest(written, args.out / "manifest.csv")
    print(f"{len(written)} subjects with {args.factor}x thicker axial slices: {args.out / 'manifest.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
