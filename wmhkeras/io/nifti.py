"""NIfTI reading and writing that keeps the input's own space.

Volumes are read with nibabel, checked before any work starts, and reoriented to the closest
canonical (RAS+) orientation, in which all processing happens. Outputs are written back on the
input's exact grid: the same shape, voxel order, affine and qform/sform codes. nibabel's
``img.affine`` is the sform when its code is set, else the qform, so qform-only files are honoured.

Every problem raises :class:`~wmhkeras.errors.InputError` with a one-line message that names the
file and what is wrong.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from wmhkeras.errors import InputError, exception_line
from wmhkeras.io.files import atomic_path
from wmhkeras.io.header_check import (  # noqa: F401  (AFFINE_TOLERANCE, check_same_grid: part of this module's API)
    AFFINE_TOLERANCE,
    check_affine,
    check_header,
    check_same_grid,
    check_shape,
    nibabel_quiet,
    open_nifti,
)

log = logging.getLogger(__name__)

#: Label values allowed in ground truth (2 = other pathology, as in the MICCAI 2017 WMH data).
LABEL_VALUES = (0, 1, 2)
_RAS = nib.orientations.axcodes2ornt(("R", "A", "S"))


@dataclass
class Volume:
    """One NIfTI volume in canonical RAS orientation, with what is needed to write on its grid.

    ``data``: float32 ``[X, Y, Z]`` in RAS+ voxel order; ``affine``: its voxel-to-world matrix.
    ``header``: the input's header (for writing outputs back); ``to_canonical``: the orientation
    transform applied on reading.
    """

    path: Path
    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    to_canonical: np.ndarray

    @property
    def native_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.header.get_data_shape()[:3])

    @property
    def native_affine(self) -> np.ndarray:
        return self.header.get_best_affine()

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the canonical axes."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def to_native(self, array: np.ndarray) -> np.ndarray:
        """Reorder a canonical ``[X, Y, Z]`` array back into the input file's voxel order."""
        back = nib.orientations.ornt_transform(_RAS, nib.orientations.io_orientation(self.native_affine))
        return nib.orientations.apply_orientation(array, back)


def load_volume(path: str | Path, kind: str = "image") -> Volume:
    """Read and check one volume; ``kind`` is ``image`` (FLAIR, T1), ``label`` (0/1/2 mask) or
    ``mask`` (a segmentation result: any finite values, may be empty).

    Checks, in order: the header, as the pre-pass checks it (:mod:`wmhkeras.io.header_check`: the file
    exists and parses; 3D, or 4D with a single volume; a real voxel type; a usable affine; the file holds
    the voxels its header claims); then the voxels: readable (compressed data undamaged: a ``.nii.gz``
    file's gzip CRC is checked), finite; for
    labels, values in {0, 1, 2}; for images, some non-zero signal.
    """
    img = open_nifti(path)
    check_header(img, path)
    if not str(path).lower().endswith(".gz"):
        return image_volume(img, path, kind)
    return _checked_gzip_volume(img, Path(path), kind)


def _checked_gzip_volume(img: nib.Nifti1Image | nib.Nifti2Image, path: Path, kind: str) -> Volume:
    """:func:`image_volume` of a ``.nii.gz`` file whose voxels are read through one :mod:`gzip` stream that
    is then read to its end, where gzip checks the CRC: compressed data damaged inside the stream is
    refused before any voxel check, never read as wrong voxels (nibabel alone stops after the voxels,
    before the CRC). One decompression, no extra copy of the data."""
    shape = check_shape(img.shape, str(path))
    try:
        with gzip.open(path, "rb") as f:
            with nibabel_quiet(path):
                streamed = type(img).from_file_map(type(img).make_file_map({"image": f}))
            data = np.asanyarray(streamed.dataobj, dtype=np.float32).reshape(shape)
            f.read()  # the rest of the stream (nothing but the trailer of a healthy file): checks the CRC
    except Exception as exc:  # BadGzipFile, EOFError, zlib.error on damaged or truncated compressed data
        raise InputError(f"{path}: cannot read the voxel data, the compressed data is damaged or truncated "
                         f"({exception_line(exc)})") from None
    return _volume(img, data, path, kind)


