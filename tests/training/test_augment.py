"""Augmentation: the same geometry for image and mask, binary masks, seeded, image-only intensity changes."""

import math

import keras
import numpy as np
import pytest

from wmhkeras.config import AugmentConfig
from wmhkeras.errors import ConfigError
from wmhkeras.training.augment import Augmenter, rotation_transforms


def blobs(batch=6, size=32, seed=0):
    """Binary images of random rectangles, ``(batch, size, size, 1)`` float32."""
    rng = np.random.default_rng(seed)
    out = np.zeros((batch, size, size, 1), np.float32)
    for b in range(batch):
        for _ in range(3):
            r, c = rng.integers(size // 8, size // 2, 2)
            h, w = rng.integers(2, size // 4 + 1, 2)
            out[b, r:r + h, c:c + w] = 1
    return out


def test_rotation_by_90_degrees_is_rot90():
    image = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    out = keras.ops.image.affine_transform(image, rotation_transforms([math.pi / 2], 5.0, 5.0)).numpy()
    np.testing.assert_allclose(out[0, :, :, 0], np.rot90(image[0, :, :, 0]), atol=1e-4)


def test_mask_stays_binary_and_aligned_with_the_image():
    # Image = its own mask: after rotation (bilinear) and flips, the mask must equal the image
    # thresholded at 0.5, voxel for voxel, and stay in {0, 1}.
    mask = blobs()
    aug = Augmenter(AugmentConfig(rotation_degrees=30, flip=True), seed=5)
    x, m = (a.numpy() for a in aug(mask.copy(), mask, 7))
    assert set(np.unique(m)) <= {0.0, 1.0}
    np.testing.assert_array_equal(m, (x >= 0.5).astype(np.float32))
    assert not np.array_equal(x, mask)  # something happened
    # the lesion area is preserved to within the boundary voxels
    assert abs(m.sum() - mask.sum()) < 0.15 * mask.sum()


def test_graded_image_and_mask_move_together():
    rng = np.random.default_rng(1)
    mask = blobs(seed=2)
    image = np.clip(0.2 + 0.6 * mask + 0.05 * rng.standard_normal(mask.shape), 0, 1).astype(np.float32)
    x, m = (a.numpy() for a in Augmenter(AugmentConfig(rotation_degrees=30, flip=True), seed=0)(image, mask, 3))
    inside, outside = x[m == 1].mean(), x[m == 0].mean()
    assert inside > 0.7 and outside < 0.3  # bright voxels stayed under the mask


def test_a_rotation_never_erases_the_only_lesion_voxel():
    mask = np.zeros((16, 9, 9, 1), np.float32)
    mask[:, 4, 5] = 1  # one voxel, off the rotation centre
    _, m = Augmenter(AugmentConfig(rotation_degrees=45), seed=0)(mask.copy(), mask, 0)
    assert (m.numpy().reshape(16, -1).max(axis=1) == 1).all()


def test_flip_is_left_right_only():
    image = np.random.default_rng(0).random((16, 8, 6, 1)).astype(np.float32)
    x, _ = Augmenter(AugmentConfig(rotation_degrees=0, flip=True), seed=0)(image, np.zeros_like(image), 0)
    x = x.numpy()
    same = [np.array_equal(x[i], image[i]) for i in range(16)]
    mirrored = [np.array_equal(x[i], image[i, ::-1]) for i in range(16)]
    assert all(s or f for s, f in zip(same, mirrored, strict=True)) and any(same) and any(mirrored)


def test_intensity_scale_and_gamma_touch_the_image_only():
    image = np.full((4, 8, 8, 2), 0.25, np.float32)
    mask = blobs(4, 8)
    aug = Augmenter(AugmentConfig(rotation_degrees=0, intensity_scale=0.2), seed=0)
    x, m = (a.numpy() for a in aug(image, mask, 0))
    np.testing.assert_array_equal(m, mask)
    factors = x[:, 0, 0, :] / 0.25  # one factor per sample and channel, constant over the slice
    np.testing.assert_allclose(x, np.broadcast_to(factors[:, None, None, :] * 0.25, x.shape), rtol=1e-6)
    assert ((factors >= 0.8) & (factors <= 1.2)).all() and factors.std() > 0
    x, _ = Augmenter(AugmentConfig(rotation_degrees=0, gamma=0.5), seed=0)(image, mask, 0)
    gammas = np.log(x.numpy()[:, 0, 0, :]) / np.log(0.25)
    assert ((gammas >= 0.5) & (gammas <= 1.5)).all()
    x, _ = Augmenter(AugmentConfig(rotation_degrees=0, intensity_scale=0.5), seed=0)(np.ones_like(image), mask, 0)
    assert x.numpy().max() <= 1.0  # max-normalised images stay in [0, 1]


def test_context_slices_of_a_modality_share_its_intensity_draws():
    image = np.full((4, 8, 8, 6), 0.25, np.float32)  # 2 modalities x 3 slices (context_slices 1)
    cfg = AugmentConfig(rotation_degrees=0, intensity_scale=0.2, gamma=0.3)
    x = Augmenter(cfg, seed=0, context=1)(image, blobs(4, 8), 0)[0].numpy()[:, 0, 0, :]
    for group in (slice(0, 3), slice(3, 6)):
        np.testing.assert_array_equal(x[:, group], np.repeat(x[:, group][:, :1], 3, axis=1))
    assert not np.allclose(x[:, 0], x[:, 3])  # the two modalities are drawn independently
    # the modalities get the draws they get without context
    flat = Augmenter(cfg, seed=0)(image[..., [1, 4]], blobs(4, 8), 0)[0].numpy()[:, 0, 0, :]
    np.testing.assert_array_equal(x[:, [1, 4]], flat)


def test_seeded_by_seed_and_batch_index():
    mask = blobs()
    cfg = AugmentConfig(rotation_degrees=30, flip=True, intensity_scale=0.1, gamma=0.1)
    first = Augmenter(cfg, seed=0)(mask, mask, 4)[0].numpy()
    np.testing.assert_array_equal(Augmenter(cfg, seed=0)(mask, mask, 4)[0].numpy(), first)
    assert not np.array_equal(Augmenter(cfg, seed=1)(mask, mask, 4)[0].numpy(), first)
    assert not np.array_equal(Augmenter(cfg, seed=0)(mask, mask, 5)[0].numpy(), first)


def test_off_is_identity_and_other_normalisations_are_refused():
    image = np.random.default_rng(0).random((2, 8, 8, 1)).astype(np.float32)
    aug = Augmenter(AugmentConfig(rotation_degrees=0), seed=0)
    assert not aug.active
    x, _ = aug(image, image > 0.5, 0)
    np.testing.assert_array_equal(np.asarray(x), image)
    with pytest.raises(ConfigError, match="data.normalisation: 'minmax' is not 'max' or 'zscore'"):
        Augmenter(AugmentConfig(gamma=0.2), normalisation="minmax")


def test_zoom_by_two_about_the_centre():
    # image value 5 r + c is linear, so bilinear sampling at the input point is exact:
    # output (r, c) samples input (2 + (r - 2) / 2, 2 + (c - 2) / 2).
    image = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    out = keras.ops.image.affine_transform(image, rotation_transforms([0.0], 5.0, 5.0, zoom=[2.0])).numpy()
    r, c = np.mgrid[0:5, 0:5]
    np.testing.assert_allclose(out[0, :, :, 0], 5 * (2 + (r - 2) / 2) + (2 + (c - 2) / 2), atol=1e-4)
    # rotation and zoom compose: 90 degrees then zoom 1 is rot90
    out = keras.ops.image.affine_transform(image, rotation_transforms([math.pi / 2], 5.0, 5.0, zoom=[1.0])).numpy()
    np.testing.assert_allclose(out[0, :, :, 0], np.rot90(image[0, :, :, 0]), atol=1e-4)


def test_scale_zooms_image_and_mask_together_within_its_range():
    mask = np.zeros((8, 33, 33, 1), np.float32)
    mask[:, 12:21, 12:21] = 1  # a 9 x 9 square about the centre: its area scales with zoom^2
    x, m = (a.numpy() for a in Augmenter(AugmentConfig(rotation_degrees=0, scale=0.3), seed=0)(mask.copy(), mask, 0))
    np.testing.assert_array_equal(m, (x >= 0.5).astype(np.float32))
    zoom = np.sqrt(m.reshape(8, -1).sum(axis=1) / 81.0)
    assert ((zoom > 0.7 - 0.12) & (zoom < 1.3 + 0.12)).all() and zoom.std() > 0.05


def test_shift_and_noise_leave_the_geometry_draws_alone():
    mask = blobs()
    base = AugmentConfig(rotation_degrees=30, flip=True, intensity_scale=0.1)
    more = AugmentConfig(rotation_degrees=30, flip=True, intensity_scale=0.1, intensity_shift=0.3, noise=0.1)
    x0, m0 = (a.numpy() for a in Augmenter(base, seed=3, normalisation="zscore")(mask, mask, 2))
    x1, m1 = (a.numpy() for a in Augmenter(more, seed=3, normalisation="zscore")(mask, mask, 2))
    np.testing.assert_array_equal(m1, m0)
    residual = x1 - x0  # a constant offset per sample plus zero-mean noise
    offsets = residual.mean(axis=(1, 2, 3))
    assert (np.abs(offsets) <= 0.3 + 0.02).all() and offsets.std() > 0
    assert 0 < (residual - offsets[:, None, None, None]).std() <= 0.1


def test_zscore_gamma_keeps_each_samples_range_and_bends_between():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 8, 8, 3)).astype(np.float32)  # zscore: negative values too
    cfg = AugmentConfig(rotation_degrees=0, gamma=0.4)
    x = Augmenter(cfg, seed=0, normalisation="zscore", context=1)(image, blobs(6, 8), 0)[0].numpy()
    low, high = image.min(axis=(1, 2, 3)), image.max(axis=(1, 2, 3))
    np.testing.assert_allclose(x.min(axis=(1, 2, 3)), low, atol=1e-5)
    np.testing.assert_allclose(x.max(axis=(1, 2, 3)), high, atol=1e-5)
    t = (image - low[:, None, None, None]) / (high - low)[:, None, None, None]
    u = (x - low[:, None, None, None]) / (high - low)[:, None, None, None]
    inner = (t > 0.05) & (t < 0.95)
    gammas = np.log(u[inner]) / np.log(t[inner])
    per_sample = [np.log(u[b][inner[b]]) / np.log(t[b][inner[b]]) for b in range(6)]
    for g in per_sample:  # one gamma per sample (the context slices of the modality share it)
        np.testing.assert_allclose(g, g.mean(), rtol=1e-3)
    assert ((gammas >= 0.6 - 1e-3) & (gammas <= 1.4 + 1e-3)).all()


