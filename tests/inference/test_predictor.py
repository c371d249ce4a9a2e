"""One volume: the lesion mask's size filter and the flip test-time augmentation."""

import numpy as np

from tests.inference.helpers import blob_volume
from wmhkeras.inference.loaders import Segmenter
from wmhkeras.inference.predictor import lesion_mask, predict_volume


def test_lesion_mask_removes_small_components_26_connected():
    prob = np.zeros((6, 6, 6), np.float32)
    prob[0, 0, 0] = 0.9                      # 1 voxel: 2 mm^3
    prob[3, 3, 3] = prob[4, 4, 4] = 0.6      # diagonal neighbours: one 26-connected lesion of 4 mm^3
    prob[5, 0, 5] = 0.4                      # below threshold
    np.testing.assert_array_equal(lesion_mask(prob, 0.5, 0.0, 2.0), prob >= 0.5)
    kept = lesion_mask(prob, 0.5, min_lesion_mm3=4.0, voxel_volume_mm3=2.0)
    assert kept.dtype == np.uint8 and kept.sum() == 2 and kept[3, 3, 3] == kept[4, 4, 4] == 1


def test_flip_tta_mirrors_the_left_right_axis():
    import tensorflow as tf

    # A 'model' whose output rises along the slice height (= X, left-right in RAS): its flip average is flat.
    ramp = tf.reshape(tf.linspace(0.0, 1.0, 32), (1, 32, 1, 1))
    seg = Segmenter(lambda x: tf.broadcast_to(ramp, tf.shape(x[..., :1])), ("flair",), "max", (32, 32))
    vol = blob_volume()
    plain = predict_volume(seg, [vol], batch_size=4)
    assert plain[-1, 0, 0] > 0.9 and plain[0, 0, 0] < 0.1
    np.testing.assert_allclose(predict_volume(seg, [vol], batch_size=4, tta_flip=True), 0.5, atol=1e-5)
