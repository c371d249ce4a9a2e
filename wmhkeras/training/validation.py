"""Validation samples and the TensorBoard preview, read from the cache in a fixed order (NumPy only).

Validation covers every brain slice of the validation subjects (``sampling: slices``, each centred on
the ``model.input_size`` canvas as in training) or every ``data.patch_size`` tile with brain
(``patches``, tiling the resampled slice), in subject / slice / tile order, with hard labels. An
entry ``(record, slice, row0, col0)`` names one sample: the index of the subject in the record list,
the slice, and the top-left corner of its tile (``0, 0`` for whole slices).
"""

from __future__ import annotations

import numpy as np

from wmhkeras.config import Config
from wmhkeras.data.preprocessing import center_channels
from wmhkeras.training.cache import BRAIN_BIT, LESION_BIT, CachedSubject
from wmhkeras.training.sampler import crop, fit_canvas

#: Largest number of painted (lesion synthesis) slices appended to the TensorBoard preview.
PAINTED_PREVIEW = 4
#: Largest number of slices in the TensorBoard preview batch.
PREVIEW_SIZE = 8

Entry = tuple[int, int, int, int]


def validation_entries(cfg: Config, records: list[CachedSubject]) -> list[Entry]:
    """``(record, slice, row0, col0)`` of every brain slice (patches: every tile of it), in order."""
    entries = []
    for i, r in enumerate(records):
        for k in np.flatnonzero(r.has_brain):
            if cfg.data.sampling == "slices":
                entries.append((i, int(k), 0, 0))
                continue
            h, w = cfg.data.patch_size
            _, height, width, _ = r.x_shape
            entries.extend((i, int(k), r0, c0) for r0 in range(0, height, h) for c0 in range(0, width, w))
    return entries


def drop_empty_tiles(cache, records: list[CachedSubject], entries: list[Entry], patch_size) -> list[Entry]:
    """Patches mode: keep the validation tiles that contain brain."""
    kept, h, w = [], *patch_size
    last, labels = None, None
    for i, k, r0, c0 in entries:
        if (i, k) != last:  # tiles of one slice come together: read its labels once
            labels, last = cache.read_labels(records[i].subject, k), (i, k)
        if (labels[r0:r0 + h, c0:c0 + w] & BRAIN_BIT).any():
            kept.append((i, k, r0, c0))
    return kept


def validation_table(cfg: Config, cache, records: list[CachedSubject]) -> np.ndarray:
    """Every validation sample as an ``(n, 4)`` int64 table of entries (patches: tiles with brain only)."""
    entries = validation_entries(cfg, records)
    if cfg.data.sampling == "patches":
        entries = drop_empty_tiles(cache, records, entries, cfg.data.patch_size)
    return np.asarray(entries, np.int64).reshape(-1, 4)


def read_entries(cfg: Config, cache, records: list[CachedSubject], entries) -> tuple[np.ndarray, np.ndarray]:
    """``x`` ``(n, H, W, C)`` and hard ``mask`` ``(n, H, W, 1)`` float32 of the entries."""
    xs, masks = [], []
    for i, k, r0, c0 in entries:
        x, labels = cache.read(records[i].subject, k)
        mask = (labels & LESION_BIT).astype(np.float32)[..., None]
        if cfg.data.sampling == "patches":
            h, w = cfg.data.patch_size
            x, mask = crop(x, r0, c0, h, w), crop(mask, r0, c0, h, w)
        else:
            x, mask = fit_canvas(x, cfg.model.input_size), fit_canvas(mask, cfg.model.input_size)
        xs.append(x)
        masks.append(mask)
    return np.stack(xs), np.stack(masks)


def preview_entries(cfg: Config, cache, records: list[CachedSubject]) -> list[Entry]:
    """Up to :data:`PREVIEW_SIZE` slices with lesion, the largest first, one subject after another."""
    per_subject = []
    for i, r in enumerate(records):
        order = [int(k) for k in np.argsort(-r.lesion, kind="stable") if r.lesion[k] > 0]
        per_subject.append([(i, k) for k in order])
    picked = []
    for rank in range(max((len(p) for p in per_subject), default=0)):
        picked.extend(p[rank] for p in per_subject if rank < len(p))
    picked = picked[: min(PREVIEW_SIZE, cfg.train.batch_size)]
    entries = []
    for i, k in picked:
        if cfg.data.sampling == "slices":
            entries.append((i, k, 0, 0))
        else:  # a patch around the middle lesion voxel of the slice
            labels = cache.read_labels(records[i].subject, k)
            voxels = np.flatnonzero(labels & LESION_BIT)
            r, c = divmod(int(voxels[len(voxels) // 2]), labels.shape[1])
            h, w = cfg.data.patch_size
            entries.append((i, k, r - h // 2, c - w // 2))
    return entries


def flair_channel(cfg: Config) -> int:
    """The channel of ``x`` holding the FLAIR of the slice itself (the centre slice with 2.5D context)."""
    return center_channels(len(cfg.data.modalities), cfg.data.context_slices)[0]


def preview_batch(cfg: Config, cache, validation: list[CachedSubject],
                  train: list[CachedSubject], painted: list[CachedSubject] = ()) -> tuple[np.ndarray, np.ndarray]:
    """The TensorBoard preview ``(x, y)``: ``y`` ``(n, H, W, 2)`` = hard mask and FLAIR, unaugmented.

    The FLAIR is :func:`flair_channel` of ``x`` (the slice itself, also with 2.5D context).

    Validation slices with lesion; training slices when the validation subjects have none (the
    training subjects always have lesion: ``check_cohort``), so the preview is never empty. With lesion
    synthesis, up to :data:`PAINTED_PREVIEW` slices of the painted copies follow the real ones.
    """
    records = validation if any(r.lesion.any() for r in validation) else train
    x, mask = read_entries(cfg, cache, records, preview_entries(cfg, cache, records))
    if painted:
        entries = preview_entries(cfg, cache, list(painted))[:PAINTED_PREVIEW]
        px, pmask = read_entries(cfg, cache, list(painted), entries)
        x, mask = np.concatenate([x, px]), np.concatenate([mask, pmask])
    c = flair_channel(cfg)
    return x, np.concatenate([mask, x[..., c:c + 1]], axis=-1)