# === Scanner variation: bias field, blur, lower resolution ===


def test_gaussian_blur_matches_scipy_and_sigma_zero_is_identity():
    from scipy import ndimage

    from wmhkeras.training.augment import gaussian_blur

    rng = np.random.default_rng(0)
    x = rng.random((3, 24, 20, 2)).astype(np.float32)
    sigmas = np.array([0.0, 0.7, 1.5], np.float32)
    out = gaussian_blur(x, sigmas).numpy()
    assert np.allclose(out[0], x[0], atol=1e-6)
    for i in (1, 2):
        for c in range(2):
            # reflect without repeating the edge pixel: scipy's "mirror"; radius 4 = truncate 4 / sigma
            ref = ndimage.gaussian_filter(x[i, ..., c], float(sigmas[i]), mode="mirror", truncate=4 / sigmas[i])
            assert np.allclose(out[i, ..., c], ref, atol=1e-5)


def test_bias_field_is_smooth_bounded_and_multiplicative():
    cfg = AugmentConfig(rotation_degrees=0, bias_field=0.4)
    x = np.full((64, 16, 16, 1), 2.0, np.float32)
    mask = np.zeros((64, 16, 16, 1), np.float32)
    out, out_mask = Augmenter(cfg, seed=3)(x, mask, 5)
    ratio = out.numpy() / 2.0
    assert ratio.min() >= math.exp(-0.4) - 1e-6 and ratio.max() <= math.exp(0.4) + 1e-6
    assert np.ptp(ratio) > 0.1  # some samples bend
    # a second-order polynomial in the exponent: the log-ratio is exactly quadratic over each sample
    rows, cols = np.meshgrid(np.linspace(-1, 1, 16), np.linspace(-1, 1, 16), indexing="ij")
    design = np.stack([np.ones(256), rows.ravel(), cols.ravel(), rows.ravel() ** 2, cols.ravel() ** 2,
                       (rows * cols).ravel()], axis=1)
    for sample in np.log(ratio[..., 0]):
        coef, residual, *_ = np.linalg.lstsq(design, sample.ravel(), rcond=None)
        assert np.abs(design @ coef - sample.ravel()).max() < 1e-5
    assert np.array_equal(out_mask.numpy(), mask)


