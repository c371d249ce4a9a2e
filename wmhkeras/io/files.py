"""The one set of atomic writers and the one staged-folder helper.

Every output file of the toolkit is written through :func:`atomic_path` (a temporary file beside the
final name, then ``os.replace``), so a killed process never leaves a truncated file under a final
name; every output folder that is built in several steps (a run folder, an export) is built under a
hidden name beside its target by :func:`staged_folder` and renamed onto it once complete.
JSON is always strict: NaN and infinities are written as ``null``.

Permissions: temporary files and staged folders are created as a plain ``open`` / ``mkdir`` would
create them (mode ``0o666`` / ``0o777`` less the process umask, default ACLs applied), never with
``tempfile``'s private ``0o600`` / ``0o700``; the rename keeps the mode, so a group that may read the
parent folder may read the results.

Failures: an ``OSError`` while creating, writing or renaming (a full disk, no permission) is raised as
:class:`~wmhkeras.errors.WriteError` naming the final file; the temporary file or staged folder is
removed, so nothing partial is left under a final name and no stray temporary file either.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Optional

from wmhkeras.errors import InputError, WriteError


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Raise an ``OSError`` of the block as :class:`~wmhkeras.errors.WriteError` naming ``path``."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        raise WriteError(path, err) from err


#: The system's reasons for a refused write, as TensorFlow's file system words them, and their errno.
_WRITE_REASONS = {os.strerror(c): c for c in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EFBIG)}
#: TensorFlow's message for a file it cannot write: "{{function_node ...}} <file>; <reason> [Op:...]".
_TF_FILE_ERROR = re.compile(r"(?:\{\{.*?\}\}\s*)?(?P<file>\S.*?); (?P<reason>"
                            + "|".join(map(re.escape, _WRITE_REASONS)) + r")(?:\s*\[Op:\w+\])?", re.DOTALL)


def tf_write_error(exc: BaseException) -> Optional[WriteError]:
    """TensorFlow's error for a file it cannot write (a SavedModel, TensorBoard's events; its ``message``
    names the file and the system's reason) as a :class:`~wmhkeras.errors.WriteError`; None for any other
    error (an out-of-memory ``ResourceExhaustedError`` included). Needs no TensorFlow import."""
    message = getattr(exc, "message", None)
    match = _TF_FILE_ERROR.fullmatch(message.strip()) if isinstance(message, str) else None
    if match is None:
        return None
    return WriteError(match["file"], OSError(_WRITE_REASONS[match["reason"]], match["reason"]))


def make_folder(path: str | Path) -> Path:
    """``mkdir -p path`` (umask permissions); a failure is a :class:`~wmhkeras.errors.WriteError`."""
    with writing(path):
        Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


def _create_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _create_folder(path: Path) -> None:
    os.mkdir(path, 0o777)


def _unused(folder: Path, prefix: str, suffix: str, create: Callable[[Path], None]) -> Path:
    """Create (with ``create``) and return a new hidden name ``folder/<prefix><random><suffix>``."""
    for _ in range(100):
        path = folder / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            create(path)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no unused temporary name {prefix}*{suffix}", str(folder))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.keras``), since some writers
    choose the format from them. A killed process leaves at most a hidden ``.tmp-`` file, never a
    truncated file under the final name. The file is created with the umask's mode (module docstring).

    Raises:
        WriteError: an ``OSError`` while creating, writing (inside the block) or renaming; nothing is left.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _unused(path.parent, f".tmp-{path.name.split('.')[0]}-", "".join(path.suffixes), _create_file)
    try:
        with writing(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


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


def sha256(path: str | Path) -> str:
    """The SHA-256 of a file, as ``sha256sum`` prints it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, or of a folder (a SavedModel): the SHA-256 of its files' ``sha256sum`` lines
    (``<hash>  ./<relative path>``, sorted by path), the same as
    ``(cd DIR && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum``."""
    path = Path(path)
    if not path.is_dir():
        return sha256(path)
    files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: ("./" + p.relative_to(path).as_posix()).encode())
    lines = "".join(f"{sha256(p)}  ./{p.relative_to(path).as_posix()}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


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

    The staged folder gets the mode a plain ``mkdir`` would give (module docstring); a failure to create
    or rename it is a :class:`~wmhkeras.errors.WriteError`.
    """

    def __init__(self, target: str | Path, replace: bool = False, hint: str = "choose another --out"):
        self.target = Path(target)
        self.replace = replace
        self.hint = hint
        with writing(self.target):
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.path = _unused(self.target.parent, f".tmp-{self.target.name}-", "", _create_folder)
        self.committed = False

    def commit(self) -> Path:
        """Rename the staged folder onto ``target``; with ``replace``, an existing target is removed first.

        Raises:
            WriteError: the rename failed (the staged folder stays, and is removed by :func:`staged_folder`).
        """
        with writing(self.target):
            return self._commit()

    def _commit(self) -> Path:
        if self.replace and self.target.exists():
            old = self.target.with_name(f".old-{self.target.name}-{os.getpid()}")
            os.replace(self.target, old)
            try:
                os.replace(self.path, self.target)
            except OSError:
                os.replace(old, self.target)  # the earlier folder stays as it was
                raise
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
    except WriteError as err:  # name the file as the user will look for it, not by its staged path
        raise _final_name(err, staged) from err
    finally:
        if not staged.committed:
            shutil.rmtree(staged.path, ignore_errors=True)


def _final_name(err: WriteError, staged: StagedFolder) -> WriteError:
    """``err`` naming its file under the staged folder's target instead of the hidden staged path."""
    try:
        inside = Path(err.filename).relative_to(staged.path)
    except ValueError:
        return err
    return WriteError(staged.target / inside, err)
