"""wmhkeras.data.shared: the shared data folder from $WMH_SHARED_DATA, else beside the checkout."""

from tests.conftest import REPO
from wmhkeras.data.shared import CHECKOUT, open_ms_data, shared_data


def test_the_variable_names_the_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("WMH_SHARED_DATA", str(tmp_path))
    assert shared_data() == tmp_path and open_ms_data() == tmp_path / "open_ms_data"


def test_unset_or_empty_is_the_folder_beside_the_checkout(monkeypatch):
    assert CHECKOUT == REPO
    for setting in (None, ""):
        if setting is None:
            monkeypatch.delenv("WMH_SHARED_DATA", raising=False)
        else:
            monkeypatch.setenv("WMH_SHARED_DATA", setting)
        assert open_ms_data() == REPO.parent / "shared" / "data" / "open_ms_data"