def test_zscore_bias_field_is_relative_to_the_sample_minimum():
    x = np.zeros((8, 12, 12, 1), np.float32) - 1.5
    x[:, 4:8, 4:8] = 1.0
    out, _ = Augmenter(AugmentConfig(rotation_degrees=0, bias_field=0.3), seed=0, normalisation="zscore")(
        x, np.zeros_like(x), 0)
    out = out.numpy()
    assert np.allclose(out[:, :4, :4], -1.5)  # the background (the minimum) stays
    assert not np.allclose(out[:, 4:8, 4:8], 1.0)


def test_low_resolution_keeps_constants_and_smooths_fine_detail():
    cfg = AugmentConfig(rotation_degrees=0, low_resolution=2.0)
    flat = np.full((16, 32, 32, 1), 0.7, np.float32)
    out, _ = Augmenter(cfg, seed=0)(flat, np.zeros_like(flat), 1)
    assert np.allclose(out.numpy(), 0.7, atol=1e-5)
    checker = (np.indices((32, 32)).sum(axis=0) % 2).astype(np.float32)[None, ..., None].repeat(16, axis=0)
    out, _ = Augmenter(cfg, seed=0)(checker, np.zeros_like(checker), 1)
    assert out.numpy().std(axis=(1, 2, 3)).mean() < 0.5 * checker.std()


