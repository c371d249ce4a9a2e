"""wmhkeras: WMH segmentation in FLAIR MRI with the Siamese content loss (Mac, Moody & Khademi, MIDL 2020)."""

import json
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "wmhkeras" / "__init__.py").read_text().split("#:")[0], version)

# Runtime requirements: compatible ranges. Each lower bound is the oldest minor release the test suite has
# run against (requirements.lock on Python 3.11, or the newest release still published for Python 3.10,
# the oldest Python TensorFlow 2.21 has wheels for); each upper bound is the next major release, or the
# next minor one for TensorFlow and TensorBoard, which are released in step. `make` installs the exact
# pinned set of requirements.lock (-c); tests/test_packaging.py checks every range admits those pins.
# Keras: TensorFlow 2.21 needs >= 3.12; the multi-worker workaround (wmhkeras/training/multiworker.py)
# is tied to Keras 3.15.1 and refuses any other version at run time, the rest of the package is not.
# h5py is not listed: wmhkeras never imports it; Keras and TensorFlow require it with their own ranges.
INSTALL_REQUIRES = [
    "tensorflow>=2.21,<2.22",
    "keras>=3.12,<4",
    "tensorboard>=2.21,<2.22",
    "numpy>=2.2,<3",
    "scipy>=1.15,<2",
    "nibabel>=5.4,<6",
    "matplotlib>=3.10,<4",
    "click>=8.5,<9",
    "PyYAML>=6.0,<7",
    "tqdm>=4.70,<5",
]
# scikit-image is the reference the preprocessing's resize is tested against (tests/data/), used by no
# library code: lesion labelling, properties and boundaries are scipy.ndimage (the challenge's definitions).
# bids-validator and bidsschematools check the BIDS names of tests/io and tests/cli/test_bids* (docs/bids.md).
TEST_REQUIRES = ["pytest>=9.2,<10", "pytest-xdist>=3.8,<4", "scikit-image>=0.25,<1", "bids-validator>=1.14,<2", "bidsschematools>=2,<3"]

# The built-in models (saved_models/builtin_models.json names them) are installed as the package data
# wmhkeras/saved_models/: each model's card and SavedModel, not its TFLite files (README: "Built-in models").
BUILTIN = json.loads((here / "saved_models" / "builtin_models.json").read_text())["models"]
MODEL_FILES = ["builtin_models.json"] + [f"{name}/{pattern}" for name in BUILTIN
                                         for pattern in ("model_card.json", "export_report.json", "saved_model/**/*")]

setup(
    name="wmhkeras",
    version=version["__version__"],
    description="White matter hyperintensity segmentation with a Siamese content loss (TensorFlow / Keras 3)",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # Every Python that TensorFlow 2.21.0 publishes wheels for: 3.10, 3.11, 3.12, 3.13 (none for 3.14).
    python_requires=">=3.10,<3.14",
    classifiers=[f"Programming Language :: Python :: 3.{minor}" for minor in (10, 11, 12, 13)],
    # The top-level cli/ folder is installed as wmhkeras.cli: no package named `cli` in site-packages.
    packages=find_packages(include=["wmhkeras", "wmhkeras.*"]) + ["wmhkeras.cli", "wmhkeras.saved_models"],
    package_dir={"wmhkeras.cli": "cli", "wmhkeras.saved_models": "saved_models"},
    # The ImageNet VGG19 blocks 1-2 of the content loss, with their credit (wmhkeras/losses/weights/NOTICE),
    # and the built-in models.
    package_data={"wmhkeras.losses": ["weights/*.npz", "weights/NOTICE"], "wmhkeras.saved_models": MODEL_FILES},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "litert": ["ai-edge-litert>=2.3,<3"],
        "gpu": ["tensorflow[and-cuda]>=2.21,<2.22"],
        "test": TEST_REQUIRES,
        # the linter stays pinned: another ruff release checks other rules
        "dev": [*TEST_REQUIRES, "ruff==0.17.6"],
    },
    entry_points={"console_scripts": ["wmhkeras=wmhkeras.cli.main:main"]},
)
