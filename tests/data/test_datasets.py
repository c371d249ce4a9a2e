"""Datasets: manifests (read, write), the MICCAI 2017 layout, images to segment, per-subject checks (commands: tests/cli)."""

import numpy as np
import pytest

from tests.data.helpers import _img
from wmhkeras.data.datasets import Subject, check_subject, discover_miccai, load_dataset, read_manifest, write_manifest
from wmhkeras.errors import InputError


def test_manifest_with_relative_paths_and_optional_columns(tmp_path):
    _img(tmp_path / "a" / "flair.nii.gz")
    _img(tmp_path / "a" / "label.nii.gz", value=0, dtype=np.uint8)
    (tmp_path / "m.csv").write_text("subject,site,flair,t1,label\ns1,siteA,a/flair.nii.gz,,a/label.nii.gz\ns2,,/abs/f.nii.gz,,\n")
    subjects = read_manifest(tmp_path / "m.csv")
    assert subjects[0] == Subject("s1", "siteA", (tmp_path / "a" / "flair.nii.gz").resolve(), None, (tmp_path / "a" / "label.nii.gz").resolve())
    assert subjects[1].site == "site0" and subjects[1].label is None and str(subjects[1].flair) == "/abs/f.nii.gz"
    out = write_manifest(subjects, tmp_path / "copy" / "manifest.csv")
    assert read_manifest(out) == subjects
    assert load_dataset(tmp_path / "copy") == subjects  # a folder holding manifest.csv
    assert "participant" not in out.read_text()  # the optional column only when a subject has one


def test_manifest_participant_column_round_trips(tmp_path):
    (tmp_path / "m.csv").write_text("subject,site,flair,t1,label,participant\n"
                                    "p1-a,s,/f1.nii.gz,,,p1\np1-b,s,/f2.nii.gz,,,p1\np2,s,/f3.nii.gz,,,\n")
    subjects = read_manifest(tmp_path / "m.csv")
    assert [s.participant for s in subjects] == ["p1", "p1", None]
    assert [s.group for s in subjects] == ["p1", "p1", "p2"]
    assert read_manifest(write_manifest(subjects, tmp_path / "copy.csv")) == subjects


def test_manifest_brain_mask_column_round_trips(tmp_path):
    (tmp_path / "m.csv").write_text("subject,site,flair,t1,label,brain_mask\ns1,s,f1.nii.gz,,,b1.nii.gz\ns2,s,/f2.nii.gz,,,\n")
    subjects = read_manifest(tmp_path / "m.csv")
    assert [s.brain_mask for s in subjects] == [(tmp_path / "b1.nii.gz").resolve(), None]
    out = write_manifest(subjects, tmp_path / "copy.csv")
    assert read_manifest(out) == subjects and "brain_mask" in out.read_text().splitlines()[0]
    assert "brain_mask" not in write_manifest([subjects[1]], tmp_path / "one.csv").read_text()


def test_images_to_segment(tmp_path):
    flair = _img(tmp_path / "in" / "a_FLAIR.nii.gz")
    _img(tmp_path / "in" / "a_T1.nii.gz")
    assert load_dataset(flair, labels=False) == [Subject("a", "site0", flair.resolve())]
    assert load_dataset(tmp_path / "in", labels=False) == [Subject("a", "site0", flair.resolve(), (tmp_path / "in" / "a_T1.nii.gz").resolve())]
    with pytest.raises(InputError, match="no manifest.csv and no MICCAI 2017 layout"):
        load_dataset(tmp_path / "in")  # loose images carry no labels: not a dataset to train on
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not a NIfTI file"):
        load_dataset(tmp_path / "notes.txt", labels=False)


@pytest.mark.parametrize(
    "text, message",
    [
        ("subject,flair\ns1,f.nii.gz\n", "header must name the columns subject,site,flair,t1,label"),
        ("subject,site,flair,t1,label\ns1,a,,,\n", "line 2: subject and flair must not be empty"),
        ("subject,site,flair,t1,label\ns1,a,f,,\ns1,b,g,,\n", "subject ids collide .*'s1' is listed twice"),
        ("subject,site,flair,t1,label\n", "lists no subject"),
    ],
)
def test_bad_manifests(tmp_path, text, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(InputError, match=message):
        read_manifest(tmp_path / "m.csv")


def test_miccai_layout_is_discovered(tmp_path):
    for site, subj in [("Utrecht", "0"), ("Utrecht", "2"), ("Singapore", "50")]:
        _img(tmp_path / "training" / site / subj / "pre" / "FLAIR.nii.gz")
        _img(tmp_path / "training" / site / subj / "pre" / "T1.nii.gz")
        _img(tmp_path / "training" / site / subj / "wmh.nii.gz", value=2)
    subjects = load_dataset(tmp_path / "training")
    assert [(s.subject, s.site) for s in subjects] == [("50", "Singapore"), ("0", "Utrecht"), ("2", "Utrecht")]
    assert subjects[0].t1.name == "T1.nii.gz" and subjects[0].label.name == "wmh.nii.gz"
    assert discover_miccai(tmp_path / "empty") == []
    with pytest.raises(InputError, match="no manifest.csv and no MICCAI 2017 layout"):
        load_dataset(tmp_path / "training" / "Utrecht" / "0" / "pre")


def test_check_subject_grids_and_labels(tmp_path):
    flair = _img(tmp_path / "f.nii.gz")
    t1_bad = _img(tmp_path / "t1.nii.gz", shape=(6, 6, 5))
    subject = Subject("s", "a", flair, t1_bad, None)
    images, label = check_subject(subject, ("flair",))
    assert len(images) == 1 and label is None
    with pytest.raises(InputError, match="t1.nii.gz: shape"):
        check_subject(subject, ("flair", "t1"))
    with pytest.raises(InputError, match="no label file is listed"):
        check_subject(subject, ("flair",), need_label=True)
    with pytest.raises(InputError, match="no T1 file is listed"):
        check_subject(Subject("s", "a", flair), ("flair", "t1"))