def image_volume(img: nib.Nifti1Image | nib.Nifti2Image, path: str | Path, kind: str = "image") -> Volume:
    """A parsed NIfTI image (from a file or built in memory) as a checked :class:`Volume`: the checks and
    reorientation of :func:`load_volume` after parsing; ``path`` names the image in messages."""
    shape = check_shape(img.shape, str(path))
    try:
        data = np.asanyarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as exc:  # a file shorter than its header says, a foreign type
        raise InputError(f"{path}: cannot read the voxel data, the file may be truncated or damaged "
                         f"({exception_line(exc)})") from None
    return _volume(img, data, path, kind)


def _volume(img: nib.Nifti1Image | nib.Nifti2Image, data: np.ndarray, path: str | Path, kind: str) -> Volume:
    """The voxel checks of ``data`` (``img``'s voxels, float32, 3D) and the reorientation to RAS."""
    path = Path(path)
    affine = check_affine(img.affine, str(path))
    if not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{path}: {bad} voxels are not finite (NaN or inf)")
    if kind == "label":
        values = np.unique(data)
        extra = [v for v in values if not np.any(np.isclose(v, LABEL_VALUES))]
        if extra:
            shown = ", ".join(f"{v:g}" for v in extra[:5])
            raise InputError(f"{path}: label values must be 0, 1 or 2 (2 = other pathology); found {shown}")
        data = np.rint(data).astype(np.float32)
    elif kind == "image" and not np.any(data):
        raise InputError(f"{path}: the image is empty (all voxels are 0)")

    to_canonical = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), _RAS)
    canonical = np.ascontiguousarray(nib.orientations.apply_orientation(data, to_canonical), dtype=np.float32)
    canonical_affine = affine @ nib.orientations.inv_ornt_aff(to_canonical, data.shape)
    header = img.header.copy()
    return Volume(path=path, data=canonical, affine=canonical_affine, header=header, to_canonical=to_canonical)


def canonical_grid(img) -> tuple[list[int], list[float]]:
    """The ``[X, Y, Z]`` shape and voxel size (mm) of a NIfTI image in canonical (RAS) axis order, from its
    header alone (no voxel is read)."""
    axes = nib.orientations.io_orientation(img.affine)[:, 0].astype(int)
    sizes = np.sqrt((np.asarray(img.affine)[:3, :3] ** 2).sum(axis=0))
    shape, voxel = [0, 0, 0], [0.0, 0.0, 0.0]
    for native_axis, out_axis in enumerate(axes):
        shape[out_axis] = int(img.shape[native_axis])
        voxel[out_axis] = float(sizes[native_axis])
    return shape, voxel


def same_grid(a: Volume, b: Volume, tolerance: float = AFFINE_TOLERANCE) -> bool:
    """True when two volumes share shape and affine (within ``tolerance`` mm)."""
    return a.native_shape == b.native_shape and np.allclose(a.native_affine, b.native_affine, atol=tolerance)


def save_like(array: np.ndarray, reference: Volume, path: str | Path, dtype=np.float32) -> Path:
    """Write a canonical ``[X, Y, Z]`` array on ``reference``'s native grid, atomically.

    The output has the reference's shape, voxel order, affine, and qform/sform matrices and codes;
    only the data type and scaling change.
    """
    img = image_like(array, reference, dtype)
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    log.debug("wrote %s", path)
    return path


def image_like(array: np.ndarray, reference: Volume, dtype=np.float32) -> nib.Nifti1Image:
    """The in-memory image :func:`save_like` writes: a canonical ``[X, Y, Z]`` array on ``reference``'s
    native grid (shape, voxel order, affine, qform/sform matrices and codes), as ``dtype`` unscaled."""
    array = np.asarray(array)
    if array.shape != reference.data.shape:
        raise ValueError(f"array shape {array.shape} does not match the reference {reference.data.shape}")
    native = np.ascontiguousarray(reference.to_native(array)).astype(dtype)
    header = reference.header.copy()
    if len(header.get_data_shape()) != 3:
        header.set_data_shape(native.shape)
    header.set_data_dtype(dtype)
    header.set_slope_inter(None, None)
    qform, qcode = reference.header.get_qform(coded=False), int(reference.header["qform_code"])
    sform, scode = reference.header.get_sform(coded=False), int(reference.header["sform_code"])
    img = nib.Nifti1Image(native, reference.native_affine, header)
    img.header.set_qform(qform, code=qcode)
    img.header.set_sform(sform, code=scode)
    return img
