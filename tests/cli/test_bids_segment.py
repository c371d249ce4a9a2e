"""BIDS through the CLI: ``segment`` on a BIDS root writes a valid BIDS derivative, ``evaluate`` matches
BIDS-derivative predictions to BIDS truth by their entities."""

import csv
import fnmatch
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from bids_validator import BIDSValidator
from click.testing import CliRunner

from tests.inference.helpers import tiny_model_file
from tests.io.bids_tree import IMAGES, derivative_name_rules, files_under, make_bids_tree
from wmhkeras import __version__
from wmhkeras.cli.main import main
from wmhkeras.data.datasets import load_dataset

KEYS = sorted(IMAGES)


def ignored(path: str, patterns) -> bool:
    """Whether a ``.bidsignore`` pattern covers ``path`` (``dir/`` covers a folder; others match the name)."""
    return any(path.startswith(p) if p.endswith("/") else fnmatch.fnmatch(path.split("/")[-1], p) for p in patterns)


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """The tiny tree, segmented with a tiny model into its own ``derivatives/wmhkeras`` (the usual place)."""
    root = make_bids_tree(tmp_path_factory.mktemp("bids") / "ds")
    model = tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.keras")
    out = root / "derivatives" / "wmhkeras"
    result = CliRunner().invoke(main, ["segment", str(model), str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return root, out, model


def test_segment_writes_a_valid_bids_derivative(segmented):
    root, out, _ = segmented
    found = [p[1:] for p in files_under(out)]
    patterns = (out / ".bidsignore").read_text().split()
    bids_files = [p for p in found if not ignored(p, patterns)]
    rules = derivative_name_rules()
    assert [p for p in bids_files if not any(r.match(p) for r in rules)] == [".bidsignore"]
    expected = {"dataset_description.json", ".bidsignore", "summary.csv", "segment.json"}
    for key, (rel, *_rest) in IMAGES.items():
        base = f"{rel}/{key}_space-orig_label-WMH"
        expected |= {f"{base}_{end}" for end in ("probseg.nii.gz", "probseg.json", "mask.nii.gz", "mask.json", "lesions.csv")}
    assert set(found) == expected
    # the raw dataset with its derivatives is still valid BIDS
    assert [p for p in files_under(root) if not BIDSValidator().is_bids(p)] == []


def test_outputs_lie_on_the_source_grid_and_say_where_they_come_from(segmented):
    root, out, model = segmented
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    assert description["GeneratedBy"][0] == {"Name": "wmhkeras", "Version": __version__,
                                             "Description": description["GeneratedBy"][0]["Description"]}
    assert description["DatasetLinks"] == {"raw": "../.."}
    for key, (rel, *_rest) in IMAGES.items():
        flair = nib.load(root / rel / f"{key}_FLAIR.nii.gz")
        mask = nib.load(out / rel / f"{key}_space-orig_label-WMH_mask.nii.gz")
        np.testing.assert_array_equal(mask.affine, flair.affine)
        assert mask.shape == flair.shape and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
        sidecar = json.loads((out / rel / f"{key}_space-orig_label-WMH_mask.json").read_text())
        assert sidecar["Sources"] == [f"bids:raw:{rel}/{key}_FLAIR.nii.gz"]
        assert (out / description["DatasetLinks"]["raw"] / sidecar["Sources"][0][len("bids:raw:"):]).is_file()
        assert sidecar["Model"]["source"] == str(model.resolve()) and sidecar["Version"] == __version__
        assert sidecar["Threshold"] == 0.5 and sidecar["Type"] == "Lesion"
    assert [r["subject"] for r in rows(out / "summary.csv")] == KEYS
    assert json.loads((out / "segment.json").read_text())["settings"]["bids_out"] is True
    # wmhkeras' own derivative beside the manual one: still read as predictions, never as labels
    assert all("derivatives/manual/" in s.label.as_posix() for s in load_dataset(root))


def test_flat_out_and_bids_out_override_the_default(segmented, tmp_path):
    root, _, model = segmented
    flat = CliRunner().invoke(main, ["segment", str(model), str(root), "--out", str(tmp_path / "flat"), "--flat-out"])
    assert flat.exit_code == 0, flat.output
    assert sorted(p.name for p in (tmp_path / "flat").glob("*_wmh_mask.nii.gz")) == [f"{k}_wmh_mask.nii.gz" for k in KEYS]
    assert not (tmp_path / "flat" / "dataset_description.json").exists()
    one = root / "sub-01" / "anat" / "sub-01_acq-3d_FLAIR.nii.gz"
    shutil.copy(one, tmp_path / "p7_FLAIR.nii.gz")
    bids = CliRunner().invoke(main, ["segment", str(model), str(tmp_path / "p7_FLAIR.nii.gz"), "--out", str(tmp_path / "b"),
                                     "--bids-out"])
    assert bids.exit_code == 0, bids.output
    sidecar = json.loads((tmp_path / "b" / "sub-p7" / "anat" / "sub-p7_space-orig_label-WMH_mask.json").read_text())
    assert sidecar["Sources"] == [(tmp_path / "p7_FLAIR.nii.gz").resolve().as_uri()]
    assert "DatasetLinks" not in json.loads((tmp_path / "b" / "dataset_description.json").read_text())


def test_evaluate_matches_bids_predictions_to_bids_truth(segmented, tmp_path):
    root, out, _ = segmented
    for truth in (root, root / "derivatives" / "manual"):
        result = CliRunner().invoke(main, ["evaluate", "--pred", str(out), "--truth", str(truth),
                                           "--out", str(tmp_path / truth.name), "--no-qc"])
        assert result.exit_code == 0, result.output
        assert sorted(r["subject"] for r in rows(tmp_path / truth.name / "metrics.csv")) == KEYS


def test_evaluate_pairs_by_entities(segmented, tmp_path):
    """Predictions with known overlap: each key's Dice is the hand-computed one only if pairs are right."""
    root, _, _ = segmented
    manual = root / "derivatives" / "manual"
    truth = {k: np.asarray(nib.load(next(manual.glob(f"sub-*/**/{k}_*mask.nii.gz"))).dataobj) for k in KEYS}
    affine = nib.load(next(manual.glob("sub-01/anat/*.nii.gz"))).affine
    preds = {"sub-01_acq-3d": truth["sub-01_acq-3d"], "sub-02_ses-01": truth["sub-02_ses-02"],
             "sub-02_ses-02": np.zeros_like(truth["sub-02_ses-02"])}
    pred_dir = tmp_path / "pred"
    for key, (rel, *_rest) in IMAGES.items():
        (pred_dir / rel).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(preds[key].astype(np.uint8), affine), pred_dir / rel / f"{key}_label-WMH_mask.nii.gz")
    result = CliRunner().invoke(main, ["evaluate", "--pred", str(pred_dir), "--truth", str(root),
                                       "--out", str(tmp_path / "ev"), "--no-qc"])
    assert result.exit_code == 0, result.output
    dice = {r["subject"]: float(r["dice"]) for r in rows(tmp_path / "ev" / "metrics.csv")}
    a, b = truth["sub-02_ses-01"] == 1, truth["sub-02_ses-02"] == 1
    assert dice["sub-01_acq-3d"] == 1.0 and dice["sub-02_ses-02"] == 0.0
    assert dice["sub-02_ses-01"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-6)
    assert 0 < dice["sub-02_ses-01"] < 1


# === BIDS output in long batch runs: --skip-existing, --shard and summarize ===


def _files(out):
    """``{path: (modification time, bytes)}`` of the subjects' output files (everything under ``sub-*``)."""
    return {p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in out.glob("sub-*/**/*") if p.is_file()}


def test_skip_existing_with_bids_output_redoes_only_the_missing_subject(segmented, tmp_path):
    root, full, model = segmented
    out = tmp_path / "deriv"
    assert CliRunner().invoke(main, ["segment", str(model), str(root), "--out", str(out)]).exit_code == 0
    before = _files(out)
    redo = "sub-02/ses-01/anat/sub-02_ses-01_space-orig_label-WMH"
    (out / f"{redo}_mask.nii.gz").unlink()
    again = CliRunner().invoke(main, ["segment", str(model), str(root), "--out", str(out), "--skip-existing"])
    assert again.exit_code == 0, again.output
    assert "(2 kept from an earlier run)" in again.output
    after = _files(out)
    assert after.keys() == before.keys()
    # the missing subject is segmented again: its images and table are new files (the same content)
    redone = sorted(name for name in after if after[name][0] != before[name][0] and not name.endswith(".json"))
    assert redone == [f"{redo}_{end}" for end in ("lesions.csv", "mask.nii.gz", "probseg.nii.gz")]
    # the others' images and tables are untouched; every sidecar (all rewritten at the end) says the same
    assert all(after[name][1] == before[name][1] for name in after if not name.startswith(redo))
    assert (out / "summary.csv").read_bytes() == (full / "summary.csv").read_bytes()  # one run's table
    assert json.loads((out / "segment.json").read_text())["settings"]["bids_out"] is True


def test_bids_shards_and_summarize_give_one_runs_table(segmented, tmp_path):
    root, full, model = segmented
    shards = [tmp_path / f"shard{i}" for i in (1, 2)]
    for i, out in enumerate(shards, start=1):
        res = CliRunner().invoke(main, ["segment", str(model), str(root), "--out", str(out), "--shard", f"{i}/2"])
        assert res.exit_code == 0, res.output
    assert [r["subject"] for r in rows(shards[0] / "summary.csv")] == ["sub-01_acq-3d", "sub-02_ses-02"]
    assert [r["subject"] for r in rows(shards[1] / "summary.csv")] == ["sub-02_ses-01"]
    # each shard is a BIDS derivative holding its own subjects, under their BIDS names
    for out in shards:
        assert (out / "dataset_description.json").is_file()
        for r in rows(out / "summary.csv"):
            rel = IMAGES[r["subject"]][0]
            assert (out / rel / f"{r['subject']}_space-orig_label-WMH_mask.nii.gz").is_file()
    res = CliRunner().invoke(main, ["summarize", *map(str, shards), "--out", str(tmp_path / "all.csv")])
    assert res.exit_code == 0, res.output
    assert "3 subjects from 2 summaries" in res.output
    assert (tmp_path / "all.csv").read_bytes() == (full / "summary.csv").read_bytes()
