"""The header pre-pass: every input scan checked from its header, before any voxel is read.

Every command that reads scans (``segment``, ``check``, ``train``, ``evaluate``, ``experiment``) calls
:func:`check_inputs` on all its inputs before any work starts, and :func:`~wmhkeras.io.nifti.load_volume`
runs the same checks (:func:`open_nifti`, :func:`check_header`) before it reads voxels, so the two can
never disagree. A file is refused, with one line naming it (:class:`~wmhkeras.errors.InputError`), when

- it is missing, a folder, empty, unreadable, or not a NIfTI-1/NIfTI-2 file nibabel can parse;
- it is not 3D (or 4D with a single volume), or a dimension is 0 or negative;
- its voxel type is not a real number type (RGB, complex and unknown type codes are refused);
- its affine (the sform when its code is set, else the qform, else the pixel sizes) is not finite, has
  an entry beyond 1e5 mm, is singular (a zero voxel size), or has no orientation nibabel can find; the
  same for the qform and the sform each when its code is set (outputs carry both);
- the header claims more voxels than the file holds: a ``.nii`` file must hold ``vox_offset`` plus the
  voxels' bytes; for a ``.nii.gz`` file the gzip trailer (ISIZE) gives the uncompressed size modulo
  2^32, compared with the same number. When the trailer disagrees (a truncated file, several gzip
  members, data after the image), the file is decompressed once, streaming, without keeping the data,
  to count its bytes. The limit: from 4 GiB uncompressed on, a file short by an exact multiple of
  4 GiB would pass the trailer test (its voxels then fail when read);
- within one subject, its grid (shape, and affine within :data:`AFFINE_TOLERANCE` mm) differs from
  the first file's (the FLAIR).

What only the voxels can show (NaN or infinite values, compressed data damaged inside the stream, an
empty image, label values) is found when the volume is read, and fails that subject alone where a
command can go on without it (``segment``, ``evaluate``).

nibabel's own messages about headers it repairs on reading (``sizeof_hdr should be 348``, negative
pixel sizes) are logged here at info level, naming the file, instead of being printed bare.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from wmhkeras.errors import InputError, exception_line, one_line

log = logging.getLogger(__name__)

#: Largest difference between two affines (mm) still treated as the same grid.
AFFINE_TOLERANCE = 1e-3
#: Smallest |det| of the affine's 3x3 part (mm^3 per voxel) that is not a zero voxel size.
MIN_VOXEL_VOLUME = 1e-12
#: Largest |entry| of a usable affine, in mm (a scanner's field of view is well under a metre).
MAX_AFFINE_MM = 1e5
#: Inputs named after the first problem in :func:`check_inputs`'s message.
_MORE_SHOWN = 3


@dataclass(frozen=True)
class Header:
    """What a NIfTI header says, checked: the file, its 3D grid, voxel type and where the voxels are.

    ``native_shape``/``native_affine``/``path`` have the names of :class:`~wmhkeras.io.nifti.Volume`'s, so
    :func:`~wmhkeras.io.nifti.check_same_grid` compares headers and volumes alike.
    """

    path: Path
    native_shape: tuple[int, int, int]
    native_affine: np.ndarray
    dtype: np.dtype
    offset: int
    data_bytes: int


def _name(path: Path) -> str:
    """The path as it goes into a message: as typed, unless it holds control characters (then quoted)."""
    text = str(path)
    return text if text.isprintable() else ascii(text)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(one_line(record.getMessage()))


@contextlib.contextmanager
def nibabel_quiet(path: Path) -> Iterator[None]:
    """nibabel's header-repair messages logged here (info, naming the file); NumPy warnings silenced."""
    logger, collect = logging.getLogger("nibabel.global"), _Collect()
    handlers, propagate = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [collect], False
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.handlers, logger.propagate = handlers, propagate
        for message in dict.fromkeys(collect.messages):
            log.info("%s: %s", _name(path), message)


