"""Helpers shared by the experiment tests: the tiny experiment config."""

TINY = {
    "data": {"split": [0.34, 0.33, 0.33], "lesion_fraction": 0.7},
    "model": {"arch": "unet", "input_size": [32, 32], "depth": 2, "base_filters": 4},
    "loss": {"weights": "random"},
    "augment": {"rotation_degrees": 0},
    "train": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 4, "image_summary_every": 0},
    "experiment": {"losses": ["dice", "tversky"], "external_site": "site2"},
}
