"""Strategy choice, the validation trim for several replicas, and the Keras-version guard of the
multi-worker workaround (the two-process training itself is in test_distribute.py)."""

from __future__ import annotations

import json
import re

import keras
import pytest
import tensorflow as tf

from wmhkeras.errors import ConfigError
from wmhkeras.training.multiworker import (
    TESTED_KERAS_VERSION,
    make_strategy,
    no_empty_replica,
    prepare_multi_worker_fit,
)

from ..conftest import REPO

TF_CONFIG = {"cluster": {"worker": ["localhost:12345", "localhost:12346"]}, "task": {"type": "worker", "index": 0}}


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        make_strategy("multi_worker")


def test_the_tested_keras_is_the_pinned_one():
    # setup.py allows a range; the set `make` installs pins the tested release
    assert re.search(rf"^keras=={re.escape(TESTED_KERAS_VERSION)}$", (REPO / "requirements.lock").read_text(), re.M)


def test_multi_worker_refuses_an_untested_keras(monkeypatch):
    monkeypatch.setattr(keras, "__version__", "3.16.0")
    monkeypatch.setenv("TF_CONFIG", json.dumps(TF_CONFIG))
    # Refused before the strategy (and its collective ops) is created ...
    with pytest.raises(ConfigError, match=r"keras-team/keras#20585.*3\.15\.1.*Keras 3\.16\.0"):
        make_strategy("multi_worker")
    # ... and by the workaround itself, before it touches the model.
    with pytest.raises(ConfigError, match="keras==3.15.1"):
        prepare_multi_worker_fit(object(), None)


def test_no_empty_replica_drops_only_a_last_batch_too_small_to_share():
    def samples(dataset):
        return sum(int(b.shape[0]) for b in dataset)

    ten = tf.data.Dataset.range(10).batch(4)  # last batch: 2 samples
    assert samples(no_empty_replica(ten, 10, 4, replicas=2)) == 10  # 1 each
    assert samples(no_empty_replica(ten, 10, 4, replicas=3)) == 8  # one replica would get none
    assert samples(no_empty_replica(tf.data.Dataset.range(8).batch(4), 8, 4, replicas=3)) == 8
