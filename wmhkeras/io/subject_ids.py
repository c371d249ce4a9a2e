"""Subject ids are names, never paths: the one check of every id, wherever it comes from.

Ids name output files (``<out>/<subject>_wmh_mask.nii.gz``, ``qc/<subject>.png``, BIDS keys), so an id
that holds a path could write outside ``--out``. :func:`check_subject_ids` refuses, before any work:

- an empty id, or one that starts or ends with a space;
- an id holding a path separator (``/`` or ``\\``, on every system, since ids travel between systems),
  ``..``, or starting with ``.`` (``.`` and ``..`` are folders; ``.name`` is a hidden file, the prefix
  of this toolkit's temporary files);
- an id holding a control character (a line break, a tab, NUL ...);
- an id longer than :data:`MAX_ID_BYTES` bytes in UTF-8 (its file names would exceed the 255-byte limit
  of common file systems);
- two ids that are equal, or equal after case folding (``Sub01`` and ``sub01`` name one file on the
  case-insensitive file systems of macOS and Windows).

Manifests (every command), folders of files, the MICCAI layout, BIDS keys and ``evaluate``'s prediction
lists all go through it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from typing import Optional

from wmhkeras.errors import InputError

#: Longest id in UTF-8 bytes: 255 (the file-name limit) less room for the longest output suffix.
MAX_ID_BYTES = 200
#: Ids shown in one message at most.
_SHOWN = 5


def id_problem(subject: str) -> str | None:
    """Why ``subject`` cannot be an id (rules: module docstring), or None when it can."""
    if not isinstance(subject, str) or not subject:
        return "is empty"
    if subject != subject.strip():
        return "starts or ends with a space"
    if "/" in subject or "\\" in subject:
        return "holds a path separator"
    if ".." in subject or subject.startswith("."):
        return "holds '..' or starts with '.'"
    if any(unicodedata.category(c) == "Cc" for c in subject):
        return "holds a control character"
    if len(subject.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        return f"is longer than {MAX_ID_BYTES} bytes"
    return None


def check_subject_ids(ids: Iterable[str], source: str, files: Optional[Sequence[object]] = None) -> None:
    """Refuse ids that are paths, not names, or that collide (rules: module docstring).

    Args:
        ids: every subject id of one command's inputs, together (collisions are looked for across them).
        source: where they come from (a manifest, a folder), named in the message.
        files: the file each id comes from, in the order of ``ids``, named with colliding ids.

    Raises:
        InputError: one line naming ``source``, the bad ids (``repr``, so that control characters show)
            and why; the first kind of problem found is reported.
    """
    ids = list(ids)
    bad = [(s, why) for s in ids if (why := id_problem(s))]
    if bad:
        shown = "; ".join(f"{s!r} {why}" for s, why in bad[:_SHOWN])
        more = f" (and {len(bad) - _SHOWN} more)" if len(bad) > _SHOWN else ""
        raise InputError(f"{source}: subject ids must be plain names, not paths: {shown}{more}; rename them")
    first: dict[str, int] = {}
    clashes: list[tuple[int, int]] = []
    for i, s in enumerate(ids):
        if s.casefold() in first:
            clashes.append((first[s.casefold()], i))
        else:
            first[s.casefold()] = i

    def named(i: int) -> str:
        return f"{ids[i]!r}" + (f" ({files[i]})" if files is not None else "")

    if clashes:
        shown = "; ".join(f"{named(a)} and {named(b)}" if ids[a] != ids[b] or files is not None else f"{ids[a]!r} is listed twice"
                          for a, b in clashes[:_SHOWN])
        more = f" (and {len(clashes) - _SHOWN} more)" if len(clashes) > _SHOWN else ""
        raise InputError(f"{source}: subject ids collide (ids name files; a case-insensitive file system sees "
                         f"upper and lower case as one): {shown}{more}; make every id unique")
