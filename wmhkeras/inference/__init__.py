"""Segmentation with a trained or exported model (``wmhkeras segment``).

Modules, by concern: :mod:`~wmhkeras.inference.sources` (which model a path holds and the preprocessing it
needs, without TensorFlow), :mod:`~wmhkeras.inference.loaders` (the model loaded as a ``Segmenter``),
:mod:`~wmhkeras.inference.inputs` (the subjects to segment), :mod:`~wmhkeras.inference.predictor` (the
probability map and lesion mask of one volume) and :mod:`~wmhkeras.inference.segment` (many subjects,
their files, ``summary.csv`` and ``segment.json``). Nothing is imported here, so this package stays cheap.
"""
