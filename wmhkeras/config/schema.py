"""The config schema: one dataclass per section of a config file, defaults and documented meaning.

A run config holds ``data``, ``model``, ``loss``, ``augment``, ``train`` and ``finetune`` (used only by
``wmhkeras train --init``); an experiment config
(``wmhkeras experiment``) adds the optional ``experiment`` section (:class:`ExperimentConfig`). Loading,
merging and validation are in :mod:`wmhkeras.config.load`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

#: Current config schema version; :func:`load_config` refuses files written for a newer one.
CONFIG_VERSION = 1
#: The loss names ``loss.name`` accepts.
LossName = Literal["content", "dice", "dice_bce", "tversky", "generalized_dice", "focal", "bce", "hybrid"]
#: PCD bin edges (%) of the paper's Figure 5: the default of ``experiment.pcd_bins``.
PCD_BIN_EDGES = (0.0, 0.03, 0.06, 0.09, 0.15, 0.25, 0.35, 0.45, 0.55)


@dataclass
class LesionSynthesisConfig:
    """Lesion synthesis (``data.lesion_synthesis``): real lesion shapes painted into training FLAIRs.

    Before training, ``volumes`` painted copies of the training subjects are made (round-robin over the
    subjects), each holding the lesions of one donor mask from ``masks``, resampled into the subject's
    space through the two affines, kept inside the subject's brain tissue. Each painted lesion's contrast
    is drawn from a model fitted to the training subjects' own labelled lesions (contrast to the
    surrounding tissue, in units of the brain's standard deviation), with partial-volume edges and the
    scan's own noise. Painted voxels join the label. A share of the *lesion* samples comes from the
    painted copies; lesion-free samples always come from the real scans
    (:mod:`wmhkeras.training.lesion_synthesis`).
    """

    enabled: bool = False
    #: Folders (or single NIfTI files) of binary lesion masks, the donors. Relative paths are read from
    #: the config file's folder; ``$VARIABLES`` and ``~`` are expanded.
    masks: list[str] = field(default_factory=list)
    #: Number of painted copies of the training subjects, made once and cached like the real ones.
    volumes: int = 24
    #: Fraction of lesion samples drawn from the painted copies (the rest from the real scans).
    share: float = 0.5
    #: Seed of the painting (donor order, contrasts); the same seed paints the same volumes.
    seed: int = 0
    #: Where lesions are painted: ``white_matter`` (within 2 voxels of the white matter of the subject's
    #: T1, which the data must list) or ``tissue`` (anywhere in the brain but CSF: for FLAIR-only data).
    where: Literal["white_matter", "tissue"] = "white_matter"
    #: How a painted lesion's contrast is drawn: ``independent`` of its size (one truncated normal), or by
    #: ``size`` (the normal's mean on the line of contrast against log size fitted to the training
    #: lesions, which are brighter the larger they are).
    contrast: Literal["independent", "size"] = "independent"


@dataclass
class HardNegativesConfig:
    """Hard negatives (``data.hard_negatives``, patches only): lesion-free patches centred on lesion-bright
    normal tissue.

    Lesion-free patches are otherwise centred uniformly over the brain, so normal tissue as bright as a
    lesion (cortex bordering the white matter, the insula, the septum) is rarely shown as a negative. With
    ``share`` > 0, that share of the lesion-free patches is centred on a voxel among the ``brightest``
    fraction of the scan's brain (FLAIR intensity, lesion voxels excluded) whose patch holds no lesion.
    Real scans only; FLAIR only (no T1 or tissue map needed).
    """

    #: Share of the lesion-free patches centred on bright normal tissue; 0 turns hard negatives off.
    share: float = 0.0
    #: The brightest fraction of each scan's normal brain voxels that can centre a hard negative.
    brightest: float = 0.05


@dataclass
class DataConfig:
    """Where the data is and how samples are drawn from it."""

    #: A manifest CSV (``subject,site,flair,t1,label``), a folder holding ``manifest.csv``, a BIDS dataset (its
    #: root, or ``ROOT/derivatives/PIPELINE`` for that pipeline's masks; docs/bids.md) or a folder in the MICCAI
    #: 2017 WMH layout (:func:`wmhkeras.data.datasets.load_dataset`).
    path: Optional[str] = None
    #: Input modalities of the model, FLAIR first.
    modalities: list[Literal["flair", "t1"]] = field(default_factory=lambda: ["flair"])
    normalisation: Literal["max", "zscore"] = "max"
    #: ``slices``: whole axial slices (resized to ``model.input_size`` in ``fixed`` mode, the paper; else on a
    #: ``model.input_size`` canvas); ``patches``: ``patch_size`` patches cut after resampling.
    sampling: Literal["slices", "patches"] = "slices"
    patch_size: list[int] = field(default_factory=lambda: [64, 64])
    #: Fraction of training samples that contain lesion voxels (imbalance-aware sampling);
    #: ``null`` draws samples uniformly, as the paper did.
    lesion_fraction: Optional[float] = 0.5
    #: Where the other samples come from: brain tissue only, or anywhere (empty background too).
    background: Literal["brain", "any"] = "brain"
    #: Patches: where the drawn lesion voxel sits in its lesion patch. ``random``: anywhere in the patch,
    #: uniformly; ``centre``: at the centre, which teaches a fully convolutional model
    #: a centre prior that whole-slice segmentation never meets (docs/real_data.md).
    lesion_position: Literal["random", "centre"] = "random"
    balance_sites: bool = False
    #: Soft labels (low, high) for 0 and 1; the paper uses 0.1 / 0.9. ``null`` keeps hard labels.
    label_smoothing: Optional[list[float]] = field(default_factory=lambda: [0.1, 0.9])
    #: Fractions of subjects for train / validation / hold-out, stratified by site.
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    #: How slices reach the model's grid: ``fixed`` (each slice resized to ``model.input_size`` pixels,
    #: the paper), ``spacing`` (resampled to ``data.spacing`` mm per pixel) or ``none`` (native grid).
    #: ``null``: ``fixed`` for ``sampling: slices``, ``none`` for ``patches``. In ``spacing`` and ``none``
    #: modes ``model.input_size`` is the training canvas of whole slices (centred, zero-padded/cropped);
    #: segmentation runs the fully convolutional model on each whole slice, padded to 2^depth.
    resample: Optional[Literal["fixed", "spacing", "none"]] = None
    #: In-plane pixel size in mm (x, y) of ``resample: spacing``.
    spacing: list[float] = field(default_factory=lambda: [1.0, 1.0])
    #: 2.5D input: slices z-k .. z+k of each modality as channels (edge slices repeated); 0 = 2D.
    context_slices: int = 0
    #: ``memory`` keeps preprocessed volumes in RAM; ``shards`` preprocesses once to disk;
    #: ``auto`` picks ``memory`` below ``memory_limit_gb`` of preprocessed data.
    cache: Literal["auto", "memory", "shards"] = "auto"
    memory_limit_gb: float = 4.0
    #: Folder for on-disk shards (kept and reused by later runs on the same data and settings);
    #: ``null`` uses a temporary folder removed when training ends.
    cache_dir: Optional[str] = None
    #: Real lesion shapes painted into training FLAIRs (off by default).
    lesion_synthesis: LesionSynthesisConfig = field(default_factory=LesionSynthesisConfig)
    #: Patches: a share of the lesion-free patches centred on lesion-bright normal tissue (off by default).
    hard_negatives: HardNegativesConfig = field(default_factory=HardNegativesConfig)


@dataclass
class ModelConfig:
    """The generator."""

    arch: Literal["dense_unet", "unet"] = "dense_unet"
    input_size: list[int] = field(default_factory=lambda: [224, 224])
    depth: int = 5
    base_filters: int = 32
    #: BatchNorm moving-average momentum; 0.9 suits short trainings (the paper does not say).
    bn_momentum: float = 0.99
    #: Initial output probability (head bias log(p/(1-p))); null starts at 0.5.
    output_prior: Optional[float] = None


@dataclass
class LossConfig:
    """The training loss: the Siamese content loss, an overlap loss, or a hybrid of both."""

    name: LossName = "content"
    backbone: Literal["vgg16", "vgg19"] = "vgg16"
    layers: list[str] = field(default_factory=lambda: ["block1_pool", "block2_pool"])
    #: ``imagenet`` (never downloaded: VGG19 up to ``block2_pool`` from the weights the package carries,
    #: else the Keras cache), ``random`` or a weights file path (``.h5``, or an ``.npz`` of the first layers).
    weights: str = "imagenet"
    reduction: Literal["paper", "per_layer_mean"] = "paper"
    #: For ``hybrid``: content + weight * overlap.
    overlap: Literal["dice", "dice_bce", "tversky", "generalized_dice", "focal", "bce"] = "dice"
    weight: float = 1.0
    #: The paper's Table 2 ablation: train the backbone adversarially with its own learning rate.
    finetune_backbone: bool = False
    backbone_learning_rate: float = 1e-5

    @property
    def uses_backbone(self) -> bool:
        """Whether the loss runs the backbone (``content`` and ``hybrid``)."""
        return self.name in ("content", "hybrid")


@dataclass
class AugmentConfig:
    """Augmentation applied identically to image and mask."""

    rotation_degrees: float = 30.0
    flip: bool = False
    intensity_scale: float = 0.0
    gamma: float = 0.0
    #: Zoom: a factor uniform in ``[1 - scale, 1 + scale]`` (lesions of other sizes), with the rotation.
    scale: float = 0.0
    #: Brightness: an offset uniform in ``[-intensity_shift, intensity_shift]`` (z units, or of [0, 1]).
    intensity_shift: float = 0.0
    #: Gaussian noise: a standard deviation uniform in ``[0, noise]`` per sample (z units, or of [0, 1]).
    noise: float = 0.0
    #: Scanner variation. Bias field: a smooth multiplicative field ``exp(f)``, ``f`` a random
    #: second-order polynomial over the sample with ``|f| <= bias_field``.
    bias_field: float = 0.0
    #: Blur: a Gaussian of standard deviation uniform in ``[0, blur]`` pixels.
    blur: float = 0.0
    #: Resolution: downsampled by a factor uniform in ``[1, 1 + low_resolution]`` and back (bilinear).
    low_resolution: float = 0.0
    #: Tissue contrast: a random monotone piecewise-linear remapping of each modality's intensities over
    #: the sample's own range (a histogram shift), whose inner control points move by up to
    #: ``histogram_shift`` of their spacing, so the contrast between tissues (grey and white matter)
    #: changes by a factor in ``[1 - 2 histogram_shift, 1 + 2 histogram_shift]``.
    histogram_shift: float = 0.0


@dataclass
class TrainConfig:
    """Optimisation and run control."""

    epochs: int = 100
    steps_per_epoch: int = 100
    batch_size: int = 8
    learning_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.999
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    early_stopping_patience: Optional[int] = None
    validation_steps: Optional[int] = None
    image_summary_every: int = 5
    seed: int = 0
    distribution: Literal["none", "mirrored", "multi_worker"] = "none"
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    jit_compile: bool = False


@dataclass
class FinetuneConfig:
    """Training that starts from a trained model's weights (``wmhkeras train --init MODEL``); unused without it."""

    #: The learning rate of a fine-tuning run, in place of ``train.learning_rate`` (which stays the rate of
    #: training from scratch): lower, so the first steps do not undo what the model learnt.
    learning_rate: float = 1e-4
    #: Epochs at the start with the encoder frozen (its weights and BatchNorm statistics; the decoder,
    #: bottleneck and head train): 0 for none; ``train.epochs`` or more to keep it frozen throughout.
    freeze_encoder_epochs: int = 0


