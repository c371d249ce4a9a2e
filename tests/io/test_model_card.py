"""The model card (format version 3): typed sections, round trips, older cards, refusals, and where it is found."""

from __future__ import annotations

import json

import pytest

from wmhkeras.errors import InputError
from wmhkeras.io.model_card import (
    ASSETS_EXTRA,
    MODEL_CARD_NAME,
    MODEL_CARD_VERSION,
    NOT_STATED,
    HoldoutMetrics,
    InputRequirements,
    ModelCard,
    ServingLayout,
    TrainingData,
    VoxelSize,
)

BASE = {"modalities": ["flair"], "normalisation": "zscore", "input_size": None,
        "resample": {"mode": "spacing", "spacing": [1.0, 1.0], "multiple": 16}}


def full_card() -> ModelCard:
    return ModelCard(
        ("flair",), "zscore", None, {"mode": "spacing", "spacing": [1.0, 1.0], "multiple": 16},
        project_version="0.1.0", intended_use="research", not_intended_for="clinical use", limitations="two patients",
        input_requirements=InputRequirements(skull_stripped=True, bias_corrected=False, notes="about 1 mm",
                                             voxel_size_mm=VoxelSize((1, 1, 1), (1.2, 1, 3), (1.1, 1, 2), 4)),
        training_data=TrainingData("data/manifest.csv", "two MS patients", {"train": 2}, {"train": ["A"]}, "CC-BY",
                                   "Lesjak et al. 2018"),
        holdout_metrics=HoldoutMetrics("runs/x/evaluate/summary.json", "hold-out", 1, {"dice": {"mean": 0.5}}),
        serving=ServingLayout("wmh", 2, "wmh/2", "assets.extra/tf_serving_warmup_requests"),
    )


def test_a_full_card_survives_json():
    card = full_card()
    data = json.loads(json.dumps(card.to_dict()))
    assert data["format_version"] == MODEL_CARD_VERSION == 3
    assert data["input_requirements"] == {"modalities": ["flair"], "skull_stripped": True, "bias_corrected": False,
                                          "voxel_size_mm": {"min": [1.0, 1.0, 1.0], "max": [1.2, 1.0, 3.0],
                                                            "median": [1.1, 1.0, 2.0], "subjects": 4},
                                          "notes": "about 1 mm"}
    assert data["training_data"]["licence"] == "CC-BY" and data["serving"]["path"] == "wmh/2"
    back = ModelCard.from_dict(data)
    assert back == card and back.extra == {}
    assert back.input_requirements.voxel_size_mm.max == (1.2, 1.0, 3.0)  # typed again, tuples of floats


def test_defaults_say_not_stated_and_take_the_models_modalities():
    card = ModelCard(("flair", "t1"), "max", (32, 32))
    assert (card.intended_use, card.not_intended_for, card.limitations) == (NOT_STATED,) * 3
    req = card.input_requirements
    assert req.modalities == ("flair", "t1") and req.skull_stripped == req.bias_corrected == NOT_STATED
    assert req.voxel_size_mm is None and card.holdout_metrics is None and card.serving is None
    assert card.training_data.licence == card.training_data.citation == NOT_STATED


def test_version_2_card_is_read_with_its_data_and_hand_added_texts_kept():
    """A card written before the typed sections: ``data`` becomes ``training_data``; keys that version 3
    types (here as a script added them by hand, in another shape) stay in ``extra`` untouched."""
    old = {**BASE, "format_version": 2, "source": "run/checkpoints/best.keras",
           "data": {"dataset": "cohort", "subjects": {"train": 4, "validation": 1, "holdout": 1},
                    "sites": {"train": ["siteA"]}},
           "intended_use": "Research", "input_requirements": {"modalities": ["FLAIR"], "voxel_size_mm": "about 1"},
           "evaluation": {"results": []}}
    card = ModelCard.from_dict(old)
    assert card.format_version == 2 and card.mode == "spacing"
    assert card.training_data.dataset == "cohort" and card.training_data.subjects["holdout"] == 1
    assert card.intended_use == NOT_STATED and card.input_requirements.voxel_size_mm is None
    assert card.extra == {"intended_use": "Research", "input_requirements": old["input_requirements"],
                          "evaluation": {"results": []}}
    assert card.to_dict()["input_requirements"] == old["input_requirements"]  # written back as it was


def test_version_1_card_still_reads():
    card = ModelCard.from_dict({"modalities": ["flair"], "normalisation": "max", "input_size": [64, 48]})
    assert card.format_version == 1 and card.mode == "fixed" and card.input_size == (64, 48)


@pytest.mark.parametrize("change, message", [
    ({"intended_use": ""}, "intended_use '' must be a non-empty text"),
    ({"limitations": 3}, "limitations 3 must be a non-empty text"),
    ({"input_requirements": {"skull_stripped": "yes"}}, "skull_stripped 'yes' must be true, false or 'not stated'"),
    ({"input_requirements": {"voxel_size_mm": {"min": [1, 1], "max": [1, 1, 1], "median": [1, 1, 1],
                                               "subjects": 1}}}, "voxel_size_mm.min \\[1, 1\\] must be \\[x, y, z\\]"),
    ({"input_requirements": {"voxel_size_mm": {"min": [1, 1, 1], "max": [1, 1, 1], "median": [1, 1, 1],
                                               "subjects": 0}}}, "subjects 0 must be an integer >= 1"),
    ({"training_data": {"licnce": "MIT"}}, "training_data: unknown key\\(s\\) licnce"),
    ({"training_data": "cohort"}, "training_data must be a mapping"),
    ({"holdout_metrics": {"protocol": "x"}}, "holdout_metrics: .*source"),
    ({"holdout_metrics": {"source": "s", "n_subjects": -1}}, "n_subjects -1"),
    ({"serving": {"name": "wmh", "version": 0, "path": "wmh/0", "warmup": "w"}}, "serving.version 0"),
])
def test_bad_sections_are_refused_naming_the_field(change, message):
    with pytest.raises(InputError, match=f"^card.json: .*{message}"):
        ModelCard.from_dict({**BASE, "format_version": 3, **change}, "card.json")


def test_find_prefers_the_card_inside_the_saved_model(tmp_path):
    export = tmp_path / "export"
    inside = export / "saved_model" / ASSETS_EXTRA / MODEL_CARD_NAME
    inside.parent.mkdir(parents=True)
    (export / "tflite").mkdir()
    beside = export / MODEL_CARD_NAME
    beside.write_text("{}")
    assert ModelCard.find(export / "saved_model") == beside  # an older export: beside the SavedModel
    inside.write_text("{}")
    assert ModelCard.find(export / "saved_model") == inside
    assert ModelCard.find(export / "tflite") == beside  # a TFLite file: the export's card
    beside.unlink()
    assert ModelCard.find(export / "tflite") == inside  # ... or the one inside the SavedModel next to it
    assert ModelCard.find(tmp_path / "elsewhere") is None