def open_nifti(path: str | Path) -> nib.Nifti1Image | nib.Nifti2Image:
    """Parse a NIfTI file's header (no voxel is read): missing, folder, empty, unreadable or foreign files
    raise :class:`InputError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{_name(path)}: file not found")
    if not path.is_file():
        raise InputError(f"{_name(path)}: is a folder, not a NIfTI file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"{_name(path)}: cannot be read ({exception_line(exc)})") from None
    if size == 0:
        raise InputError(f"{_name(path)}: the file is empty (0 bytes)")
    try:
        with nibabel_quiet(path):
            img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for foreign or broken files
        raise InputError(f"{_name(path)}: not a readable NIfTI file ({exception_line(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{_name(path)}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    return img


def check_shape(shape: Sequence[int], name: str) -> tuple[int, int, int]:
    """The 3D grid of ``shape``: 3D, or 4D with one volume, every dimension at least 1."""
    shape = tuple(int(s) for s in shape)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        raise InputError(f"{name}: expected a 3D volume (or 4D with one volume), got shape {shape}")
    if min(shape) < 1:
        raise InputError(f"{name}: a dimension is 0 or negative in shape {shape}; the header is damaged")
    return shape[:3]


def _orientable(affine: np.ndarray) -> bool:
    """Whether nibabel finds the voxel axes' orientation (what reorienting to RAS needs)."""
    try:
        ornt = nib.orientations.io_orientation(affine)
    except Exception:  # nibabel raises ValueError on degenerate matrices
        return False
    return bool(np.all(np.isfinite(ornt)))


def check_affine(affine: np.ndarray, name: str, what: str = "the affine (qform/sform)") -> np.ndarray:
    """``affine`` when it is finite, within :data:`MAX_AFFINE_MM` mm, not singular (every voxel size
    non-zero), and its orientation can be found; ``what`` names it in the message."""
    affine = np.asarray(affine, dtype=np.float64)
    with np.errstate(all="ignore"):
        usable = (affine.shape == (4, 4) and bool(np.all(np.isfinite(affine)))
                  and float(np.abs(affine).max()) <= MAX_AFFINE_MM
                  and abs(float(np.linalg.det(affine[:3, :3]))) >= MIN_VOXEL_VOLUME and _orientable(affine))
    if not usable:
        raise InputError(f"{name}: {what} is not usable (not finite, beyond {MAX_AFFINE_MM:g} mm, a zero voxel "
                         f"size or no orientation): {one_line(str(np.round(affine, 4).tolist()))}")
    return affine


def _check_coded_forms(header, path: Path, name: str) -> None:
    """The qform and the sform, each when its code is set: outputs carry both, so both must be usable."""
    for form in ("qform", "sform"):
        if int(header[f"{form}_code"]) <= 0:
            continue
        try:
            with nibabel_quiet(path):
                matrix = getattr(header, f"get_{form}")(coded=False)
        except Exception as exc:  # nibabel refuses some impossible quaternions
            raise InputError(f"{name}: the {form} cannot be computed ({exception_line(exc)})") from None
        check_affine(matrix, name, f"the {form} (code {int(header[f'{form}_code'])})")


def _gzip_bytes(path: Path, needed: int) -> int:
    """The uncompressed bytes of a gzip file, counted (streaming, several members allowed) up to ``needed``."""
    total, inflate = 0, zlib.decompressobj(wbits=31)
    with open(path, "rb") as f:
        pending = b""
        while total < needed:
            if not pending:
                pending = f.read(1 << 20)
                if not pending:
                    break
            try:
                total += len(inflate.decompress(pending, 1 << 22))
            except zlib.error as exc:
                raise InputError(f"{_name(path)}: the compressed data is damaged after {total} bytes "
                                 f"({exception_line(exc)})") from None
            pending = inflate.unconsumed_tail
            if inflate.eof:  # another gzip member may follow
                pending, inflate = inflate.unused_data + pending, zlib.decompressobj(wbits=31)
    return total


def stored_bytes(path: Path, needed: int) -> int:
    """How many bytes of the (uncompressed) NIfTI file ``path`` holds, where it matters: at least
    ``needed`` when it holds them all (rules: module docstring)."""
    size = path.stat().st_size
    if not path.name.lower().endswith(".gz"):
        return size
    if size >= 18:  # a gzip member is at least 18 bytes; the last 4 are ISIZE
        with open(path, "rb") as f:
            f.seek(-4, 2)
            if int.from_bytes(f.read(4), "little") == needed % (1 << 32):
                return needed
    return _gzip_bytes(path, needed)


