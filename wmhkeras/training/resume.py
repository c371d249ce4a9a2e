"""``train --resume``: load the chosen checkpoint into a freshly built model, so the run continues exactly.

Which files a resume starts from is decided on the files alone, before TensorFlow builds anything
(:func:`wmhkeras.io.checkpoints.choose_resume_point`); this module loads that checkpoint (weights and
optimizer state) and checks its step counter. A resumed run reads the training batches from the one it
stopped at (:func:`first_batch`), so with the same seed it computes what the uninterrupted run computes,
epoch for epoch (on CPU to the last bit: ``tests/training/test_faults_sigkill.py``).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import keras

from wmhkeras.errors import InputError
from wmhkeras.io.checkpoints import ResumePoint
from wmhkeras.io.run_folder import RunState

log = logging.getLogger(__name__)


def first_batch(point: ResumePoint, steps_per_epoch: int) -> int:
    """The index of the first training batch of a run resumed at ``point``: its optimizer step count."""
    if point.checkpoint is None:
        return 0
    iterations = point.state.iterations
    return int(iterations) if iterations is not None else point.state.epochs * steps_per_epoch


def load_checkpoint(model: keras.Model, point: ResumePoint, steps_per_epoch: int) -> tuple[int, RunState, int]:
    """Load ``point``'s checkpoint (weights and optimizer state) into ``model``.

    Returns ``(epochs done, state, optimizer steps)``. The epoch counter is the state's when its
    ``iterations`` match the checkpoint's optimizer; otherwise (a state without checksums, one
    epoch behind its checkpoint) it is ``iterations // steps_per_epoch``.
    """
    if point.checkpoint is None:
        if point.state.epochs:
            log.warning("no completed epoch to resume from; starting at epoch 1")
        return 0, replace(point.state, epochs=0, iterations=0, best=None, best_epoch=None, last_sha256=None,
                          best_sha256=None, early_stopping=None), 0
    optimizers = [model.optimizer] + [o for o in [getattr(model, "backbone_optimizer", None)] if o is not None]
    optimizers[0].build(getattr(model, "generator", model).trainable_variables)
    if len(optimizers) > 1:
        optimizers[1].build(model.backbone.trainable_variables)
    try:
        model.load_weights(point.checkpoint)
    except (ValueError, OSError, KeyError) as err:
        raise InputError(f"{point.checkpoint}: cannot load the checkpoint ({err})") from None
    iterations = int(model.optimizer.iterations.numpy())
    state = point.state
    if state.iterations == iterations:
        return state.epochs, state, iterations
    epochs = iterations // steps_per_epoch
    log.warning("%s does not match %s; continuing after epoch %d (%d steps done)",
                point.source, point.checkpoint, epochs, iterations)
    return epochs, replace(state, epochs=epochs, iterations=iterations), iterations
