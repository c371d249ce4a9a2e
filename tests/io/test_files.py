"""The one set of atomic writers (wmhkeras.io.files): strict JSON, CSV rows, text; no temporary file left."""

import json

import numpy as np

from wmhkeras.io.files import atomic_write_csv, atomic_write_json, atomic_write_text


def test_atomic_writers(tmp_path):
    out = atomic_write_json(tmp_path / "s.json", {"a": float("nan"), "b": np.float32(1.5), "c": [np.int64(2)]})
    assert json.loads(out.read_text()) == {"a": None, "b": 1.5, "c": [2]}
    out = atomic_write_csv(tmp_path / "rows.csv", [{"x": 1, "y": 2.5}, {"x": 3, "z": "q"}])
    assert out.read_text().splitlines() == ["x,y,z", "1,2.5,", "3,,q"]
    atomic_write_text(atomic_write_text(tmp_path / "t.md", "v1\n"), "v2\n")
    assert (tmp_path / "t.md").read_text() == "v2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv", "s.json", "t.md"]
