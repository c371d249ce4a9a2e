"""Package data: the carried ImageNet VGG19 blocks and their credit are declared in setup.py and travel in a
built wheel, unchanged."""

import hashlib
import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO, build_wheel

#: The carried weights and their credit, relative to the repository (and to site-packages once installed).
WEIGHTS = ("wmhkeras/losses/weights/vgg19_imagenet_block1-2.npz", "wmhkeras/losses/weights/NOTICE")
#: sha256 of the carried .npz (wmhkeras.losses.backbones.CARRIED_SHA256, kept TensorFlow-free here).
NPZ_SHA256 = "cbe2c8c3ee31ec9d6816100262b136608e3d7c2c3b0a9426de22b086702b4bc4"
#: Run with the installed wheel first on the path: where wmhkeras is, and its VGG19 ImageNet weights.
INSTALLED = """
import wmhkeras
from wmhkeras.losses.backbones import build_feature_extractor, weights_record
record = weights_record("vgg19", "imagenet")
model = build_feature_extractor("vgg19", ["block2_pool"], "imagenet", (16, 16, 3))
print(wmhkeras.__file__, record["source"], record["sha256"], tuple(model.outputs[0].shape))
"""


def test_setup_declares_the_carried_weights_and_their_credit(setup_kwargs):
    globs = setup_kwargs["package_data"]["wmhkeras.losses"]
    for path in WEIGHTS:
        assert (REPO / path).is_file()
        assert any((REPO / "wmhkeras" / "losses").glob(g) for g in globs if (REPO / path).match(g))
    assert hashlib.sha256((REPO / WEIGHTS[0]).read_bytes()).hexdigest() == NPZ_SHA256


@pytest.mark.slow
def test_a_built_wheel_carries_the_weights_and_their_credit(tmp_path):
    """``pip wheel`` of a copy of the sources (:func:`tests.conftest.build_wheel`)."""
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert set(WEIGHTS) <= names, sorted(n for n in names if "losses" in n)
        assert hashlib.sha256(z.read(WEIGHTS[0])).hexdigest() == NPZ_SHA256
        assert z.read(WEIGHTS[1]) == (REPO / WEIGHTS[1]).read_bytes()
        record = z.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    assert all(path in record for path in WEIGHTS)

    # Installed from the wheel (no dependencies: the test's own are used), vgg19 ImageNet weights load with
    # an empty Keras cache, from the installed package.
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                             str(wheel)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    (tmp_path / "keras_home").mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "KERAS_HOME": str(tmp_path / "keras_home")}
    result = subprocess.run([sys.executable, "-c", INSTALLED], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    where, source, sha256, shape = result.stdout.strip().split(maxsplit=3)
    assert (where, source, sha256, shape) == (str(site / "wmhkeras" / "__init__.py"), "carried", NPZ_SHA256,
                                              "(None, 4, 4, 128)")
