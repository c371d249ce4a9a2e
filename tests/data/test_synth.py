"""Tests of the synthetic cohort generator (wmhkeras.data.synth): tiny cohorts of 2-4 subjects."""

import csv

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from wmhkeras.data import synth
from wmhkeras.data.datasets import MANIFEST_COLUMNS
from wmhkeras.errors import ConfigError

SEED = 7
SITE1, SITE2, SITE3 = synth.SITE_PRESETS


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four subjects on three sites (sub-004 is the second subject of site1)."""
    return synth.make_cohort(tmp_path_factory.mktemp("cohort"), subjects=4, sites=3, seed=SEED)


def _manifest_rows(summary):
    with open(summary.manifest, newline="") as f:
        return list(csv.reader(f))


def _load(summary, row, column):
    return nib.load(summary.manifest.parent / row[MANIFEST_COLUMNS.index(column)])


def test_manifest_header_and_relative_paths_resolve(cohort):
    rows = _manifest_rows(cohort)
    assert tuple(rows[0]) == ("subject", "site", "flair", "t1", "label")
    assert [r[:2] for r in rows[1:]] == [
        ["sub-001", "site1"],
        ["sub-002", "site2"],
        ["sub-003", "site3"],
        ["sub-004", "site1"],
    ]
    assert rows[3][2] == "site3/sub-003/FLAIR.nii.gz"
    for row in rows[1:]:
        for path in row[2:]:
            assert not path.startswith("/") and (cohort.manifest.parent / path).is_file()
    # no temporary files left behind by the atomic writes
    assert not list(cohort.manifest.parent.rglob(".tmp-*"))


def test_files_have_dtypes_and_ras_affine_in_qform_and_sform(cohort):
    row = _manifest_rows(cohort)[3]  # site3: 0.9 x 0.9 x 2.5 mm
    flair, t1, label = (_load(cohort, row, c) for c in ("flair", "t1", "label"))
    assert flair.get_data_dtype() == np.float32 and t1.get_data_dtype() == np.float32
    assert label.get_data_dtype() == np.uint8
    for img in (flair, t1, label):
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-5)
        np.testing.assert_allclose(img.header.get_zooms(), (0.9, 0.9, 2.5), atol=1e-6)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert img.shape == SITE3.shape
    # the grid centre is the world origin
    centre = (np.array(SITE3.shape) - 1) / 2
    np.testing.assert_allclose(nib.affines.apply_affine(flair.affine, centre), 0.0, atol=1e-5)


def test_lesion_fraction_within_range_and_labels_binary(cohort):
    low, high = synth.DEFAULT_LESION_FRACTION
    for row, record in zip(_manifest_rows(cohort)[1:], cohort.subjects, strict=True):
        label = np.asarray(_load(cohort, row, "label").dataobj)
        assert set(np.unique(label)) <= {0, 1}
        fraction = float((label == 1).mean())
        assert low <= fraction <= high
        assert fraction == pytest.approx(record.lesion_fraction)
        assert record.lesion_voxels == int(label.sum()) and record.lesion_count >= 1


@pytest.mark.parametrize("fraction", [(0.002, 0.0021), (0.0001, 0.00015), (0.009, 0.01)])
def test_lesion_fraction_holds_for_narrow_ranges(fraction):
    for seed in (1, 2):
        _, _, label, _ = synth.make_subject(seed, SITE2, lesion_fraction=fraction)
        assert fraction[0] <= (label == 1).mean() <= fraction[1]


def test_sites_differ_in_grid_and_intensities(cohort):
    assert {r.site: (r.shape, r.voxel_size) for r in cohort.subjects} == {
        s.name: (s.shape, s.voxel_size) for s in (SITE1, SITE2, SITE3)
    }
    # Scanner gain: the white matter level (median of the brightest half of the head) differs by site.
    levels = {}
    for row in _manifest_rows(cohort)[1:4]:
        flair = np.asarray(_load(cohort, row, "flair").dataobj)
        head = flair[flair > np.percentile(flair, 60)]
        levels[row[1]] = float(np.median(head))
    values = sorted(levels.values())
    assert values[1] > 1.5 * values[0] and values[2] > 1.5 * values[1]


def test_same_seed_same_volumes_different_seed_differs():
    a = synth.make_subject(3, SITE2)
    b = synth.make_subject(np.random.default_rng(3), SITE2)
    c = synth.make_subject(4, SITE2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[2], c[2])


def test_subject_does_not_depend_on_cohort_size(cohort, tmp_path):
    small = synth.make_cohort(tmp_path, subjects=2, sites=3, seed=SEED)
    big_rows, small_rows = _manifest_rows(cohort), _manifest_rows(small)
    assert big_rows[: len(small_rows)] == small_rows
    for row in small_rows[1:]:
        for column in ("flair", "label"):
            np.testing.assert_array_equal(
                np.asarray(_load(small, row, column).dataobj), np.asarray(_load(cohort, row, column).dataobj)
            )
    other = synth.make_subject(np.random.SeedSequence(SEED + 1, spawn_key=(0,)), SITE1)[0]
    assert not np.array_equal(other, np.asarray(_load(cohort, big_rows[1], "flair").dataobj))


def test_lesions_in_white_matter_bright_on_flair_dark_on_t1():
    flair, t1, label, _, tissue = synth.make_subject(11, SITE1, lesion_fraction=(0.003, 0.006), return_tissue=True)
    lesion = label == 1
    assert np.all(tissue[lesion] == synth.Tissue.WM)
    # compare with white matter away from lesions (partial volume blurs the lesion border)
    wm = (tissue == synth.Tissue.WM) & ~ndimage.binary_dilation(lesion, iterations=2)
    assert np.median(flair[lesion]) > 1.15 * np.median(flair[wm])
    assert np.median(t1[lesion]) < 0.95 * np.median(t1[wm])
    # FLAIR contrast: CSF dark, grey matter slightly brighter than white matter; T1: grey matter darker
    csf = ndimage.binary_erosion(tissue == synth.Tissue.VENTRICLE)
    assert np.median(flair[csf]) < 0.4 * np.median(flair[wm])
    assert np.median(t1[ndimage.binary_erosion(tissue == synth.Tissue.GM)]) < np.median(t1[wm])


def test_lesions_are_periventricular_and_deep():
    _, _, label, affine, tissue = synth.make_subject(5, SITE1, lesion_fraction=(0.002, 0.004), return_tissue=True)
    vox = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    d_vent = ndimage.distance_transform_edt(tissue != synth.Tissue.VENTRICLE, sampling=vox)
    components, n = ndimage.label(label == 1, structure=np.ones((3, 3, 3)))
    nearest = ndimage.minimum(d_vent, components, index=np.arange(1, n + 1))
    assert np.any(nearest <= 1.5)  # caps and bands touch the ventricles
    assert np.sum(nearest > 6.0) >= 2  # deep white matter foci
    sizes = np.bincount(components.ravel())[1:]
    assert sizes.min() <= 10  # some punctate lesions


def test_other_pathology_label_is_optional():
    _, _, label, _ = synth.make_subject(2, SITE3)
    assert not np.any(label == 2)
    _, _, label, _ = synth.make_subject(2, SITE3, other_pathology=2)
    assert set(np.unique(label)) == {0, 1, 2} and label.dtype == np.uint8
    assert 1 <= np.sum(label == 2) <= 200


def test_lesion_free_subject():
    _, _, label, _ = synth.make_subject(0, SITE1, lesion_fraction=(0, 0))
    assert not label.any()


def test_extra_sites_are_fixed_and_within_bounds():
    sites = synth.site_presets(6)
    assert sites == synth.site_presets(6) and sites[:3] == list(synth.SITE_PRESETS)
    assert len({(s.shape, s.voxel_size) for s in sites}) == 6
    for s in sites[3:]:
        assert all(96 <= n <= 128 for n in s.shape[:2]) and 24 <= s.shape[2] <= 48


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lesion_fraction": (0.01, 0.001)},
        {"lesion_fraction": (0.0, 0.01)},
        {"lesion_fraction": (0.001, 0.2)},
        {"lesion_fraction": 0.01},
        {"lesion_fraction": (0.005, 0.005)},  # no whole voxel count gives exactly 0.5 %
        {"subjects": 0},
        {"sites": 0},
        {"other_pathology": -1},
        {"site_params": [SITE1]},
    ],
)
def test_bad_arguments_raise_config_error(tmp_path, kwargs):
    args = {"subjects": 1, "sites": 2, "seed": 0} | kwargs
    with pytest.raises(ConfigError):
        synth.make_cohort(tmp_path, **args)
    assert not (tmp_path / "manifest.csv").exists()


def test_interrupted_run_leaves_no_manifest(tmp_path):
    def stop(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synth.make_cohort(tmp_path, subjects=2, sites=1, seed=0, on_subject=stop)
    assert (tmp_path / "site1/sub-001/label.nii.gz").is_file()
    assert not (tmp_path / "manifest.csv").exists()


def test_summary_text_lists_every_subject(cohort):
    text = cohort.to_text()
    assert str(cohort.manifest) in text and "4 subjects, 3 sites" in text
    assert text.count("\nsub-") == 4 and "96x112x30" in text and "1.2x1.2x3" in text
