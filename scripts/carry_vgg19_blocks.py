"""Make the VGG19 weights the package carries: blocks 1 and 2 of the shared ImageNet VGG19 file.

Reads ``vgg19_imagenet_block1-3.npz`` (ImageNet VGG19 blocks 1 to 3, Keras layout; see the README beside
it), checks its sha256, and writes the arrays of ``block1_*`` and ``block2_*`` unchanged (the same ``.npy``
bytes) into ``wmhkeras/losses/weights/vgg19_imagenet_block1-2.npz``: an uncompressed ``.npz`` with fixed
member dates, so the output is the same file, byte for byte, on every machine. The output's sha256 must be
``wmhkeras.losses.backbones.CARRIED_SHA256['vgg19']``; ``--check`` compares a fresh slice with the carried file
instead of writing it. The credit of the weights is ``wmhkeras/losses/weights/NOTICE``.

    python scripts/carry_vgg19_blocks.py [--source ../shared/weights/vgg19_imagenet_block1-3.npz] [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "weights" / "vgg19_imagenet_block1-3.npz"
SOURCE_SHA256 = "f252180c5ff374bea5ad63f3789fa9d81364f6182fcb2c9e40a74f6083057964"
#: The layers carried: VGG19's first two blocks (the outputs of block1_pool and block2_pool need no more).
PREFIXES = ("block1_", "block2_")
#: Every member's date (the earliest a zip file can hold), so that the output does not depend on the clock.
DATE = (1980, 1, 1, 0, 0, 0)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def slice_npz(source: Path, prefixes=PREFIXES) -> bytes:
    """The ``.npz`` bytes holding the members of ``source`` whose names start with one of ``prefixes``."""
    out = io.BytesIO()
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if not info.filename.startswith(prefixes):
                continue
            member = zipfile.ZipInfo(info.filename, date_time=DATE)
            member.external_attr = 0o600 << 16
            with dst.open(member, "w", force_zip64=True) as f:  # as numpy.savez writes its members
                f.write(src.read(info.filename))
    return out.getvalue()


def check_same_arrays(source: Path, data: bytes, prefixes=PREFIXES) -> list[str]:
    """The keys of the slice, after checking each array equals the source's (values, shape, dtype)."""
    with np.load(source) as src, np.load(io.BytesIO(data)) as out:
        want = [k for k in src.files if k.startswith(prefixes)]
        if out.files != want:
            raise SystemExit(f"the slice holds {out.files}, expected {want}")
        for key in want:
            a, b = src[key], out[key]
            if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
                raise SystemExit(f"{key} differs from the source")
    return want


def main(argv=None) -> int:
    sys.path.insert(0, str(REPO))
    from wmhkeras.losses.backbones import CARRIED, CARRIED_SHA256

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="vgg19_imagenet_block1-3.npz")
    parser.add_argument("--out", type=Path, default=CARRIED["vgg19"], help="the .npz to write")
    parser.add_argument("--check", action="store_true", help="compare a fresh slice with --out; write nothing")
    args = parser.parse_args(argv)

    if not args.source.is_file():
        raise SystemExit(f"{args.source} not found (the shared ImageNet VGG19 file; --source PATH)")
    got = sha256(args.source)
    if got != SOURCE_SHA256:
        raise SystemExit(f"{args.source}: sha256 {got}, expected {SOURCE_SHA256}")
    data = slice_npz(args.source)
    keys = check_same_arrays(args.source, data)
    digest = hashlib.sha256(data).hexdigest()
    if digest != CARRIED_SHA256["vgg19"]:
        raise SystemExit(f"the slice's sha256 is {digest}, expected {CARRIED_SHA256['vgg19']} "
                         "(wmhkeras.losses.backbones.CARRIED_SHA256)")
    if args.check:
        if not args.out.is_file() or args.out.read_bytes() != data:
            raise SystemExit(f"{args.out} is not the slice of {args.source}")
        print(f"{args.out}: the slice of {args.source}, {len(data):,} bytes, sha256 {digest}")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(keys)} arrays ({', '.join(sorted({k.split('/')[0] for k in keys}))}), "
          f"{len(data):,} bytes, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
