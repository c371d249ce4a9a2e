"""The one preprocessing implementation agrees with the paper's reference (skimage) everywhere it runs."""

import numpy as np
import pytest
import tensorflow as tf
from skimage.transform import resize as sk_resize

from wmhkeras.data import preprocessing as pp


@pytest.mark.parametrize(
    "shape, size",
    [((182, 218), (224, 224)), ((256, 232), (224, 224)), ((224, 224), (182, 218)), ((7, 5), (3, 11)), ((1, 4), (3, 2)), ((240, 240), (224, 224))],
)
def test_resize_matches_skimage_defaults(shape, size):
    img = np.random.default_rng(sum(shape)).random(shape).astype(np.float32)
    ours = pp.resize_slices(img[None, :, :, None], size).numpy()[0, :, :, 0]
    np.testing.assert_allclose(ours, sk_resize(img, size), atol=1e-6)


def test_resize_matrix_by_hand():
    # 2 -> 4 (upsampling, no smoothing): output o samples input coordinate (o + 0.5) / 2 - 0.5,
    # i.e. -0.25, 0.25, 0.75, 1.25; the border mirrors about the edge sample.
    m = pp.resize_matrix(2, 4).numpy()
    expected = np.array([[0.75, 0.25], [0.75, 0.25], [0.25, 0.75], [0.25, 0.75]])
    np.testing.assert_allclose(m, expected, atol=1e-7)
    # 4 -> 2 (downsampling by 2): Gaussian sigma 0.5 then samples at 0.5 and 2.5; rows sum to 1.
    down = pp.resize_matrix(4, 2).numpy()
    np.testing.assert_allclose(down.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(down[0], down[1][::-1], atol=1e-7)  # symmetric


def test_resize_in_a_graph_with_dynamic_shapes_equals_eager():
    fn = tf.function(lambda x: pp.resize_slices(x, (16, 16)), input_signature=[tf.TensorSpec([None, None, None, 2], tf.float32)])
    x = np.random.default_rng(0).random((3, 20, 9, 2)).astype(np.float32)
    np.testing.assert_allclose(fn(x).numpy(), pp.resize_slices(x, (16, 16)).numpy(), atol=1e-7)
    # each channel is resized on its own, exactly as skimage on that channel
    np.testing.assert_allclose(fn(x).numpy()[1, :, :, 1], sk_resize(x[1, :, :, 1], (16, 16)), atol=1e-6)


def test_masks_stay_binary():
    mask = np.zeros((1, 10, 10, 1), np.float32)
    mask[0, 3:7, 3:7, 0] = 1
    out = pp.resize_masks(mask, (20, 20)).numpy()
    assert set(np.unique(out)) == {0.0, 1.0}
    assert out.sum() == 64  # a 4x4 square doubles to 8x8


def test_normalisation_by_hand():
    vol = np.array([[[0.0, 2.0], [4.0, 8.0]]], np.float32)
    np.testing.assert_allclose(pp.normalise(vol, "max").numpy(), vol / 8.0)
    z = pp.normalise(vol, "zscore").numpy()
    inside = np.array([2.0, 4.0, 8.0])  # > 0.1 * max
    expected = np.where(vol > 0.8, (vol - inside.mean()) / inside.std(), 0.0)
    np.testing.assert_allclose(z, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="normalisation: 'minmax' is not known"):
        pp.normalise(vol, "minmax")


def test_preprocess_and_restore_volume_follow_the_paper_recipe():
    rng = np.random.default_rng(3)
    flair = (rng.random((30, 20, 4)) * 50).astype(np.float32)
    t1 = (rng.random((30, 20, 4)) * 7).astype(np.float32)
    x = pp.preprocess_volume([flair, t1], (32, 32)).numpy()
    assert x.shape == (4, 32, 32, 2)
    # slice k, channel c = skimage.resize(volume_c[:, :, k] / max(volume_c), (32, 32))
    np.testing.assert_allclose(x[2, :, :, 0], sk_resize(flair[:, :, 2] / flair.max(), (32, 32)), atol=1e-6)
    np.testing.assert_allclose(x[3, :, :, 1], sk_resize(t1[:, :, 3] / t1.max(), (32, 32)), atol=1e-6)
    back = pp.restore_volume(x[..., :1], flair.shape).numpy()
    assert back.shape == flair.shape
    np.testing.assert_allclose(back[:, :, 2], np.clip(sk_resize(x[2, :, :, 0], (30, 20)), 0, 1), atol=1e-6)


def test_slicing_round_trip():
    vol = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    s = pp.volume_to_slices(vol).numpy()
    assert s.shape == (4, 2, 3, 1)
    np.testing.assert_array_equal(s[1, :, :, 0], vol[:, :, 1])
    np.testing.assert_array_equal(pp.slices_to_volume(s).numpy()[..., 0], vol)


def test_soft_labels():
    from wmhkeras.errors import ConfigError

    np.testing.assert_allclose(pp.soft_labels(np.array([0.0, 1.0])), [0.1, 0.9])
    with pytest.raises(ConfigError, match="low=0.9, high=0.1"):
        pp.soft_labels(np.zeros(2), low=0.9, high=0.1)
