"""A montage of painted lesions beside real ones, for a person to judge (docs/real_data.md).

Fits the contrast model of :mod:`wmhkeras.training.lesion_synthesis` to the lesions of the two
open_ms_data patients, paints donor masks of ``lesion_masks_mni/`` into a patient's FLAIR, and writes
one PNG: the top row shows axial slices of the real scans at their real lesions, the rows below
painted slices; each image twice, plain and with the lesion outlined (red: real, yellow: painted).

    python scripts/lesion_synthesis_montage.py --out docs/images/lesion_synthesis.png

The data folder comes from ``--data``, else ``$WMH_SHARED_DATA/open_ms_data``, else
``../shared/data/open_ms_data`` beside the repository; the scans are read in place.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from wmhkeras.io import load_volume
from wmhkeras.training import lesion_synthesis as ls

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data_protocol import PATIENTS, data_folder  # noqa: E402


def lesion_slices(mask: np.ndarray, n: int) -> list[int]:
    """``n`` axial slices spread over the ones holding the most lesion voxels."""
    counts = mask.sum(axis=(0, 1))
    ranked = [int(z) for z in np.argsort(-counts, kind="stable") if counts[z] > 0]
    picked: list[int] = []
    for z in ranked:
        if all(abs(z - p) >= 6 for p in picked):
            picked.append(z)
        if len(picked) == n:
            break
    return picked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="the open_ms_data folder")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--donors", nargs="+", default=["patient13", "patient22", "patient02"],
                        help="donor masks of lesion_masks_mni/ to paint (default: a heavy, a medium, a light load)")
    parser.add_argument("--into", default="patient07", choices=PATIENTS, help="the scan painted into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dpi", type=int, default=80)
    args = parser.parse_args()
    data = data_folder(parser, args.data)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scans = {}
    contrasts = []
    for patient in PATIENTS:
        flair = load_volume(data / patient / "FLAIR.nii.gz")
        lesion = load_volume(data / patient / "GOLD_STANDARD.nii.gz", kind="label").data == 1
        scans[patient] = (flair, lesion)
        contrasts.append(ls.lesion_contrasts(flair.data, lesion, ls.brain_mask(flair.data))[0])
    model = ls.fit_contrast_model(np.concatenate(contrasts))

    rows = [[(f"real {p} z={z}", scans[p][0].data[..., z], scans[p][1][..., z], "red")
             for p in PATIENTS for z in lesion_slices(scans[p][1], 2)]]
    flair, lesion = scans[args.into]
    for i, name in enumerate(args.donors):
        donor = ls.donor_on_grid(nib.load(str(data / "lesion_masks_mni" / f"{name}.nii.gz")), flair)
        painted_flair, painted, drawn = ls.paint(flair.data, lesion, donor, model,
                                                 np.random.default_rng([args.seed, i]))
        rows.append([(f"{name} painted into {args.into} z={z}", painted_flair[..., z], painted[..., z], "yellow")
                     for z in lesion_slices(painted, 4)])

    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(2 * len(rows), cols, figsize=(2.6 * cols, 2.9 * 2 * len(rows)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, row in enumerate(rows):
        for c, (title, image, mask, colour) in enumerate(row):
            view = np.rot90(image)  # canonical RAS: anterior up
            low, high = np.percentile(image[image > 0], [1, 99.5]) if (image > 0).any() else (0, 1)
            for k, outlined in enumerate((False, True)):
                ax = axes[2 * r + k, c]
                ax.imshow(view, cmap="gray", vmin=low, vmax=high)
                if outlined:
                    ax.contour(np.rot90(mask.astype(float)), levels=[0.5], colors=colour, linewidths=0.6)
                ax.set_title(title if not outlined else "outlined", fontsize=7)
    fig.suptitle(f"Real lesions (red) and painted lesions (yellow). Contrast model: mean {model.mean:.2f}, "
                 f"SD {model.sd:.2f}, range {model.low:.2f}-{model.high:.2f} brain SD, from "
                 f"{model.n_lesions} real lesions", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