def test_scanner_variation_leaves_the_geometry_and_its_draws_alone():
    rng = np.random.default_rng(1)
    x = rng.random((8, 32, 32, 1)).astype(np.float32)
    mask = np.zeros_like(x)
    mask[:, 10:14, 12:20] = 1.0
    plain = AugmentConfig(rotation_degrees=20, flip=True, intensity_scale=0.1)
    with_scanner = AugmentConfig(rotation_degrees=20, flip=True, intensity_scale=0.1, bias_field=0.3, blur=1.0,
                                 low_resolution=1.0)
    a_x, a_mask = Augmenter(plain, seed=4)(x, mask, 9)
    b_x, b_mask = Augmenter(with_scanner, seed=4)(x, mask, 9)
    assert np.array_equal(a_mask.numpy(), b_mask.numpy())
    assert not np.allclose(a_x.numpy(), b_x.numpy())
    again, _ = Augmenter(with_scanner, seed=4)(x, mask, 9)
    assert np.array_equal(again.numpy(), b_x.numpy())


# === Tissue contrast: the histogram shift ===


def _histogram_points(seed, batch_index, batch, modalities, shift):
    """The control points the augmenter draws for a batch, recomputed from its fourth stream by hand."""
    import tensorflow as tf

    from wmhkeras.training.augment import HISTOGRAM_POINTS

    n = HISTOGRAM_POINTS - 1
    h = tf.random.stateless_uniform((batch, modalities * (n - 1)),
                                    seed=(seed + 4 * Augmenter.EXTRA_STREAM, batch_index)).numpy()
    inner = np.arange(1, n) / n + (2 * h.reshape(batch, modalities, n - 1) - 1) * shift / n
    return np.concatenate([np.zeros((batch, modalities, 1)), inner, np.ones((batch, modalities, 1))], axis=-1)


