"""Shared test fixtures: no network, no downloads, the real data path configurable."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wmhkeras.data.shared import open_ms_data, shared_data

REPO = Path(__file__).resolve().parents[1]
#: Real test data (two MS patients, CC-BY): WMH_SHARED_DATA points at the folder holding open_ms_data/.
SHARED_DATA = shared_data()
OPEN_MS = open_ms_data()
#: ImageNet VGG19 blocks 1-3 (Keras layout, .npz; CC BY 4.0), beside the data: WMH_SHARED_WEIGHTS overrides.
SHARED_WEIGHTS = Path(os.environ.get("WMH_SHARED_WEIGHTS", SHARED_DATA.parent / "weights"))
SHARED_VGG19 = SHARED_WEIGHTS / "vgg19_imagenet_block1-3.npz"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("WMHKERAS_BF16", "0")  # segment --precision auto: float32 on every machine


@pytest.fixture(autouse=True)
def _isolated_keras_home(tmp_path_factory, monkeypatch):
    """Every test sees an empty Keras cache, so nothing can quietly use or fetch weights."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))


def shared_data_required() -> bool:
    """Whether a missing real data folder fails the tests that need it instead of skipping them: on CI
    (``CI`` set, as CI services do, to anything but ``0`` or ``false``) or with ``WMH_REQUIRE_SHARED_DATA=1``."""
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false") or os.environ.get("WMH_REQUIRE_SHARED_DATA", "").strip() == "1"


def require_open_ms(folder: Path | None = None) -> Path:
    """``folder`` (default :data:`OPEN_MS`) when it holds the real data; else the test skips, or fails where
    the data must be there (:func:`shared_data_required`)."""
    folder = OPEN_MS if folder is None else folder
    if not (folder / "patient07" / "FLAIR.nii.gz").is_file():
        message = f"real data not found at {folder} (set WMH_SHARED_DATA)"
        if shared_data_required():
            pytest.fail(f"{message}; CI or WMH_REQUIRE_SHARED_DATA=1 needs it", pytrace=False)
        pytest.skip(message)
    return folder


@pytest.fixture
def open_ms():
    """Path to ../shared/data/open_ms_data (:func:`require_open_ms`: skips when the real data is absent,
    fails on CI)."""
    return require_open_ms()


@pytest.fixture
def shared_vgg19():
    """Path to ../shared/weights/vgg19_imagenet_block1-3.npz (skips when it is absent)."""
    if not SHARED_VGG19.is_file():
        pytest.skip(f"shared VGG19 weights not found at {SHARED_VGG19} (set WMH_SHARED_WEIGHTS)")
    return SHARED_VGG19


@pytest.fixture
def data():
    """Two 32 x 32 inputs and their packed targets (mask, image), for the generator and adversarial tests."""
    rng = np.random.default_rng(0)
    x = rng.random((2, 32, 32, 1), dtype=np.float32)
    mask = (rng.random((2, 32, 32, 1)) > 0.8).astype("float32")
    return x, np.concatenate([mask, x], axis=-1)


#: A second process that holds folder ``argv[1]`` as command ``argv[2]`` until it is killed.
HOLD = """
import sys, time
from wmhkeras.io.lock import FolderLock
FolderLock(sys.argv[1], sys.argv[2], create=True).acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def other_process():
    """``start(folder, command)``: a process holding ``folder``, as ``wmhkeras <command>``; killed at the end."""
    started = []

    def start(folder: Path, command: str = "segment") -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), command], stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def setup_kwargs():
    """The keyword arguments setup.py passes to ``setuptools.setup`` (setup.py run with setup() captured)."""
    import runpy

    import setuptools

    captured = {}
    real = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = real
    assert captured, "setup.py did not call setuptools.setup"
    return captured


def build_wheel(folder: Path) -> Path:
    """``pip wheel`` of a copy of the sources in ``folder / "src"`` (so the checkout gets no ``build/`` or
    ``*.egg-info`` while other tests run), into ``folder / "dist"``, with this environment's setuptools (no
    build isolation: nothing is fetched). Returns the wheel."""
    import shutil

    src, dist = folder / "src", folder / "dist"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("wmhkeras", "cli", "saved_models"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                             "-q", "-w", str(dist)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = dist.glob("wmhkeras-*.whl")
    return wheel
