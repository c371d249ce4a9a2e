"""Training on several replicas and workers: the ``tf.distribute`` strategy of ``train.distribution``,
which worker writes the run folder, the validation trim every replica needs, and the workaround that
lets Keras ``fit`` run under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585).

:func:`prepare_multi_worker_fit` sets private attributes of Keras' TensorFlow trainer
(``_symbolic_build``, ``_distribute_strategy``), which change between Keras releases without notice. It
is therefore tied to the Keras version it was written and tested against, :data:`TESTED_KERAS_VERSION`
(pinned in ``requirements.lock``; ``setup.py`` allows a range): on any other version ``multi_worker`` refuses to run
(:func:`check_keras_version`, called by :func:`make_strategy` before any work and again by the
workaround) instead of training a model whose logs or gradients may be silently wrong. Nothing else in
the package touches Keras internals. ``docs/training.md`` describes the user-visible side.
"""

from __future__ import annotations

import json
import logging
import os

import keras
import tensorflow as tf

from wmhkeras.errors import ConfigError

log = logging.getLogger(__name__)

#: The Keras release the multi-worker workaround is tested with (``keras==`` in requirements.lock).
TESTED_KERAS_VERSION = "3.15.1"


def check_keras_version() -> None:
    """Raise :class:`~wmhkeras.errors.ConfigError` unless Keras is :data:`TESTED_KERAS_VERSION`."""
    if keras.__version__ != TESTED_KERAS_VERSION:
        raise ConfigError(
            f"train.distribution: 'multi_worker' relies on a workaround for keras-team/keras#20585 that "
            f"touches Keras internals and is tested only with Keras {TESTED_KERAS_VERSION}; this is Keras "
            f"{keras.__version__}. Install keras=={TESTED_KERAS_VERSION}, or use 'mirrored' or 'none'"
        )


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy for ``train.distribution``.

    ``none``: the default (one device). ``mirrored``: ``MirroredStrategy`` over all GPUs, or over all
    logical CPU devices when there is no GPU and more than one CPU device is configured.
    ``multi_worker``: ``MultiWorkerMirroredStrategy`` configured by the ``TF_CONFIG`` environment
    variable; it must be created before TensorFlow runs any op in the process.
    """
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("train.distribution: 'multi_worker' needs the TF_CONFIG environment variable "
                              "(cluster and task of each worker); see docs/training.md")
        try:
            tf_config = json.loads(os.environ["TF_CONFIG"])
            tf_config["cluster"], tf_config["task"]  # noqa: B018 - presence check
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"TF_CONFIG: not a JSON object with 'cluster' and 'task' ({err})") from None
        check_keras_version()  # prepare_multi_worker_fit needs it: refuse before any work
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as err:  # collective ops configured after the runtime started
            raise ConfigError(f"train.distribution: 'multi_worker' must start in a fresh process ({err})") from None
    raise ConfigError(f"train.distribution: {name!r} is not allowed; use one of 'none', 'mirrored', 'multi_worker'")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder (always, except on non-chief multi-worker tasks)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def prepare_multi_worker_fit(model: keras.Model, example_batch) -> None:
    """Work around keras-team/keras#20585 (Keras 3 ``fit`` fails under ``MultiWorkerMirroredStrategy``).

    Call it in the strategy scope, before ``fit``. Two steps of Keras 3.15's TF trainer fail across
    workers:

    - before the first epoch it builds the metrics and loss from one batch that it first averages
      across replicas with ``strategy.reduce``, which rejects the nested ``(x, y)`` batch ("Attempt to
      convert a value (PerReplica...)"). We build that state here from a local batch, in the strategy
      scope, and let the model take its strategy from the scope ``fit`` runs in, which skips that step;
    - it averages each step's scalar logs with ``strategy.reduce("MEAN", v, axis=0)``, which fails on
      scalars ("Invalid reduction dimension 0"). The train and test steps of this model instance return
      their logs as shape ``(1,)`` instead, which that call averages into the scalar Keras expects.
      Epoch-level logs come from the metric variables, summed over all workers, as on one device.

    Raises:
        ConfigError: Keras is not :data:`TESTED_KERAS_VERSION` (:func:`check_keras_version`).
    """
    check_keras_version()
    x, y = (tf.convert_to_tensor(v) for v in example_batch)
    model._symbolic_build(data_batch=(x, y))
    model._distribute_strategy = None

    def as_vectors(step):
        def wrapped(data):
            return {key: keras.ops.reshape(value, (1,)) for key, value in step(data).items()}

        return wrapped

    model.train_step = as_vectors(model.train_step)
    model.test_step = as_vectors(model.test_step)


def no_empty_replica(dataset: tf.data.Dataset, samples: int, batch_size: int, replicas: int) -> tf.data.Dataset:
    """Drop the last ``r`` validation samples when the final batch of ``r < replicas`` would leave a
    replica an empty batch (Keras' batch normalisation fails on it); at most ``replicas - 1`` are lost.

    Needed by every strategy with more than one replica (``mirrored`` too); plain ``tf.data``, no Keras
    internals.
    """
    rest = samples % batch_size
    if rest == 0 or rest >= replicas:
        return dataset
    log.warning("validation: leaving out the last %d of %d samples so that each of the %d replicas gets a "
                "non-empty last batch", rest, samples, replicas)
    return dataset.unbatch().take(samples - rest).batch(batch_size)
