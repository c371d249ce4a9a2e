"""BIDS in and out (wmhkeras.io.bids): names, the entries of a tiny dataset, pipeline choice, derivative files."""

import json
import shutil

import pytest
from bids_validator import BIDSValidator

from tests.io.bids_tree import IMAGES, add_pipeline, derivative_name_rules, files_under, make_bids_tree
from wmhkeras import __version__
from wmhkeras.data.datasets import load_dataset
from wmhkeras.errors import InputError
from wmhkeras.io.bids import (
    BidsName,
    DerivativeOutput,
    bids_key,
    bids_location,
    find_masks,
    output_paths,
    parse_name,
    read_bids,
    write_derivative,
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_bids_tree(tmp_path_factory.mktemp("bids") / "ds")


@pytest.fixture
def copy(tree, tmp_path):
    """A copy of the tree that a test may change."""
    return shutil.copytree(tree, tmp_path / "ds")


def test_the_test_tree_is_valid_bids(tree):
    validator = BIDSValidator()
    assert [p for p in files_under(tree) if not validator.is_bids(p)] == []
    assert not validator.is_bids("/sub-01/anat/sub-01_acq-3d_flair.nii.gz")  # the validator does reject


def test_names():
    assert parse_name("sub-01_ses-02_acq-3d_FLAIR.nii.gz") == BidsName(
        (("sub", "01"), ("ses", "02"), ("acq", "3d")), "FLAIR", ".nii.gz")
    assert parse_name("sub-01_ses-02_space-orig_label-WMH_desc-x_mask.nii").key == "sub-01_ses-02"
    for bad in ("FLAIR.nii.gz", "sub-01.nii.gz", "ses-01_sub-01_FLAIR.nii.gz", "sub-01_acq_FLAIR.nii.gz", "sub-0_1_FLAIR.nii"):
        assert parse_name(bad) is None, bad
    assert bids_key("sub-01_ses-02_acq-3d") == "sub-01_ses-02_acq-3d"
    assert bids_key("patient_07") == "sub-patient07" and bids_key("sub01") == "sub-sub01"
    with pytest.raises(InputError, match="no letter or digit"):
        bids_key("__")


def test_output_paths(tmp_path):
    flat = output_paths(tmp_path, "s1", uncertainty=False)
    assert {k: p.name for k, p in flat.items()} == {"prob": "s1_wmh_prob.nii.gz", "mask": "s1_wmh_mask.nii.gz",
                                                     "lesions": "s1_lesions.csv"}
    bids = output_paths(tmp_path, "sub-02_ses-01_acq-3d", bids=True)
    base = "sub-02/ses-01/anat/sub-02_ses-01_acq-3d_space-orig_label-WMH"
    assert {k: p.relative_to(tmp_path).as_posix() for k, p in bids.items()} == {
        "prob": f"{base}_probseg.nii.gz", "mask": f"{base}_mask.nii.gz", "lesions": f"{base}_lesions.csv",
        "uncertainty": f"{base}_desc-uncertainty_probseg.nii.gz"}
    rules = derivative_name_rules()
    for path in [p for k, p in bids.items() if k != "lesions"]:
        assert any(r.match(path.relative_to(tmp_path).as_posix()) for r in rules), path
    assert not any(r.match("sub-01/anat/sub-01_wmh_mask.nii.gz") for r in rules)  # the rules do reject


def test_entries_of_the_tree(tree):
    entries = {e.subject: e for e in read_bids(tree)}
    assert sorted(entries) == sorted(IMAGES)
    one, two, three = (entries[k] for k in ("sub-01_acq-3d", "sub-02_ses-01", "sub-02_ses-02"))
    assert one.flair.relative_to(one.bids_root).as_posix() == "sub-01/anat/sub-01_acq-3d_FLAIR.nii.gz" and one.bids_root == tree.resolve()
    assert one.t1.name == "sub-01_acq-3d_T1w.nii.gz" and two.t1.name == "sub-02_ses-01_T1w.nii.gz"
    assert three.t1.name == "sub-02_ses-02_acq-mprage_T1w.nii.gz"  # the only T1w of its session
    assert one.label.name == "sub-01_acq-3d_label-WMH_mask.nii.gz"
    assert three.label.name == "sub-02_ses-02_space-orig_label-WMH_mask.nii.gz"
    assert (one.site, two.site, three.site) == ("scannerA", "scannerB", "scannerB")
    assert (one.participant, three.participant) == ("sub-01", "sub-02")
    assert all(e.label is None for e in read_bids(tree, labels=False))


def test_load_dataset_gives_subjects(tree):
    subjects = load_dataset(tree)
    assert [s.subject for s in subjects] == ["sub-01_acq-3d", "sub-02_ses-01", "sub-02_ses-02"]
    assert [s.group for s in subjects] == ["sub-01", "sub-02", "sub-02"]  # splits keep sub-02's sessions together
    assert all(s.flair.is_file() and s.t1.is_file() and s.label.is_file() for s in subjects)
    by_pipeline = load_dataset(tree / "derivatives" / "manual")
    assert [s.label for s in by_pipeline] == [s.label for s in subjects]


def test_several_pipelines_need_a_choice(copy):
    add_pipeline(copy, "auto")
    with pytest.raises(InputError, match=r"several derivative pipelines \(auto, manual\).*derivatives/auto"):
        load_dataset(copy)
    assert [e.label for e in read_bids(copy, labels=False)] == [None] * 3  # segmenting needs no labels
    chosen = load_dataset(copy / "derivatives" / "auto")
    assert all("derivatives/auto/" in s.label.as_posix() for s in chosen)
    assert bids_location(copy / "derivatives" / "auto") == (copy.resolve(), (copy / "derivatives" / "auto").resolve())


def test_own_predictions_are_never_labels(copy):
    add_pipeline(copy, "wmhkeras", generated_by="wmhkeras")
    assert all("derivatives/manual/" in s.label.as_posix() for s in load_dataset(copy))
    shutil.rmtree(copy / "derivatives" / "manual")
    assert all(s.label is None for s in load_dataset(copy))
    # named explicitly, a prediction folder is what the user asked for
    assert all("derivatives/wmhkeras/" in s.label.as_posix() for s in load_dataset(copy / "derivatives" / "wmhkeras"))


def test_bad_trees(copy, tmp_path):
    mask = next((copy / "derivatives" / "manual" / "sub-01" / "anat").glob("*mask.nii.gz"))
    shutil.copy(mask, mask.with_name("sub-01_acq-3d_desc-other_label-WMH_mask.nii.gz"))
    with pytest.raises(InputError, match="two WMH masks for sub-01_acq-3d"):
        read_bids(copy)
    (tmp_path / "empty" / "sub-01" / "anat").mkdir(parents=True)
    with pytest.raises(InputError, match="no sub-.*FLAIR.nii\\[.gz\\] image found"):
        read_bids(tmp_path / "empty")
    with pytest.raises(InputError, match="not a BIDS dataset"):
        read_bids(tmp_path / "empty" / "sub-01")
    (tmp_path / "empty" / "derivatives" / "none").mkdir(parents=True)
    with pytest.raises(InputError, match="none: no sub-"):
        read_bids(tmp_path / "empty" / "derivatives" / "none")


def test_t1_is_left_out_when_ambiguous(copy):
    anat = copy / "sub-02" / "ses-02" / "anat"
    shutil.copy(anat / "sub-02_ses-02_acq-mprage_T1w.nii.gz", anat / "sub-02_ses-02_acq-other_T1w.nii.gz")
    entries = {e.subject: e for e in read_bids(copy)}
    assert entries["sub-02_ses-02"].t1 is None and entries["sub-02_ses-01"].t1 is not None


def test_find_masks_keys(tree):
    masks = find_masks(tree / "derivatives" / "manual")
    assert sorted(masks) == sorted(IMAGES)


def test_write_derivative(tree, tmp_path):
    out = tmp_path / "out"
    entry = read_bids(tree, labels=False)[1]
    files = output_paths(out, entry.subject, uncertainty=False, bids=True)
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    flat_flair = tmp_path / "p7_FLAIR.nii.gz"
    flat = {"mask": output_paths(out, "p7", uncertainty=False, bids=True)["mask"]}
    flat["mask"].parent.mkdir(parents=True)
    flat["mask"].write_bytes(b"")
    outputs = [DerivativeOutput(files, entry.flair, entry.bids_root), DerivativeOutput(flat, flat_flair)]
    stale = out / "sub-gone" / "anat" / "sub-gone_space-orig_label-WMH_mask.json"  # its image was removed
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    description = write_derivative(out, outputs, {"source": "m.keras"}, {"threshold": 0.4, "tta_flip": False})
    assert not stale.exists() and files["mask"].with_suffix("").with_suffix(".json").is_file()
    data = json.loads(description.read_text())
    assert data["DatasetType"] == "derivative" and data["BIDSVersion"] and data["Name"]
    assert data["GeneratedBy"][0]["Name"] == "wmhkeras" and data["GeneratedBy"][0]["Version"] == __version__
    assert (out / data["DatasetLinks"]["raw"]).resolve() == tree.resolve()
    mask = json.loads(files["mask"].with_name(files["mask"].name.replace(".nii.gz", ".json")).read_text())
    assert mask["Sources"] == ["bids:raw:sub-02/ses-01/anat/sub-02_ses-01_FLAIR.nii.gz"]
    assert (mask["Type"], mask["Threshold"], mask["Version"], mask["Model"]) == ("Lesion", 0.4, __version__, {"source": "m.keras"})
    flat_mask = json.loads((out / "sub-p7" / "anat" / "sub-p7_space-orig_label-WMH_mask.json").read_text())
    assert flat_mask["Sources"] == [flat_flair.resolve().as_uri()]  # not from a BIDS dataset: a file URI
    assert "Type" not in json.loads(files["prob"].with_name(files["prob"].name.replace(".nii.gz", ".json")).read_text())
    assert (out / ".bidsignore").read_text().splitlines() == ["summary.csv", "segment.json", "*_lesions.csv", "qc/",
                                                                  "qc.html", ".wmhkeras.lock"]
    assert not list(out.rglob(".tmp-*"))