def check_header(img: nib.Nifti1Image | nib.Nifti2Image, path: str | Path) -> Header:
    """The checks of a parsed file's header (rules: module docstring); :class:`InputError` names the file."""
    path = Path(path)
    name = _name(path)
    try:
        with nibabel_quiet(path):
            raw_shape, dtype = img.header.get_data_shape(), img.header.get_data_dtype()
            offset = int(img.dataobj.offset)
    except Exception as exc:  # a damaged header can fail in many ways here
        raise InputError(f"{name}: the header cannot be read ({exception_line(exc)})") from None
    shape = check_shape(raw_shape, name)
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InputError(f"{name}: voxel type {dtype} is not a real number type (RGB and complex images are not scans "
                         "this toolkit reads)")
    affine = check_affine(img.affine, name)
    _check_coded_forms(img.header, path, name)
    data_bytes = math.prod(int(s) for s in raw_shape) * dtype.itemsize
    needed = offset + data_bytes
    held = stored_bytes(path, needed)
    if held < needed:
        raise InputError(f"{name}: the header claims {'x'.join(map(str, shape))} voxels of {dtype} from byte {offset} "
                         f"({needed} bytes), but the file holds {held}; it is truncated or its header is wrong")
    return Header(path, shape, affine, dtype, offset, data_bytes)


def read_header(path: str | Path) -> Header:
    """Parse and check one file's header (no voxel is read): :func:`open_nifti`, then :func:`check_header`."""
    return check_header(open_nifti(path), path)


def check_same_grid(reference, other, tolerance: float = AFFINE_TOLERANCE) -> None:
    """Raise :class:`InputError` unless ``other`` lies on ``reference``'s grid: the same shape, and affines
    within ``tolerance`` mm. Both are :class:`Header` s or :class:`~wmhkeras.io.nifti.Volume` s."""
    if reference.native_shape != other.native_shape:
        raise InputError(f"{_name(other.path)}: shape {other.native_shape} differs from {reference.path.name} "
                         f"{reference.native_shape}")
    diff = float(np.abs(reference.native_affine - other.native_affine).max())
    if diff > tolerance:
        raise InputError(f"{_name(other.path)}: affine differs from {reference.path.name} by up to {diff:.4g} mm "
                         f"(tolerance {tolerance:g})")


def _group_problem(files: Sequence[Optional[Path]], headers: dict[Path, Header | InputError],
                   tolerance: float) -> Optional[str]:
    """The first problem of one group of files (the first is the reference grid), or None."""
    checked: list[Header] = []
    for path in (Path(p) for p in files if p is not None):
        if path not in headers:
            try:
                headers[path] = read_header(path)
            except InputError as exc:
                headers[path] = exc
        if isinstance(headers[path], InputError):
            return str(headers[path])
        checked.append(headers[path])
    try:
        for other in checked[1:]:
            check_same_grid(checked[0], other, tolerance)
    except InputError as exc:
        return str(exc)
    return None


def check_inputs(groups: Mapping[str, Sequence[Optional[Path]]], tolerance: float = AFFINE_TOLERANCE) -> None:
    """The pre-pass of every command: the headers of every file, and each group's files on one grid.

    Args:
        groups: by name (a subject id), the files that must share a grid, the reference first (FLAIR,
            then T1, label, brain mask); ``None`` entries are skipped. A file in several groups is read once.

    Raises:
        InputError: one line naming the first file with a problem (:func:`read_header`) or off its
            group's grid, and how many other groups have one.
    """
    headers: dict[Path, Header | InputError] = {}
    problems = {name: p for name, files in groups.items() if (p := _group_problem(files, headers, tolerance))}
    if not problems:
        log.debug("header pre-pass: %d files of %d inputs are fine", len(headers), len(groups))
        return
    first, *others = problems.values()
    if others:
        names = ", ".join(list(problems)[1:1 + _MORE_SHOWN]) + (", ..." if len(others) > _MORE_SHOWN else "")
        first += f" (and {len(others)} more inputs with problems: {one_line(names)})"
    raise InputError(first)
