"""The one typed config: dataclasses loaded from YAML, validated at load, saved with every run.

:mod:`~wmhkeras.config.schema` holds the sections (a run config, plus the ``experiment`` section of
``wmhkeras experiment``); :mod:`~wmhkeras.config.load` the one loader (:func:`load_config`), the
merging of files and ``--set`` overrides, and the validation, whose errors name the key, the value seen
and what is allowed.
"""

from wmhkeras.config.load import (
    config_from_dict,
    deep_merge,
    load_config,
    load_run_config,
    parse_override,
    read_yaml,
    save_config,
)
from wmhkeras.config.schema import (
    CONFIG_VERSION,
    PCD_BIN_EDGES,
    AugmentConfig,
    Config,
    DataConfig,
    ExperimentConfig,
    FinetuneConfig,
    LesionSynthesisConfig,
    LossConfig,
    LossName,
    ModelConfig,
    TrainConfig,
)

__all__ = [
    "CONFIG_VERSION",
    "PCD_BIN_EDGES",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "ExperimentConfig",
    "FinetuneConfig",
    "LesionSynthesisConfig",
    "LossConfig",
    "LossName",
    "ModelConfig",
    "TrainConfig",
    "config_from_dict",
    "deep_merge",
    "load_config",
    "load_run_config",
    "parse_override",
    "read_yaml",
    "save_config",
]
