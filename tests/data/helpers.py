"""Helpers shared by the data tests: a small NIfTI file."""

import nibabel as nib
import numpy as np


def _img(path, shape=(6, 6, 4), value=1.0, affine=None, dtype=np.float32):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.full(shape, value, dtype=dtype)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path
