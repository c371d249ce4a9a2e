"""The wheel `pip wheel .` builds carries the built-in models: installed into a new virtual environment outside
the checkout, `wmhkeras segment FLAIR.nii.gz --out out/` segments with the default model, from another folder,
with nothing downloaded.

CI-sized: the new environment gets wmhkeras from the wheel (installed with --no-deps --no-index) and its
dependencies from this environment's site-packages (a .pth line), so nothing is fetched or compiled.
"""

import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import build_wheel
from tests.inference.helpers import write_nifti

pytestmark = pytest.mark.slow


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def _flair(path):
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (48, 48, 12)), indexing="ij")
    data = np.where(x**2 + y**2 + 0.3 * z**2 < 0.8, 100.0, 0.0).astype(np.float32)
    data[20:26, 22:27, 4:8] = 260.0
    return write_nifti(path, data, np.eye(4))


def test_the_wheel_segments_with_its_builtin_model_from_a_fresh_venv(tmp_path):
    wheel = build_wheel(tmp_path)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    target = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # the dependencies: this environment's site-packages, appended after the new environment's own (a path in
    # a .pth file is added as it is: its own .pth files, this checkout's editable install among them, are not read)
    ours = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
    (target / "_dependencies.pth").write_text("\n".join(ours) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _flair(elsewhere / "sub1_FLAIR.nii.gz")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    where = _run([str(python), "-c", "import wmhkeras; print(wmhkeras.__file__)"], cwd=elsewhere, env=env).stdout
    assert Path(where.strip()).is_relative_to(target)  # wmhkeras comes from the wheel, not this checkout
    listed = _run([str(venv / "bin" / "wmhkeras"), "models"], cwd=elsewhere, env=env).stdout
    assert f"built-in models in {target / 'wmhkeras' / 'saved_models'}" in listed
    done = _run([str(venv / "bin" / "wmhkeras"), "segment", "sub1_FLAIR.nii.gz", "--out", "out"], cwd=elsewhere, env=env)
    assert "the built-in model open_ms_flair (the default; no MODEL given)" in done.stdout
    assert "segmented 1 of 1 subjects" in done.stdout
    record = json.loads((elsewhere / "out" / "segment.json").read_text())["model"]
    assert (record["builtin"], record["default"]) == ("open_ms_flair", True)
    assert Path(record["source"]).is_relative_to(target)
    assert (elsewhere / "out" / "sub1_wmh_mask.nii.gz").is_file()
