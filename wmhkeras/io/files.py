"""The one set of atomic writers and the one staged-folder helper.

Every output file of the toolkit is written through :func:`atomic_path` (a temporary file beside the
final name, then ``os.replace``), so a killed process never leaves a truncated file under a final
name; every output folder that is built in several steps (a run folder, an export) is built under a
hidden name beside its target by :func:`staged_folder` and renamed onto it once complete.
JSON is always strict: NaN and infinities are written as ``null``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from wmhkeras.errors import InputError


def _umask_mode(mode: int = 0o666) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.keras``), since some writers
    choose the format from them. A killed process leaves at most a hidden ``.tmp-`` file, never a
    truncated file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.is_file():  # mkstemp makes 0600 files: give the final file the usual umask mode
            os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return Path(path)


def json_safe(value):
    """A copy of ``value`` that strict JSON can hold: NaN and infinities become ``None``, NumPy scalars
    and arrays become Python numbers and lists, paths become strings, tuples become lists."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # NumPy scalars and arrays, without importing NumPy
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_json(path: str | Path, data) -> Path:
    """Write ``data`` as indented strict JSON (NaN -> ``null``) atomically; returns the path."""
    return atomic_write_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def atomic_write_csv(path: str | Path, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV atomically.

    Args:
        rows: one mapping per line.
        columns: column order; default the keys of the first row, then new keys in order of appearance.
            Missing values are left empty; NaN is written as ``nan``.
    """
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return Path(path)


def read_json(path: str | Path) -> dict:
    """Read a JSON object; a missing, unreadable or malformed file raises :class:`InputError` naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# === Output folders ===


def check_new_folder(out_dir: str | Path, hint: str = "choose another --out") -> Path:
    """The folder a new result will be written to; it must not exist yet, or be an empty folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir}: already exists and is not empty; {hint}")
    return out_dir


class StagedFolder:
    """A hidden folder beside ``target`` that becomes ``target`` on :meth:`commit`.

    The staged folder gets the mode a plain ``mkdir`` would give (``tempfile.mkdtemp`` makes 0700).
    """

    def __init__(self, target: str | Path, replace: bool = False, hint: str = "choose another --out"):
        self.target = Path(target)
        self.replace = replace
        self.hint = hint
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".tmp-{self.target.name}-", dir=self.target.parent))
        os.chmod(self.path, _umask_mode(0o777))
        self.committed = False

    def commit(self) -> Path:
        """Rename the staged folder onto ``target``; with ``replace``, an existing target is removed first."""
        if self.replace and self.target.exists():
            old = self.target.with_name(f".old-{self.target.name}-{os.getpid()}")
            os.replace(self.target, old)
            os.replace(self.path, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            check_new_folder(self.target, self.hint)
            os.replace(self.path, self.target)
        self.committed = True
        self.path = self.target
        return self.target


@contextlib.contextmanager
def staged_folder(target: str | Path, replace: bool = False, hint: str = "choose another --out") -> Iterator[StagedFolder]:
    """Yield a :class:`StagedFolder`; if the block raises before ``commit()``, the staged folder is removed.

    Without ``replace`` the target must be absent or an empty folder (checked before and at commit).
    After ``commit()`` the folder is the target and stays, whatever happens.
    """
    if not replace:
        check_new_folder(target, hint)
    staged = StagedFolder(target, replace=replace, hint=hint)
    try:
        yield staged
    finally:
        if not staged.committed:
            shutil.rmtree(staged.path, ignore_errors=True)
