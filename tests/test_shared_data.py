"""The real-data tests (``open_ms`` fixture, :func:`tests.conftest.require_open_ms`) skip on a local run
without ``../shared/data`` and fail where the data must be there: on CI, or with WMH_REQUIRE_SHARED_DATA=1."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, require_open_ms

#: A real-data test that needs nothing but the data (no TensorFlow): run in a subprocess below.
REAL_DATA_TEST = "tests/io/test_nifti.py::test_real_qform_only_volume_round_trips"


@pytest.fixture
def local(monkeypatch):
    """A plain local run: neither CI nor WMH_REQUIRE_SHARED_DATA set."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("WMH_REQUIRE_SHARED_DATA", raising=False)
    return monkeypatch


def test_missing_data_skips_a_local_run_with_todays_message(local, tmp_path):
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_open_ms(tmp_path)
    assert str(skipped.value) == f"real data not found at {tmp_path} (set WMH_SHARED_DATA)"
    for value in ("", "0", "false", "False"):  # CI explicitly off
        local.setenv("CI", value)
        with pytest.raises(pytest.skip.Exception):
            require_open_ms(tmp_path)
    local.setenv("WMH_REQUIRE_SHARED_DATA", "0")
    with pytest.raises(pytest.skip.Exception):
        require_open_ms(tmp_path)


@pytest.mark.parametrize("variable, value", [("CI", "true"), ("CI", "1"), ("WMH_REQUIRE_SHARED_DATA", "1")])
def test_missing_data_fails_on_ci(local, tmp_path, variable, value):
    local.setenv(variable, value)
    with pytest.raises(pytest.fail.Exception, match=f"real data not found at {tmp_path}"):
        require_open_ms(tmp_path)


def test_present_data_is_returned_everywhere(local, tmp_path):
    (tmp_path / "patient07").mkdir()
    (tmp_path / "patient07" / "FLAIR.nii.gz").write_bytes(b"")
    assert require_open_ms(tmp_path) == tmp_path
    local.setenv("CI", "true")
    assert require_open_ms(tmp_path) == tmp_path


def _pytest(tmp_path, **env) -> subprocess.CompletedProcess:
    """One real-data test in a fresh pytest, with the shared data pointed at an empty folder."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "WMH_REQUIRE_SHARED_DATA")}
    environ.update(WMH_SHARED_DATA=str(tmp_path / "absent"), **env)
    return subprocess.run([sys.executable, "-m", "pytest", REAL_DATA_TEST, "-q", "-rs", "-p", "no:cacheprovider"],
                          cwd=REPO, env=environ, capture_output=True, text=True, timeout=120)


def test_the_fixture_fails_a_ci_run_and_skips_a_local_one(tmp_path):
    local = _pytest(tmp_path)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout[-2000:]
    assert "real data not found at" in local.stdout
    ci = _pytest(tmp_path, CI="true")
    assert ci.returncode == 1 and "1 error" in ci.stdout, ci.stdout[-2000:]
    assert "CI or WMH_REQUIRE_SHARED_DATA=1 needs it" in ci.stdout
