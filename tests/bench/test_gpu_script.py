"""bench/gpu.py, the script a session runs when it is lent a GPU: its --smoke mode on the CPU runs every
figure (each precision, XLA off and on, both models) at tiny sizes and writes the JSON the docs read."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_smoke_run_writes_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "WMH_SHARED_DATA": str(tmp_path / "absent")}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["smoke"] is True and result["device"]["kind"] == "cpu"
    assert result["versions"]["backend"] == "tensorflow" and result["versions"]["tensorflow"]
    assert result["total_s"] > 0

    train = result["train"]
    assert train["not_measured"] == []
    # on the GPU each precision with XLA off and on; the smoke run compiles with XLA for float32 alone
    assert [(f["precision"], f["jit_compile"]) for f in train["figures"]] == [
        ("float32", False), ("float32", True), ("mixed_float16", False), ("mixed_bfloat16", False)]
    for figure in train["figures"]:
        assert "error" not in figure, figure
        assert len(figure["step_s"]) == 2 and figure["median_step_s"] > 0
        assert figure["slices_per_s"] == pytest.approx(2 / figure["median_step_s"])
        assert 0.0 <= figure["loss_last"] <= 1.0  # a Dice loss
    assert {f["optimizer"] for f in train["figures"] if f["precision"] == "mixed_float16"} == {"LossScaleOptimizer"}

    inference = result["inference"]
    assert inference["volume"]["shape"] == [40, 48, 12] and inference["volume"]["source"].startswith("synthetic")
    figures = {(f["model"], f["precision"]): f for f in inference["figures"]}
    assert set(figures) == {(m, p) for m in ("paper", "native") for p in ("float32", "float16", "bfloat16")}
    for (model, precision), figure in figures.items():
        assert "error" not in figure, figure
        assert figure["slices"] == 12 and figure["model_slices_per_s"] > 0
        # the paper model resizes to its 32 x 32 input; the native one keeps 40 x 48 (a multiple of 2 = 2^depth)
        assert figure["model_input_hw"] == ([32, 32] if model == "paper" else [40, 48])
        if precision == "float32":
            assert figure["max_abs_diff_vs_float32"] == 0.0
        else:  # 16-bit arithmetic: close to float32, not equal
            assert 0.0 < figure["max_abs_diff_vs_float32"] < 0.05
