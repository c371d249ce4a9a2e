"""The cohort check before training (:mod:`wmhkeras.training.cohort`): refused cohorts, one reader."""

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wmhkeras.data import datasets
from wmhkeras.data.datasets import Subject
from wmhkeras.errors import InputError
from wmhkeras.io.run_folder import Split
from wmhkeras.training.cohort import check_cohort
from wmhkeras.training.pipeline import build_datasets

from .helpers import SPLIT, make_cfg


def copy_subject(subject: Subject, folder: Path) -> Subject:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("flair", "label"):
        paths[name] = folder / Path(getattr(subject, name)).name
        shutil.copy(getattr(subject, name), paths[name])
    return Subject(subject.subject, subject.site, paths["flair"], None, paths["label"])


def test_cohort_without_lesion_is_refused(cohort, tmp_path):
    subjects = [copy_subject(s, tmp_path / s.subject) for s in cohort[:2]]
    for s in subjects:
        img = nib.load(s.label)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), s.label)
    split = Split(train=(subjects[0].subject,), validation=(subjects[1].subject,))
    with pytest.raises(InputError, match="training subjects contain no lesion voxel"):
        build_datasets(make_cfg(), subjects, split)


def test_bad_files_are_refused_before_training(cohort, tmp_path):
    good = copy_subject(cohort[0], tmp_path / "good")
    broken = copy_subject(cohort[1], tmp_path / "broken")
    data = broken.flair.read_bytes()
    broken.flair.write_bytes(gzip.compress(gzip.decompress(data)[: len(data) // 3]))
    split = Split(train=(good.subject, broken.subject))
    with pytest.raises(InputError, match="truncated|not a readable"):
        check_cohort(make_cfg(), [good, broken], split)

    img = nib.load(good.label)  # a label one slice short of the FLAIR's grid
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :-1], img.affine), tmp_path / "short.nii.gz")
    mismatched = Subject(good.subject, good.site, good.flair, None, tmp_path / "short.nii.gz")
    with pytest.raises(InputError, match="shape .* differs"):
        check_cohort(make_cfg(), [mismatched], Split(train=(good.subject,)))
    unlabelled = Subject(good.subject, good.site, good.flair, None, None)
    with pytest.raises(InputError, match="no label file"):
        check_cohort(make_cfg(), [unlabelled], Split(train=(good.subject,)))
    with pytest.raises(InputError, match="not in the dataset"):  # a mapping of id lists is checked too
        check_cohort(make_cfg(), [good], {"train": [good.subject, "ghost"], "validation": [], "holdout": []})


def test_check_subject_is_the_reader(monkeypatch, cohort):
    """Every volume goes through datasets.check_subject (one reader, one set of checks)."""
    calls = []
    real_check = datasets.check_subject

    def spy(subject, *args, **kwargs):
        calls.append(subject.subject)
        return real_check(subject, *args, **kwargs)

    monkeypatch.setattr("wmhkeras.training.cohort.check_subject", spy)
    check_cohort(make_cfg(), cohort, SPLIT)
    assert sorted(calls) == sorted(SPLIT.train + SPLIT.validation)
