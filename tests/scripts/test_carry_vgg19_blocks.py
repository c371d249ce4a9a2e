"""scripts/carry_vgg19_blocks.py: the carried VGG19 blocks are the byte-exact slice of the shared file."""

import pytest

from tests.scripts.helpers import load_script
from wmhkeras.losses.backbones import CARRIED

carry = load_script("carry_vgg19_blocks")


def test_the_carried_file_is_the_reproducible_slice_of_the_shared_one(shared_vgg19, tmp_path, capsys):
    data = carry.slice_npz(shared_vgg19)
    assert data == carry.slice_npz(shared_vgg19) == CARRIED["vgg19"].read_bytes()
    assert carry.check_same_arrays(shared_vgg19, data)[-1] == "block2_conv2/bias"
    assert carry.main(["--source", str(shared_vgg19), "--check"]) == 0
    out = tmp_path / "weights" / "vgg19.npz"
    assert carry.main(["--source", str(shared_vgg19), "--out", str(out)]) == 0
    assert out.read_bytes() == data and "1,042,806 bytes" in capsys.readouterr().out


def test_a_wrong_source_is_refused(tmp_path):
    (tmp_path / "other.npz").write_bytes(b"x")
    with pytest.raises(SystemExit, match="sha256"):
        carry.main(["--source", str(tmp_path / "other.npz"), "--out", str(tmp_path / "out.npz")])
    with pytest.raises(SystemExit, match="not found"):
        carry.main(["--source", str(tmp_path / "missing.npz")])
    assert not (tmp_path / "out.npz").exists()
