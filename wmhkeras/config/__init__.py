"""The one typed config: dataclasses loaded from YAML, validated at load, saved with every run.

:mod:`~wmhkeras.config.schema` holds the sections (a run config, plus the ``experiment`` section of
``wmhkeras experiment``); :mod:`~wmhkeras.config.load` the one loader (:func:`load_config`), the
merging of files and ``--set`` overrides, and the validation, whose errors name the key, the value seen
and what is allowed.
"""

import importlib

#: The public names, by the module that defines them, each imported on first use (PEP 562).
_PUBLIC = {
    **dict.fromkeys(("config_from_dict", "deep_merge", "load_config", "load_run_config", "parse_override", "read_yaml",
                     "save_config"), "wmhkeras.config.load"),
    **dict.fromkeys(("CONFIG_VERSION", "PCD_BIN_EDGES", "AugmentConfig", "Config", "DataConfig", "ExperimentConfig",
                     "FinetuneConfig", "HardNegativesConfig", "LesionSynthesisConfig", "LossConfig", "LossName", "ModelConfig", "TrainConfig"),
                     "wmhkeras.config.schema"),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
