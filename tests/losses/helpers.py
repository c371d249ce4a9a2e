"""Helpers shared by the loss tests: two 2x2 samples and their prediction, packed targets, per-sample values."""

import numpy as np
import tensorflow as tf

# Two 2x2 samples: a one-pixel lesion, and an empty mask; the same prediction for both.
MASKS = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]]], "float32")[..., None]
PRED = np.array([[[0.5, 0], [0, 0.5]]] * 2, "float32")[..., None]


def packed(mask, image=None):
    image = np.ones_like(mask) if image is None else image
    return np.concatenate([mask, image], axis=-1)


def per_sample(loss, y_true, y_pred):
    return np.asarray(loss.call(tf.constant(y_true), tf.constant(y_pred)))
