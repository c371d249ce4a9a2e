"""What is exported: the Keras generator, loaded as ``wmhkeras segment`` loads it, and its run folder's record."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from wmhkeras.config import Config, load_run_config
from wmhkeras.data.datasets import Subject, load_dataset
from wmhkeras.data.splits import load_split
from wmhkeras.errors import InputError
from wmhkeras.inference.loaders import Segmenter, load_segmenter
from wmhkeras.inference.sources import inspect_model
from wmhkeras.io.run_folder import RunFolder, Split

if TYPE_CHECKING:
    import keras

    from wmhkeras.data.preprocessing import Resampling

log = logging.getLogger(__name__)

#: The subjects of a run's split, by split key (``train``, ``validation``, ``holdout``).
RunSubjects = dict[str, list[Subject]]


@dataclass(frozen=True)
class ExportSource:
    """The Keras model (as a :class:`~wmhkeras.inference.loaders.Segmenter`) and its run folder, if any."""

    segmenter: Segmenter
    checkpoint: Path
    run_dir: Path | None
    config: Config | None

    @property
    def run(self) -> RunFolder | None:
        return None if self.run_dir is None else RunFolder(self.run_dir)

    @property
    def model(self) -> keras.Model:
        return self.segmenter.model

    @property
    def modalities(self) -> list[str]:
        return list(self.segmenter.modalities)

    @property
    def normalisation(self) -> str:
        return self.segmenter.normalisation

    @property
    def input_size(self) -> Optional[tuple[int, int]]:
        """The model's slice size in ``fixed`` resampling; ``None`` for a model that takes any size."""
        return self.segmenter.input_size

    @property
    def resampling(self) -> Resampling:
        return self.segmenter.resampling

    @property
    def context_slices(self) -> int:
        return self.segmenter.context_slices

    @property
    def channels(self) -> int:
        """Input channels of the network: each modality at ``2 * context_slices + 1`` slices."""
        return self.segmenter.channels

    @property
    def description(self) -> str:
        return str(self.checkpoint)


def resolve_source(model_or_run_dir: str | Path) -> ExportSource:
    """Load the generator the way ``wmhkeras segment`` does (same checks, same settings).

    Raises:
        InputError: missing, unreadable, truncated or foreign checkpoint (not ``(b, H, W, C) -> (b, H, W, 1)``),
            or an already exported SavedModel or TFLite file.
    """
    spec = inspect_model(model_or_run_dir)
    if spec.format in ("saved_model", "tflite"):
        what = f"the built-in model {spec.builtin.name} is" if spec.builtin else "this is"
        raise InputError(f"{spec.path}: {what} an exported model ({spec.format}); export needs the .keras "
                         "checkpoint or its run folder")
    segmenter = load_segmenter(spec)
    run_dir = None
    if spec.format == "run":
        run_dir = Path(spec.source)
    elif spec.path.parent.name == "checkpoints" and RunFolder(spec.path.parent.parent).config.is_file():
        run_dir = spec.path.parent.parent
    cfg = None
    if run_dir is not None:
        cfg = load_run_config(RunFolder(run_dir).config)
    else:
        log.info("no run folder: %s normalisation (the paper's), modalities %s from the model's channels",
                 segmenter.normalisation, list(segmenter.modalities))
    return ExportSource(segmenter, Path(spec.path), run_dir, cfg)


def run_subjects(src: ExportSource) -> RunSubjects | None:
    """The run's dataset divided by its split, or ``None`` without a run folder or when its data is unreachable."""
    if src.config is None or src.run is None:
        return None
    try:
        subjects = load_dataset(src.config.data.path)
        split = load_split(src.run.split, subjects)
    except InputError as exc:
        log.warning("the run's data is not available (%s): no calibration from training data, "
                    "verification on synthetic slices", exc)
        return None
    by_id = {s.subject: s for s in subjects}
    return {key: [by_id[i] for i in getattr(split, key)] for key in Split.KEYS}