@dataclass
class ExperimentConfig:
    """The ``experiment:`` section (``wmhkeras experiment``): which arms to train and where to test them.

    The defaults that depend on the run config (``reference``, ``seeds``, ``split_seed``) are filled in
    when the config is validated.
    """

    #: One arm per loss (``loss.name`` values), trained with otherwise identical settings.
    losses: list[LossName] = field(default_factory=lambda: ["dice", "tversky", "generalized_dice", "content"])
    #: The loss the paired tests compare every other loss with; default ``content`` if listed, else the first.
    reference: Optional[LossName] = None
    #: Training seeds: every loss is trained once per seed (``train.seed``); default ``[train.seed]``.
    seeds: Optional[list[int]] = None
    #: Seed of the subject split (and fold assignment); default ``train.seed``.
    split_seed: Optional[int] = None
    #: Site-stratified K-fold cross-validation instead of one hold-out split (K >= 2).
    folds: Optional[int] = None
    #: Train on all sites but one and test on it, for each site.
    leave_one_site_out: bool = False
    #: External test set: a manifest CSV, a folder with ``manifest.csv`` or a MICCAI-layout folder.
    external: Optional[str] = None
    #: Or: use the subjects of this site of the cohort as the external set (none of them is trained on).
    external_site: Optional[str] = None
    #: Name of the external set in the tables; default the site name, or the external folder's name.
    external_name: Optional[str] = None
    #: PCD bin edges (%) of Figure 5; default the paper's (0-0.03, ..., 0.45-0.55).
    pcd_bins: list[float] = field(default_factory=lambda: list(PCD_BIN_EDGES))
    #: Segmentation threshold on the sigmoid probability (``wmhkeras segment --threshold``).
    threshold: float = 0.5
    #: Write a QC montage per subject, arm and dataset (``evaluation/<dataset>/qc/``); slow for large cohorts.
    qc: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def mode(self) -> str:
        """``holdout`` (the paper's split), ``kfold`` or ``loso``."""
        return "kfold" if self.folds else "loso" if self.leave_one_site_out else "holdout"


@dataclass
class Config:
    """A whole configuration: a run config, with an ``experiment`` section for ``wmhkeras experiment``."""

    version: int = CONFIG_VERSION
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    #: ``wmhkeras experiment`` only; a run config has none (and writes none).
    experiment: Optional[ExperimentConfig] = None

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what ``config.yaml`` holds); no ``experiment`` key when there is none."""
        data = dataclasses.asdict(self)
        if self.experiment is None:
            del data["experiment"]
        return data
