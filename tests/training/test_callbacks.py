"""The training callbacks (:mod:`wmhkeras.training.callbacks`): the image summaries' overlay."""

import numpy as np

from wmhkeras.training.callbacks import overlay


def test_overlay_colours():
    x = np.full((1, 2, 2, 1), 0.5, np.float32)
    truth = np.array([1, 1, 0, 0], np.float32).reshape(1, 2, 2, 1)
    pred = np.array([1, 0, 1, 0], np.float32).reshape(1, 2, 2, 1)
    rgb = overlay(x, truth, pred, alpha=1.0)
    assert rgb.shape == (1, 2, 2, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[0].reshape(4, 3), [[1, 1, 0], [0, 1, 0], [1, 0, 0], [0.5, 0.5, 0.5]])
