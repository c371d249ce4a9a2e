"""Print how closely segmentations of the same subjects agree (used by scripts/demo.sh).

Usage: python scripts/compare_masks.py REFERENCE_DIR OTHER_DIR...  (folders written by wmhkeras segment)
"""

import sys
from pathlib import Path

import numpy as np

from wmhkeras.evaluation.metrics import dice
from wmhkeras.io import load_volume


def main(reference: str, *others: str) -> None:
    print(f"{'output':<40} {'subject':<10} {'max |prob diff|':>16} {'mask Dice':>10}")
    for other in others:
        for prob in sorted(Path(other).glob("*_wmh_prob.nii.gz")):
            subject = prob.name[: -len("_wmh_prob.nii.gz")]
            ref_prob = load_volume(Path(reference) / prob.name, kind="mask").data
            ref_mask = load_volume(Path(reference) / f"{subject}_wmh_mask.nii.gz", kind="mask").data
            mask = load_volume(Path(other) / f"{subject}_wmh_mask.nii.gz", kind="mask").data
            diff = float(np.abs(load_volume(prob, kind="mask").data - ref_prob).max())
            same = 1.0 if not ref_mask.any() and not mask.any() else dice(ref_mask, mask)
            print(f"{other:<40} {subject:<10} {diff:>16.2e} {same:>10.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
