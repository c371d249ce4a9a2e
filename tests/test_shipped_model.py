"""The shipped real-data model, saved_models/open_ms_flair (issue 11): its size, and that it segments a
real shared patient through the command a new user runs first, with no training."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from wmhkeras.cli.main import main

SHIPPED = Path(__file__).resolve().parents[1] / "saved_models" / "open_ms_flair"
#: The size limit of the shipped folder (SavedModel, fp16 TFLite, card): 25 MB, decimal.
MAX_BYTES = 25_000_000


def test_the_shipped_model_is_complete_and_small():
    files = {p.relative_to(SHIPPED).as_posix(): p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file()}
    assert {"model_card.json", "export_report.json", "saved_model/saved_model.pb",
            "saved_model/assets.extra/model_card.json", "tflite/model_fp16.tflite"} <= set(files)
    assert sum(files.values()) <= MAX_BYTES, f"{sum(files.values())} bytes"


@pytest.mark.slow
def test_the_shipped_model_segments_a_real_patient(open_ms, tmp_path):
    """README's first real-data example on patient 26 (one of the two training patients: this checks that
    the shipped weights and their preprocessing travel intact, not how well they generalise, which
    docs/real_data.md measures on the patient left out)."""
    flair = open_ms / "patient26" / "FLAIR.nii.gz"
    result = CliRunner().invoke(main, ["segment", "open_ms_flair", str(flair), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "segment.json").read_text())["model"]["source"] == str(SHIPPED / "saved_model")
    mask_img = nib.load(tmp_path / "patient26_wmh_mask.nii.gz")
    source = nib.load(flair)
    assert mask_img.shape == source.shape and np.allclose(mask_img.affine, source.affine)
    mask = np.asarray(mask_img.dataobj) > 0
    truth = np.asarray(nib.load(open_ms / "patient26" / "GOLD_STANDARD.nii.gz").dataobj) > 0
    dice = 2 * np.count_nonzero(mask & truth) / (np.count_nonzero(mask) + np.count_nonzero(truth))
    assert dice > 0.5, dice
