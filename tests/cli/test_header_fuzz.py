"""A header fuzzer: 200 seeded mutations of a valid small NIfTI through ``check``, the header pre-pass and
``segment``, in-process (click's CliRunner).

Mutations: bit flips in the 348-byte header, truncations at random offsets (of the ``.nii`` bytes or of the
gzip stream), ``dim`` and ``pixdim`` entries set to 0, negative, NaN, infinite or huge, a wrong
``vox_offset``, wrong datatype codes (with and without a matching ``bitpix``), a damaged sform/qform,
and two voxel-level ones (NaN voxels, damaged compressed data), written as ``.nii.gz`` or ``.nii``.

Every case must end, within 30 s, with exit code 0, 1 or 2 and never a traceback (an exception escaping
the command shows in ``result.exception`` as anything but ``SystemExit``). "One line": click writes the
error report to stderr (``result.stderr``, apart from stdout since click 8.2); for exit 2 stderr is exactly
one line, ``error: ...``; ``check`` writes one ``FAIL <subject>: ...`` line per failed subject on stderr;
``segment``'s stderr holds only its progress lines (``subjects: i/n (s)``) and one ``failed: <subject>: ...``
line per failed subject. "Nothing under a final name": exit 2 leaves no output folder at all; exit 1 leaves
no file of the mutated subject and no temporary file, and the good subject's outputs complete.

Time: ``check`` and the pre-pass run all 200 cases (a few seconds, not marked slow); ``segment`` loads
the model in every call: 128 calls took 146 s on this project's 2-core machine (200 would take near
4 minutes), so every fifth case (40, every mutation kind) goes through ``segment``, in a test marked slow
(it still runs in ``make test`` and CI).
"""

import gzip
import re
import struct
import time

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from tests.inference.helpers import blob_volume, tiny_model_file
from wmhkeras.cli.main import main
from wmhkeras.errors import InputError
from wmhkeras.io.header_check import check_inputs

CASES = 200
#: ``segment`` loads the model in every call (about a second each here): every fifth case goes through it.
SEGMENT_EVERY = 5
LIMIT_S = 30.0
HUGE = (0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e38, 1e-30)
DATATYPES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 99, 4096, 32767, -1)
BITPIX = {2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32, 1024: 64, 1280: 64,
          1536: 128, 1792: 128, 2048: 256, 2304: 32}
