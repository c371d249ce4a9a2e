"""The export's model card without exporting: card-info files, portable paths, training voxel sizes from
NIfTI headers, and hold-out metrics from a ``wmhkeras evaluate`` summary. No TensorFlow."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wmhkeras.data.datasets import Subject
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.export.card import (
    RUN_EVALUATION,
    find_holdout_summary,
    holdout_metrics,
    portable,
    portable_path,
    read_card_info,
    training_voxel_size,
)

INFO_YAML = """\
intended_use: Research on skull-stripped FLAIR.
limitations: Two patients.
input_requirements:
  skull_stripped: true
  bias_corrected: false
training_data:
  licence: CC-BY 4.0
  citation: Lesjak et al. 2018
"""


def test_card_info_from_yaml_or_json(tmp_path):
    (tmp_path / "info.yaml").write_text(INFO_YAML)
    info = read_card_info(tmp_path / "info.yaml")
    assert info["input_requirements"] == {"skull_stripped": True, "bias_corrected": False}
    (tmp_path / "info.json").write_text(json.dumps(info))
    assert read_card_info(tmp_path / "info.json") == info
    assert read_card_info(None) == {}


@pytest.mark.parametrize("text, error, message", [
    ("intended_use: x\nlicence: MIT\n", ConfigError, "'licence' is not a card-info key"),
    ("training_data: {licnce: MIT}\n", ConfigError, "training_data.licnce is not a card-info key"),
    ("input_requirements: {voxel_size_mm: 1}\n", ConfigError, "input_requirements.voxel_size_mm is not"),
    ("input_requirements: {skull_stripped: maybe}\n", ConfigError, "skull_stripped 'maybe' must be true, false"),
    ("limitations: ''\n", ConfigError, "limitations '' must be a non-empty text"),
    ("holdout_metrics: {n_subjects: two}\n", ConfigError, "n_subjects 'two'"),
    ("- a list\n", ConfigError, "must be a mapping"),
    ("intended_use: [unclosed\n", InputError, "cannot read the card info"),
])
def test_bad_card_info_is_refused_naming_the_file(tmp_path, text, error, message):
    path = tmp_path / "info.yaml"
    path.write_text(text)
    with pytest.raises(error, match=f"info.yaml: .*{message}"):
        read_card_info(path)
    with pytest.raises(InputError, match="cannot read"):
        read_card_info(tmp_path / "missing.yaml")


def test_portable_paths(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    monkeypatch.chdir(work)
    bases = [Path.cwd(), tmp_path / "elsewhere"]
    assert portable_path(str(work / "runs" / "a" / "best.keras"), bases) == "runs/a/best.keras"
    assert portable_path(str(tmp_path / "elsewhere" / "cohort" / "m.csv"), bases) == "cohort/m.csv"
    assert portable_path("/somewhere/else/data.csv", bases) == "data.csv"  # outside every base: the name
    card = {"source": str(work / "runs" / "a" / "best.keras"), "relative": "tflite/model_fp32.tflite",
            "note": f"trained on {tmp_path / 'x' / 'manifest.csv'} (see {work / 'runs'})",
            "url": "https://example.org/data/v1", "doi": "doi:10.1007/s12021-017-9348-7",
            "ratio": "1/2 of a mm / voxel", "list": [Path(work / "a.csv"), 3], "home": "~/data/flair.nii.gz"}
    out = portable(card, bases)
    assert out == {"source": "runs/a/best.keras", "relative": "tflite/model_fp32.tflite",
                   "note": "trained on manifest.csv (see runs)", "url": "https://example.org/data/v1",
                   "doi": "doi:10.1007/s12021-017-9348-7", "ratio": "1/2 of a mm / voxel", "list": ["a.csv", 3],
                   "home": "flair.nii.gz"}


def test_no_base_above_the_home_or_temporary_folder(monkeypatch):
    """Run from ``/``, relative paths would still spell the home or temporary folder: names only then."""
    from wmhkeras.export.card import _bases

    monkeypatch.chdir("/")
    tmp = Path(tempfile.gettempdir()).resolve()
    assert Path("/") not in _bases([Path("/")])
    assert portable_path(str(tmp / "run" / "best.keras"), _bases([])) == "best.keras"


def _nifti(path: Path, affine) -> Path:
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.asarray(affine, float)), str(path))
    return path


def test_training_voxel_size_from_headers_in_canonical_order(tmp_path):
    axial = _nifti(tmp_path / "a.nii.gz", np.diag([1.0, 1.0, 3.0, 1.0]))
    # voxel axes stored as (S, R, A) with sizes 2, 0.5, 0.8 mm: canonical X, Y, Z = 0.5, 0.8, 2
    permuted = _nifti(tmp_path / "b.nii.gz", [[0, 0.5, 0, 0], [0, 0, 0.8, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])
    flipped = _nifti(tmp_path / "c.nii.gz", np.diag([-1.2, 1.0, 1.5, 1.0]))  # L-R flipped: size is positive
    subjects = [Subject(n, "s", p) for n, p in (("a", axial), ("b", permuted), ("c", flipped))]
    size = training_voxel_size(subjects)
    assert size.subjects == 3
    assert size.min == pytest.approx((0.5, 0.8, 1.5))
    assert size.max == pytest.approx((1.2, 1.0, 3.0))
    assert size.median == pytest.approx((1.0, 1.0, 2.0))
    assert training_voxel_size([]) is None and training_voxel_size(None) is None
    assert training_voxel_size([Subject("x", "s", tmp_path / "missing.nii.gz")]) is None


def _evaluate_summary(folder: Path, truth: str) -> Path:
    folder.mkdir(parents=True)
    summary = {"n_subjects": 2, "sd_ddof": 1, "overall": {"dice": {"mean": 0.61, "sd": 0.05, "n": 2}},
               "by_site": {"A": {"dice": {"mean": 0.61, "sd": 0.05, "n": 2}}}, "pred": "seg", "truth": truth}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder / "summary.json"


def test_holdout_metrics_from_the_runs_evaluation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert find_holdout_summary(None, run) is None  # nothing evaluated: the card says null
    summary = _evaluate_summary(run / RUN_EVALUATION.parent, "run")
    assert find_holdout_summary(None, run) == summary
    metrics = holdout_metrics(summary, run)
    assert metrics.n_subjects == 2 and metrics.overall["dice"]["mean"] == 0.61 and "A" in metrics.by_site
    assert "this run's hold-out subjects" in metrics.protocol and metrics.source == str(summary)
    # an evaluation against another truth is recorded as what it is
    other = _evaluate_summary(tmp_path / "ext", "external/manifest.csv")
    assert find_holdout_summary(tmp_path / "ext", run) == other
    assert "hold-out" not in holdout_metrics(other, run).protocol
    (tmp_path / "bad.json").write_text('{"dice": 1}')
    with pytest.raises(InputError, match="not the summary.json of wmhkeras evaluate"):
        find_holdout_summary(tmp_path / "bad.json", run)


SHIPPED = Path(__file__).resolve().parents[2] / "saved_models" / "open_ms_flair"


@pytest.mark.skipif(not (SHIPPED / "model_card.json").is_file(), reason="saved_models/open_ms_flair not built (make pretrained)")
def test_the_shipped_models_card_is_complete():
    """The card of the shipped model states everything issue 11 asks (scripts/pretrained.py's card info)."""
    from wmhkeras.io.model_card import NOT_STATED, ModelCard

    card = ModelCard.read(SHIPPED / "model_card.json")
    inside = SHIPPED / card.saved_model / "assets.extra" / "model_card.json"
    assert inside.read_text() == (SHIPPED / "model_card.json").read_text()
    assert card.format_version == 3 and card.project_version
    assert NOT_STATED not in (card.intended_use, card.not_intended_for, card.limitations)
    req, data = card.input_requirements, card.training_data
    assert req.skull_stripped is True and req.bias_corrected is True and req.voxel_size_mm is not None
    assert "CC-BY" in data.licence and "Neuroinformatics" in data.citation and data.dataset == "open_ms_data"
    assert card.holdout_metrics is not None and card.holdout_metrics.results
    text = (SHIPPED / "model_card.json").read_text()
    assert str(Path.home()) not in text and tempfile.gettempdir() not in text and '"/' not in text


def test_saved_model_precisions_in_the_card():
    """``precision`` and ``saved_models`` (optional, format version 3): round trip, defaults, refusals, and
    an older card's keys of that name left in ``extra``."""
    from wmhkeras.io.model_card import ModelCard

    both = {"float32": {"path": "saved_model", "compute": "float32"},
            "bfloat16": {"path": "saved_model_bf16", "compute": "bfloat16"}}
    card = ModelCard(("flair",), "max", (32, 32), saved_model="saved_model_bf16", precision="bfloat16",
                     saved_models=both)
    data = json.loads(json.dumps(card.to_dict()))
    assert data["precision"] == "bfloat16" and data["saved_models"] == both and data["format_version"] == 3
    assert ModelCard.from_dict(data) == card
    plain = {"modalities": ["flair"], "normalisation": "max", "input_size": [32, 32], "format_version": 3}
    assert ModelCard.from_dict(plain).precision == "float32" and ModelCard.from_dict(plain).saved_models == {}
    for bad in ({"precision": "float16"}, {"saved_models": {"float16": {"path": "x"}}},
                {"saved_models": {"bfloat16": {"compute": "bfloat16"}}}):
        with pytest.raises(InputError, match="precision|saved_models"):
            ModelCard.from_dict({**plain, **bad})
    old = ModelCard.from_dict({**plain, "format_version": 2, "precision": "half"})
    assert old.precision == "float32" and old.extra == {"precision": "half"}
