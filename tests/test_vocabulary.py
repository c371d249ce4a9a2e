"""The preprocessing vocabulary is the one list the config, the preprocessing and the model card read."""

import typing

import numpy as np
import pytest

from wmhkeras.config.schema import DataConfig
from wmhkeras.data.preprocessing import Resampling, normalise
from wmhkeras.errors import ConfigError
from wmhkeras.vocabulary import NORMALISATIONS, RESAMPLE_MODES


def _choices(field: str) -> tuple:
    hint = typing.get_type_hints(DataConfig)[field]
    args = typing.get_args(hint)
    if type(None) in args:  # Optional[Literal[...]]
        (hint,) = [a for a in args if a is not type(None)]
        args = typing.get_args(hint)
    return args


def test_the_config_offers_exactly_the_vocabulary():
    assert _choices("normalisation") == NORMALISATIONS
    assert _choices("resample") == RESAMPLE_MODES


def test_preprocessing_refuses_a_name_outside_it():
    with pytest.raises(ConfigError, match="max, zscore"):
        normalise(np.ones((2, 2, 2), np.float32), "minmax")
    with pytest.raises(ConfigError, match="fixed, spacing, none"):
        Resampling("nearest")
