"""wmhkeras: WMH segmentation in FLAIR MRI with the Siamese content loss (Mac, Moody & Khademi, MIDL 2020)."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "wmhkeras" / "__init__.py").read_text().split("#:")[0], version)

setup(
    name="wmhkeras",
    version=version["__version__"],
    description="White matter hyperintensity segmentation with a Siamese content loss (TensorFlow / Keras 3)",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",
    # The top-level cli/ folder is installed as wmhkeras.cli: no package named `cli` in site-packages.
    packages=find_packages(include=["wmhkeras", "wmhkeras.*"]) + ["wmhkeras.cli"],
    package_dir={"wmhkeras.cli": "cli"},
    install_requires=[
        "tensorflow==2.21.0",
        "keras==3.15.1",
        "tensorboard==2.21.0",
        "numpy==2.4.6",
        "scipy==1.17.1",
        "nibabel==5.4.2",
        "scikit-image==0.26.0",
        "matplotlib==3.11.2",
        "click==8.5.1",
        "PyYAML==6.0.4",
        "tqdm==4.70.1",
        "h5py==3.14.0",
    ],
    extras_require={
        "litert": ["ai-edge-litert==2.3.0"],
        "gpu": ["tensorflow[and-cuda]==2.21.0"],
        "dev": ["pytest==9.2.0", "ruff==0.17.6"],
    },
    entry_points={"console_scripts": ["wmhkeras=wmhkeras.cli.main:main"]},
)
