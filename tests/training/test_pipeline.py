"""The assembled training datasets (:mod:`wmhkeras.training.pipeline`): batches, validation, preview."""

import numpy as np

from wmhkeras.training.cache import MIN_BRAIN_FRACTION

from .helpers import BATCH, brain_share


def test_batches_are_packed_and_validation_is_deterministic(paper_like):
    x, y = next(iter(paper_like.train))
    assert x.shape == (BATCH, 64, 64, 1) and y.shape == (BATCH, 64, 64, 2) and x.dtype.name == "float32"
    values = np.unique(y[..., 0].numpy())
    assert (np.isclose(values, 0.1) | np.isclose(values, 0.9)).all() and len(values) == 2  # soft labels
    np.testing.assert_array_equal(y[..., 1].numpy(), x[..., 0].numpy())  # channel 1 = augmented FLAIR
    assert paper_like.cache_mode == "memory" and paper_like.sites == ["site1", "site2", "site3"]

    first = [(a.numpy(), b.numpy()) for a, b in paper_like.validation]
    second = [(a.numpy(), b.numpy()) for a, b in paper_like.validation]
    assert len(first) == paper_like.validation_batches
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    ys = np.concatenate([b for _, b in first])
    assert set(np.unique(ys[..., 0])) <= {0.0, 1.0}  # hard labels
    assert ys.shape[0] == paper_like.stats["validation_samples"]
    assert (brain_share(ys[..., 1:]) >= MIN_BRAIN_FRACTION).all()

    px, py = paper_like.preview
    assert px.shape[0] == min(BATCH, 8) and py.shape[-1] == 2
    assert (py[..., 0].reshape(len(py), -1).max(axis=1) == 1).all()  # every preview slice has lesion