PROGRESS = re.compile(r"subjects: \d+/\d+ \(\d+ s\)")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A valid NIfTI-1 (the blob volume, float32, RAS, qform and sform): its ``.nii`` bytes and the file."""
    folder = tmp_path_factory.mktemp("fuzz")
    img = nib.Nifti1Image(blob_volume(0), np.diag([0.9, 0.9, 3.0, 1.0]))
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    nib.save(img, str(folder / "good.nii.gz"))
    return gzip.decompress((folder / "good.nii.gz").read_bytes()), folder / "good.nii.gz"


def _set(raw: bytearray, fmt: str, offset: int, value) -> None:
    struct.pack_into("<" + fmt, raw, offset, value)


def mutate(raw: bytes, seed: int) -> tuple[str, bytes, str]:
    """Case ``seed``: ``(what was done, file bytes, suffix)``; the file is gzip-compressed for ``.nii.gz``."""
    rng = np.random.default_rng(seed)
    b = bytearray(raw)
    kind = ["bitflip", "truncate", "dim", "pixdim", "vox_offset", "datatype", "affine", "voxels"][seed % 8]
    suffix = ".nii" if rng.random() < 0.3 else ".nii.gz"
    if kind == "bitflip":
        bits = rng.integers(0, 348 * 8, size=int(rng.integers(1, 5)))
        for bit in bits:
            b[bit // 8] ^= 1 << (bit % 8)
        what = f"bit flips {sorted(bits.tolist())}"
    elif kind == "truncate":
        data = bytes(b) if suffix == ".nii" else gzip.compress(bytes(b))
        cut = int(rng.integers(0, len(data)))
        return f"truncated at {cut} of {len(data)} ({suffix})", data[:cut], suffix
    elif kind == "dim":
        k, value = int(rng.integers(0, 8)), int(rng.choice([0, -1, -32768, 32767, 2, 4, 7, 8, 9, 1000]))
        _set(b, "h", 40 + 2 * k, value)
        what = f"dim[{k}] = {value}"
    elif kind == "pixdim":
        k, value = int(rng.integers(0, 8)), float(rng.choice(HUGE))
        _set(b, "f", 76 + 4 * k, value)
        if rng.random() < 0.5:  # pixdim decides the affine only without sform
            _set(b, "h", 254, 0)
        what = f"pixdim[{k}] = {value} (sform code {struct.unpack_from('<h', b, 254)[0]})"
    elif kind == "vox_offset":
        value = float(rng.choice([0.0, 100.0, 348.0, 352.0 + 16 * int(rng.integers(1, 4000)), float("nan"),
                                  -352.0, 1e20, float(len(raw))]))
        _set(b, "f", 108, value)
        what = f"vox_offset = {value}"
    elif kind == "datatype":
        code = int(rng.choice(DATATYPES))
        _set(b, "h", 70, code)
        if rng.random() < 0.5:
            _set(b, "h", 72, BITPIX.get(code, 7))
        what = f"datatype = {code}, bitpix = {struct.unpack_from('<h', b, 72)[0]}"
    elif kind == "affine":
        offset = int(rng.choice([256, 260, 264, 268, 280, 284, 296, 300, 312, 316, 320]))
        value = float(rng.choice(HUGE))
        _set(b, "f", offset, value)
        what = f"qform/sform float at byte {offset} = {value}"
    else:
        n = (len(raw) - 352) // 4
        if rng.random() < 0.5 or suffix == ".nii":
            for i in rng.integers(0, n, size=3):
                _set(b, "f", 352 + 4 * int(i), float(rng.choice([np.nan, np.inf, -np.inf])))
            what = "NaN/inf voxels"
        else:  # damage the compressed stream in its middle; the gzip trailer (ISIZE) stays right
            data = bytearray(gzip.compress(bytes(b)))
            for i in rng.integers(len(data) // 3, 2 * len(data) // 3, size=4):
                data[int(i)] ^= 0xFF
            return "damaged compressed data", bytes(data), suffix
    data = bytes(b)
    return what, (gzip.compress(data) if suffix == ".nii.gz" else data), suffix


@pytest.fixture(scope="module")
def cases(base, tmp_path_factory):
    """The 200 mutated files, each in its own folder with a one-subject manifest: ``[(what, path)]``."""
    raw = base[0]
    root = tmp_path_factory.mktemp("cases")
    made = []
    for seed in range(CASES):
        what, data, suffix = mutate(raw, seed)
        folder = root / f"case{seed:03d}"
        folder.mkdir()
        path = folder / f"m{suffix}"
        path.write_bytes(data)
        (folder / "manifest.csv").write_text(f"subject,site,flair,t1,label\nm,a,{path.name},,\n")
        made.append((f"case {seed}: {what}", path))
    return made


def _prepass(path) -> bool:
    """The header pre-pass alone: True, or False after an InputError whose message is one line naming the file."""
    try:
        check_inputs({"m": [path]})
        return True
    except InputError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc), str(exc)
        return False


def _assert_clean_exit(res, elapsed, what, command):
    assert res.exception is None or isinstance(res.exception, SystemExit), f"{command} {what}: {res.exception!r}"
    assert res.exit_code in (0, 1, 2), f"{command} {what}: exit {res.exit_code}"
    assert "Traceback" not in res.output, f"{command} {what}: {res.output}"
    assert elapsed < LIMIT_S, f"{command} {what}: {elapsed:.1f} s"
    if res.exit_code == 2 and not res.stderr.startswith("FAIL"):
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), f"{command} {what}: {res.stderr!r}"


def test_200_mutations_through_check_and_the_prepass(base, cases):
    """All 200 cases: ``check`` ends with 0 or 2 and one ``FAIL`` line; the pre-pass agrees with it (a file
    the pre-pass refuses is never passed by ``check``, which reads the same header first)."""
    runner = CliRunner()
    counts = {0: 0, 2: 0}
    refused = 0
    for what, path in cases:
        start = time.monotonic()
        res = runner.invoke(main, ["check", str(path.parent)])
        _assert_clean_exit(res, time.monotonic() - start, what, "check")
        assert res.exit_code in (0, 2), what
        counts[res.exit_code] += 1
        if res.exit_code == 2:
            assert res.stderr.startswith("FAIL m: ") and res.stderr.count("\n") == 1, (what, res.stderr)
        passed = _prepass(path)
        refused += not passed
        assert passed or res.exit_code == 2, f"check passed a file the pre-pass refuses: {what}"
    assert min(counts.values()) > 20 and refused > 50, (counts, refused)  # the fuzzer reaches both outcomes


@pytest.mark.slow
def test_every_fifth_mutation_through_segment(base, cases, tmp_path):
    """40 cases (every fifth: each mutation kind) through ``segment GOOD MUTATED``: exit 2 exactly when the
    pre-pass refuses the file, with no output folder; else 0 or 1 (the mutated subject failed alone)."""
    _, good = base
    model = tiny_model_file(tmp_path / "tiny.keras")
    runner = CliRunner()
    outcomes = {0: 0, 1: 0, 2: 0}
    for what, path in cases[::SEGMENT_EVERY]:
        passed = _prepass(path)
        out = path.parent / "out"
        start = time.monotonic()
        res = runner.invoke(main, ["segment", str(model), str(good), str(path), "--out", str(out)])
        _assert_clean_exit(res, time.monotonic() - start, what, "segment")
        outcomes[res.exit_code] += 1
        if res.exit_code == 2:
            assert not passed, f"segment refused a file the pre-pass accepts: {what}: {res.stderr}"
            assert not out.exists(), f"{what}: exit 2 left {sorted(p.name for p in out.rglob('*'))}"
            continue
        assert passed, f"segment ran on a file the pre-pass refuses: {what}"
        _assert_outputs(out, res, what)
    assert min(outcomes.values()) >= 3, outcomes


def _assert_outputs(out, res, what):
    """Exit 0 or 1: the good subject complete; the mutated one complete (0) or without any file (1)."""
    lines = res.stderr.splitlines()
    failed = [line for line in lines if line.startswith("failed: ")]
    assert all(PROGRESS.fullmatch(line) or line.startswith("failed: m: ") for line in lines), (what, res.stderr)
    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if n.startswith(".tmp")], (what, names)
    assert {"good_wmh_prob.nii.gz", "good_wmh_mask.nii.gz", "good_lesions.csv", "summary.csv"} <= names, (what, names)
    if res.exit_code == 1:
        assert len(failed) == 1 and not [n for n in names if n.startswith("m_")], (what, names, res.stderr)
    else:
        assert not failed and {"m_wmh_prob.nii.gz", "m_wmh_mask.nii.gz", "m_lesions.csv"} <= names, (what, names)