def test_histogram_shift_is_the_piecewise_linear_map_through_its_drawn_control_points():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(5, 10, 10, 6)).astype(np.float32)  # zscore, 2 modalities x 3 context slices
    cfg = AugmentConfig(rotation_degrees=0, histogram_shift=0.3)
    out = Augmenter(cfg, seed=6, normalisation="zscore", context=1)(image, np.zeros_like(image[..., :1]), 4)[0]
    points = _histogram_points(6, 4, 5, 2, 0.3)
    reference = np.linspace(0, 1, points.shape[-1])
    for b in range(5):
        for m in range(2):
            group = image[b, ..., 3 * m:3 * m + 3]  # the modality's context slices share its range and map
            low, high = group.min(), group.max()
            expected = low + (high - low) * np.interp((group - low) / (high - low), reference, points[b, m])
            np.testing.assert_allclose(out.numpy()[b, ..., 3 * m:3 * m + 3], expected, atol=1e-5)
    assert not np.allclose(points[:, 0], points[:, 1])  # each modality has its own map
    slopes = np.diff(points, axis=-1) * (points.shape[-1] - 1)
    assert (slopes >= 1 - 2 * 0.3 - 1e-6).all() and (slopes <= 1 + 2 * 0.3 + 1e-6).all() and slopes.std() > 0.05


def test_histogram_shift_keeps_order_range_geometry_and_the_other_draws():
    rng = np.random.default_rng(3)
    x = rng.random((6, 24, 24, 1)).astype(np.float32)
    mask = blobs(6, 24)
    plain = AugmentConfig(rotation_degrees=20, flip=True, intensity_scale=0.1, gamma=0.2)
    shifted = AugmentConfig(rotation_degrees=20, flip=True, intensity_scale=0.1, gamma=0.2, histogram_shift=0.4)
    a_x, a_mask = (t.numpy() for t in Augmenter(plain, seed=1)(x, mask, 3))
    b_x, b_mask = (t.numpy() for t in Augmenter(shifted, seed=1)(x, mask, 3))
    assert np.array_equal(a_mask, b_mask)
    assert not np.allclose(a_x, b_x, atol=1e-3)
    for a, b in zip(a_x, b_x, strict=True):  # the same sample up to a monotone remapping: the order of the values stays
        order = np.argsort(a.ravel(), kind="stable")
        assert (np.diff(b.ravel()[order]) >= -1e-5).all()
    alone = Augmenter(AugmentConfig(rotation_degrees=0, histogram_shift=0.4), seed=1)(x, mask, 3)[0].numpy()
    np.testing.assert_allclose(alone.min(axis=(1, 2, 3)), x.min(axis=(1, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(alone.max(axis=(1, 2, 3)), x.max(axis=(1, 2, 3)), atol=1e-6)


@pytest.mark.parametrize("normalisation", ["max", "zscore"])
def test_histogram_shift_comes_before_the_intensity_changes_and_leaves_their_draws_alone(normalisation):
    rng = np.random.default_rng(4)
    x = rng.random((6, 16, 16, 2)).astype(np.float32)
    mask = np.zeros_like(x[..., :1])
    intensity = dict(rotation_degrees=0, intensity_scale=0.2, intensity_shift=0.1, gamma=0.3)
    both = Augmenter(AugmentConfig(**intensity, histogram_shift=0.4), seed=2, normalisation=normalisation)
    alone = Augmenter(AugmentConfig(rotation_degrees=0, histogram_shift=0.4), seed=2, normalisation=normalisation)
    rest = Augmenter(AugmentConfig(**intensity), seed=2, normalisation=normalisation)
    composed = rest(alone(x, mask, 7)[0], mask, 7)[0].numpy()
    np.testing.assert_allclose(both(x, mask, 7)[0].numpy(), composed, atol=1e-6)
