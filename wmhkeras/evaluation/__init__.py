"""Evaluation against ground truth, without TensorFlow: the challenge metrics (:mod:`~wmhkeras.evaluation.metrics`),
tables and statistics (``reports``), figures (``figures``), and ``wmhkeras evaluate`` (``evaluate``, with the
matching of predictions to truth in ``matching``).
"""
