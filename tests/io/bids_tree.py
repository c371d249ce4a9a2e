"""A tiny BIDS dataset built by the tests, and the BIDS naming rules to check trees against.

Two participants on two sites: ``sub-01`` with one ``acq-3d`` FLAIR and T1w, ``sub-02`` with two sessions
(``ses-02``'s T1w has another acquisition label, so it is found as the only T1w of its folder); WMH masks
from the pipeline ``derivatives/manual``. Volumes are 32 x 32 x 8 synthetic brains with lesions.
"""

from __future__ import annotations

import json
import re
from itertools import chain
from pathlib import Path

import nibabel as nib
import numpy as np

from wmhkeras.data.synth import make_subject
from wmhkeras.data.synth.sites import SiteParams

#: key -> (folder relative to the root, T1w name stem or None, mask name stem, seed)
IMAGES = {
    "sub-01_acq-3d": ("sub-01/anat", "sub-01_acq-3d_T1w", "sub-01_acq-3d_label-WMH_mask", 1),
    "sub-02_ses-01": ("sub-02/ses-01/anat", "sub-02_ses-01_T1w", "sub-02_ses-01_label-WMH_mask", 2),
    "sub-02_ses-02": ("sub-02/ses-02/anat", "sub-02_ses-02_acq-mprage_T1w", "sub-02_ses-02_space-orig_label-WMH_mask", 3),
}
SITES = {"sub-01": "scannerA", "sub-02": "scannerB"}
TINY_SITE = SiteParams("tiny", (2.0, 2.0, 3.0), (32, 32, 8))


def _save(array, affine, path: Path, dtype) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def add_pipeline(root: Path, name: str, generated_by: str = "manual", masks=None) -> Path:
    """``derivatives/<name>`` with a description and the WMH masks ``{key: array}`` (default: the true labels)."""
    folder = root / "derivatives" / name
    write_json(folder / "dataset_description.json", {"Name": name, "BIDSVersion": "1.10.0",
                                                     "DatasetType": "derivative", "GeneratedBy": [{"Name": generated_by}]})
    for key, (rel, _, mask, seed) in IMAGES.items():
        _, _, label, affine = make_subject(seed, TINY_SITE, lesion_fraction=(0.01, 0.03))
        data = label if masks is None else masks[key]
        _save(data, affine, folder / rel / f"{mask}.nii.gz", np.uint8)
    return folder


def make_bids_tree(root: Path) -> Path:
    """Write the tiny dataset under ``root`` (see the module doc); returns ``root``."""
    write_json(root / "dataset_description.json", {"Name": "tiny", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    (root / "participants.tsv").write_text("participant_id\tsite\n" + "".join(f"{p}\t{s}\n" for p, s in SITES.items()))
    for key, (rel, t1, _, seed) in IMAGES.items():
        flair, t1_data, _, affine = make_subject(seed, TINY_SITE, lesion_fraction=(0.01, 0.03))
        _save(flair, affine, root / rel / f"{key}_FLAIR.nii.gz", np.float32)
        write_json(root / rel / f"{key}_FLAIR.json", {"MagneticFieldStrength": 3})
        _save(t1_data, affine, root / rel / f"{t1}.nii.gz", np.float32)
    add_pipeline(root, "manual")
    return root


def files_under(root: Path) -> list[str]:
    """Every file under ``root`` as ``/relative/path`` (the form BIDS validators take)."""
    return sorted("/" + p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def derivative_name_rules() -> list[re.Pattern]:
    """The BIDS schema's file rules for derivative datasets (and the files common to every dataset)."""
    import bidsschematools.rules
    import bidsschematools.schema

    schema = bidsschematools.schema.load_schema()
    groups = (schema.rules.files.common, schema.rules.files.deriv)
    rules = chain.from_iterable(bidsschematools.rules.regexify_filename_rules(g, schema, level=2) for g in groups)
    return [re.compile(rule["regex"]) for rule in rules]
