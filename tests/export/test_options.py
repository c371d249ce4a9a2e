"""Export options: TFLite variants, the default output folder, the output-folder check."""

from __future__ import annotations

from pathlib import Path

import pytest

from wmhkeras.errors import ConfigError, InputError
from wmhkeras.export.options import check_out_dir, default_out_dir, parse_variants


def test_parse_variants_and_default_out_dir(tmp_path):
    assert parse_variants(None) is None
    assert parse_variants("fp16, int8,fp16") == ("fp16", "int8")
    assert parse_variants("none") == () and parse_variants("") == ()
    with pytest.raises(ConfigError, match="'fp8'"):
        parse_variants("fp8")
    assert default_out_dir("runs/demo") == Path("saved_models/demo")
    assert default_out_dir("runs/demo/checkpoints/best.keras") == Path("saved_models/demo")
    assert default_out_dir("models/wide.keras") == Path("saved_models/wide")


def test_check_out_dir(tmp_path):
    assert check_out_dir(tmp_path / "new", force=False) == tmp_path / "new"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InputError, match="not empty; choose another output folder or use --force"):
        check_out_dir(tmp_path / "full", force=False)
    assert check_out_dir(tmp_path / "full", force=True) == tmp_path / "full"
    (tmp_path / "file").write_text("x")
    for force in (False, True):
        with pytest.raises(InputError, match="not a folder"):
            check_out_dir(tmp_path / "file", force=force)
