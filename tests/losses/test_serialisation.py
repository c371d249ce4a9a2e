"""Every loss and metric round-trips through its Keras config."""

import keras
import pytest

from wmhkeras.losses import (
    BinaryCrossentropyLoss,
    BinaryFocalLoss,
    DiceBCELoss,
    DiceLoss,
    DiceMetric,
    GeneralizedDiceLoss,
    HybridLoss,
    SiameseContentLoss,
    TverskyLoss,
)


@pytest.mark.parametrize("obj", [
    DiceLoss(epsilon=0.5), TverskyLoss(alpha=0.4, beta=0.6), GeneralizedDiceLoss(),
    BinaryCrossentropyLoss(label_smoothing=0.1), BinaryFocalLoss(gamma=3.0), DiceBCELoss(epsilon=0.5),
    SiameseContentLoss(backbone="vgg19", layers=["block1_pool"], weights="random",
                       reduction_mode="per_layer_mean", input_size=None),
    HybridLoss(SiameseContentLoss(weights="random"), TverskyLoss(alpha=0.2), weight=0.25),
    DiceMetric(threshold=0.4, name="val_dice"),
], ids=lambda o: type(o).__name__)
def test_config_round_trip(obj):
    config = obj.get_config()
    clone = type(obj).from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(revived) is type(obj) and revived.get_config() == config
