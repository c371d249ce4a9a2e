"""Generators are fully convolutional: weights trained on patches segment slices of any valid size."""

import keras
import numpy as np
import pytest

from wmhkeras.errors import ConfigError
from wmhkeras.models import build_generator, count_flops
from wmhkeras.models.unet import check_spatial_size, model_depth

RNG = np.random.default_rng(0)
SLICE = RNG.random((1, 64, 96, 1)).astype("float32")


def _patch_and_free(arch: str, depth: int):
    keras.utils.set_random_seed(depth)
    patch_model = build_generator(arch, input_shape=(32, 32, 1), depth=depth, base_filters=4)
    free = build_generator(arch, input_shape=(None, None, 1), depth=depth, base_filters=4)
    free.set_weights(patch_model.get_weights())
    return patch_model, free


@pytest.mark.parametrize("arch", ["unet", "dense_unet"])
def test_patch_weights_on_a_whole_slice_equal_a_model_built_for_that_slice(arch):
    patch_model, free = _patch_and_free(arch, depth=2)
    assert free.input_shape == (None, None, None, 1) and model_depth(free) == 2
    sized = build_generator(arch, input_shape=(64, 96, 1), depth=2, base_filters=4)
    sized.set_weights(patch_model.get_weights())
    out = free(SLICE, training=False).numpy()
    assert out.shape == (1, 64, 96, 1)
    np.testing.assert_allclose(out, sized(SLICE, training=False).numpy(), atol=1e-6)


@pytest.mark.parametrize("arch, depth, margin", [("unet", 1, 8)])
def test_patch_by_patch_equals_the_whole_slice_where_receptive_fields_allow(arch, depth, margin):
    """Away from a patch's border by more than the receptive field's reach, the patch model's output is the
    whole-slice output (patches aligned to 2^depth, so pooling grids coincide). The plain U-Net of depth
    1 reaches 8 pixels; deeper or dense models reach past the middle of a 32-pixel patch, and the exact
    check above covers them."""
    patch_model, free = _patch_and_free(arch, depth)
    full = free(SLICE, training=False).numpy()
    for top in (0, 16, 32):
        for left in (0, 32, 64):
            patch = patch_model(SLICE[:, top:top + 32, left:left + 32], training=False).numpy()
            inner = (slice(None), slice(top + margin, top + 32 - margin), slice(left + margin, left + 32 - margin))
            np.testing.assert_allclose(patch[:, margin:32 - margin, margin:32 - margin], full[inner], atol=1e-5)
    # and near the patch border they differ (the check above is not vacuous)
    patch = patch_model(SLICE[:, 16:48, 32:64], training=False).numpy()
    assert np.abs(patch - full[:, 16:48, 32:64]).max() > 1e-3


def test_sizes_must_divide_by_two_to_the_depth():
    with pytest.raises(ConfigError, match="not divisible by 2\\^depth = 4"):
        build_generator("unet", input_shape=(None, 30, 1), depth=2, base_filters=4)
    with pytest.raises(ConfigError, match="slice 64x90 is not divisible"):
        check_spatial_size((64, 90), depth=2, what="slice")
    check_spatial_size((64, 96), depth=2)


def test_flops_of_a_free_model_at_a_given_size():
    _, free = _patch_and_free("unet", depth=2)
    fixed = build_generator("unet", input_shape=(32, 32, 1), depth=2, base_filters=4)
    assert count_flops(free, (32, 32)) == count_flops(fixed)
    assert count_flops(free, (64, 96)) == 6 * count_flops(fixed)  # convolutions scale with the pixel count
    with pytest.raises(ConfigError, match="fixed input size"):
        count_flops(free)
