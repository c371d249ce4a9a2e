"""Resampling modes (fixed / spacing / none) and 2.5D context: the one implementation and its geometry."""

import numpy as np
import pytest

from wmhkeras.data import preprocessing as pp
from wmhkeras.errors import ConfigError


def _blobs(shape_xy, voxel_mm):
    """Smooth content sampled at voxel centres: two Gaussian blobs of 5 mm sigma in a 40 x 48 mm field."""
    xs = (np.arange(shape_xy[0]) + 0.5) * voxel_mm
    ys = (np.arange(shape_xy[1]) + 0.5) * voxel_mm
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    img = np.exp(-((gx - 14) ** 2 + (gy - 20) ** 2) / (2 * 5.0**2)) + 0.8 * np.exp(-((gx - 28) ** 2 + (gy - 30) ** 2) / (2 * 5.0**2))
    return img.astype(np.float32)


def test_grid_sizes_per_mode():
    fixed = pp.Resampling("fixed", (64, 64))
    assert [t.numpy().tolist() for t in fixed.grid((182, 218))] == [[64, 64], [64, 64]]
    spacing = pp.Resampling("spacing", spacing=(1.0, 1.0), multiple=16)
    # 0.5 mm x 0.8 mm pixels: 182 * 0.5 = 91 mm -> 91 px, 218 * 0.8 = 174.4 -> 174 px; padded to 96 x 176
    size, padded = spacing.grid((182, 218), (0.5, 0.8, 3.0))
    assert size.numpy().tolist() == [91, 174] and padded.numpy().tolist() == [96, 176]
    none = pp.Resampling("none", multiple=32)
    assert [t.numpy().tolist() for t in none.grid((182, 218))] == [[182, 218], [192, 224]]


def test_none_mode_pads_centred_and_restores_exactly():
    rng = np.random.default_rng(0)
    slices = rng.random((3, 10, 13, 2)).astype(np.float32)
    r = pp.Resampling("none", multiple=8)
    model_grid = r.to_model(slices).numpy()
    assert model_grid.shape == (3, 16, 16, 2)
    # 10 -> 16: 3 rows before, 3 after; 13 -> 16: 1 column before, 2 after
    np.testing.assert_array_equal(model_grid[:, 3:13, 1:14], slices)
    assert model_grid[:, :3].sum() == 0 and model_grid[:, 13:].sum() == 0 and model_grid[:, :, 0].sum() == 0
    np.testing.assert_array_equal(r.from_model(model_grid, (10, 13)).numpy(), slices)


def test_spacing_mode_at_the_target_spacing_is_the_none_mode():
    slices = np.random.default_rng(1).random((2, 20, 28, 1)).astype(np.float32)
    a = pp.Resampling("spacing", spacing=(1.0, 1.0), multiple=16).to_model(slices, (1.0, 1.0, 2.0)).numpy()
    b = pp.Resampling("none", multiple=16).to_model(slices).numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_half_mm_and_one_mm_volumes_give_the_same_model_input_and_mask():
    """The same content at 0.5 mm and at 1 mm reaches the model on the same 1 mm grid, and a mask
    computed there lands back on each input's exact grid, agreeing on the common (1 mm) grid."""
    coarse, fine = _blobs((40, 48), 1.0), _blobs((80, 96), 0.5)
    r = pp.Resampling("spacing", spacing=(1.0, 1.0), multiple=16)
    x_coarse = r.to_model(coarse[None, :, :, None], (1.0, 1.0, 1.0)).numpy()
    x_fine = r.to_model(fine[None, :, :, None], (0.5, 0.5, 1.0)).numpy()
    assert x_coarse.shape == x_fine.shape == (1, 48, 48, 1)
    assert np.abs(x_coarse - x_fine).max() < 0.03  # anti-aliasing of the 0.5 mm input: interpolation tolerance

    def model(x):  # a stand-in network: a soft threshold at 0.5
        return 1 / (1 + np.exp(-(x - 0.5) * 40))

    p_coarse = r.from_model(model(x_coarse), (40, 48), (1.0, 1.0, 1.0)).numpy()[0, :, :, 0]
    p_fine = r.from_model(model(x_fine), (80, 96), (0.5, 0.5, 1.0)).numpy()[0, :, :, 0]
    assert p_coarse.shape == (40, 48) and p_fine.shape == (80, 96)  # each on its input's exact grid
    fine_on_coarse = p_fine.reshape(40, 2, 48, 2).mean(axis=(1, 3))  # 2 x 2 blocks = the 1 mm voxels
    a, b = p_coarse >= 0.5, fine_on_coarse >= 0.5
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert a.sum() > 50 and dice > 0.97


def test_add_context_stacks_neighbours_with_edges_repeated():
    z = np.arange(4, dtype=np.float32)
    slices = np.stack([np.broadcast_to(z[:, None, None], (4, 2, 2)), 10 + np.broadcast_to(z[:, None, None], (4, 2, 2))], -1)
    out = pp.add_context(slices, 1).numpy()
    assert out.shape == (4, 2, 2, 6)
    # channel order: modality 0 at z-1, z, z+1, then modality 1 at z-1, z, z+1
    assert out[0, 0, 0].tolist() == [0, 0, 1, 10, 10, 11]
    assert out[2, 0, 0].tolist() == [1, 2, 3, 11, 12, 13]
    assert out[3, 1, 1].tolist() == [2, 3, 3, 12, 13, 13]
    assert pp.center_channels(2, 1) == [1, 4]
    np.testing.assert_array_equal(out[..., pp.center_channels(2, 1)], slices)
    np.testing.assert_array_equal(pp.add_context(slices, 0).numpy(), slices)


def test_preprocess_and_restore_in_every_mode_keep_the_input_grid():
    rng = np.random.default_rng(2)
    vol = rng.random((20, 26, 5)).astype(np.float32)
    for r in (pp.Resampling("fixed", (16, 16)), pp.Resampling("spacing", spacing=(1.0, 1.0), multiple=8),
              pp.Resampling("none", multiple=8)):
        x = pp.preprocess_volume([vol], resampling=r, voxel_size=(0.7, 1.3, 2.0), context=1).numpy()
        assert x.shape[0] == 5 and x.shape[-1] == 3
        restored = pp.restore_volume(x[..., 1:2], vol.shape, resampling=r, voxel_size=(0.7, 1.3, 2.0)).numpy()
        assert restored.shape == vol.shape


def test_bad_resampling_settings_are_refused():
    with pytest.raises(ConfigError, match="data.resample: 'cubic'"):
        pp.Resampling("cubic")
    with pytest.raises(ConfigError, match="needs data.spacing"):
        pp.Resampling("spacing")
    with pytest.raises(ConfigError, match="needs input_size"):
        pp.Resampling("fixed")
    with pytest.raises(ConfigError, match="context_slices must be >= 0"):
        pp.add_context(np.zeros((2, 2, 2, 1)), -1)
