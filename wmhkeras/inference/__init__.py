"""Segmentation with a trained or exported model (``wmhkeras segment``).

Modules, by concern: :mod:`~wmhkeras.inference.sources` (which model a path holds and the preprocessing it
needs, without TensorFlow), :mod:`~wmhkeras.inference.loaders` (the model loaded as a ``Segmenter``),
:mod:`~wmhkeras.inference.precision` (float32 or bfloat16), :mod:`~wmhkeras.inference.inputs` (the subjects
to segment), :mod:`~wmhkeras.inference.preflight` and :mod:`~wmhkeras.inference.card_checks` (the checks
before anything is written), :mod:`~wmhkeras.inference.predictor` (the probability map and lesion mask of one
volume), :mod:`~wmhkeras.inference.segment` (many subjects and their files), :mod:`~wmhkeras.inference.record`
(its settings and ``segment.json``), :mod:`~wmhkeras.inference.output_folder` (the output folder left as
found when no subject succeeds), :mod:`~wmhkeras.inference.summary` (``summary.csv``, combined across shards),
:mod:`~wmhkeras.inference.batch` (shards, resuming) and :mod:`~wmhkeras.inference.qc` (QC without ground
truth).
"""
