"""Small volumes, models and readers shared by the inference tests."""

import csv

import nibabel as nib
import numpy as np

from wmhkeras.inference.loaders import Segmenter

SHAPE = (32, 32, 10)


def write_nifti(path, data, affine, dtype=np.float32, qcode=1, scode=1):
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_qform(affine, code=qcode)
    img.header.set_sform(affine if scode else np.eye(4), code=scode)
    nib.save(img, str(path))
    return path


def blob_volume(seed=0):
    """A noisy [32, 32, 10] RAS volume with one bright, asymmetric blob (the 'lesion')."""
    rng = np.random.default_rng(seed)
    data = rng.uniform(0.05, 0.3, SHAPE).astype(np.float32)
    data[5:9, 20:26, 3:6] = 1.0
    data[6, 26, 4] = 0.9  # touches the blob: still one lesion
    return data


def tiny_model_file(path, channels=1):
    from wmhkeras.models import build_generator

    build_generator("unet", input_shape=(32, 32, channels), depth=2, base_filters=4).save(path)
    return path


def bright_segmenter(input_size=(32, 32)):
    """A 'model' that marks bright voxels: probability 1 where the max-normalised image is > 0.5."""
    import tensorflow as tf

    return Segmenter(lambda x: tf.cast(x[..., :1] > 0.5, tf.float32), ("flair",), "max", input_size, "bright")


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def free_model_file(path, channels=1, gain=30.0, seed=0):
    """A tiny fully convolutional U-Net (input ``(None, None, channels)``, depth 2) saved as ``path``.

    The head's weights are scaled by ``gain`` so that its probabilities spread over (0, 1) instead of
    sitting at 0.5, and a misplaced pixel shows in every comparison.
    """
    import keras

    from wmhkeras.models import build_generator

    keras.utils.set_random_seed(seed)
    model = build_generator("unet", input_shape=(None, None, channels), depth=2, base_filters=4)
    head = model.get_layer("head_conv")
    head.set_weights([w * gain for w in head.get_weights()])
    model.save(path)
    return path


def run_folder(root, data=None, channels=1, checkpoint="best.keras"):
    """A run folder as ``wmhkeras train`` writes it: ``config.yaml`` (``data`` merged into a tiny config) and
    a free-size tiny U-Net as ``checkpoints/<checkpoint>``."""
    from wmhkeras.config import config_from_dict, save_config

    (root / "checkpoints").mkdir(parents=True)
    free_model_file(root / "checkpoints" / checkpoint, channels)
    save_config(config_from_dict({"data": dict(data or {}),
                                  "model": {"arch": "unet", "input_size": [32, 32], "depth": 2, "base_filters": 4}}),
                root / "config.yaml")
    return root
