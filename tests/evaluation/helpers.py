"""Helpers shared by the evaluation tests: a two-subject cohort with truth and predictions, NIfTI writing."""

import nibabel as nib
import numpy as np

SHAPE = (20, 20, 6)
AFFINE = np.diag([1.0, 1.0, 3.0, 1.0])


def _write(path, data, affine=AFFINE, dtype=np.uint8):
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def _cohort(root):
    """Two subjects (sites A, B) with FLAIR, truth and `wmhkeras segment`-style predictions.

    s1 truth: a 2x2 block (4 voxels) + a lone voxel, and one label-2 voxel. s1 prediction: the block
    widened to 2x3 (6 voxels) + the label-2 voxel (ignored). By hand: Dice = 2*4 / (5 + 6) = 8/11,
    AVD = |5 - 6| / 5 = 20 %, lesion recall 1/2, lesion precision 1, lesion F1 = 2/3.
    s2: prediction equals truth: Dice 1, HD95 0, AVD 0, recall 1, F1 1.
    """
    data, seg = root / "data", root / "seg"
    data.mkdir()
    seg.mkdir()
    t1 = np.zeros(SHAPE)
    t1[5:7, 5:7, 2] = 1
    t1[15, 15, 4] = 1
    t1[10, 10, 1] = 2
    p1 = np.zeros(SHAPE)
    p1[5:7, 5:8, 2] = 1
    p1[10, 10, 1] = 1
    t2 = np.zeros(SHAPE)
    t2[3:8, 10:14, 1:4] = 1
    rng = np.random.default_rng(0)
    rows = []
    for name, site, truth, pred in (("s1", "A", t1, p1), ("s2", "B", t2, t2)):
        _write(data / f"{name}_FLAIR.nii.gz", rng.random(SHAPE) + truth, dtype=np.float32)
        _write(data / f"{name}_wmh.nii.gz", truth)
        _write(seg / f"{name}_wmh_mask.nii.gz", pred)
        _write(seg / f"{name}_wmh_prob.nii.gz", pred * 0.9, dtype=np.float32)
        rows.append(f"{name},{site},{name}_FLAIR.nii.gz,,{name}_wmh.nii.gz")
    (data / "manifest.csv").write_text("subject,site,flair,t1,label\n" + "\n".join(rows) + "\n")
    return data, seg
