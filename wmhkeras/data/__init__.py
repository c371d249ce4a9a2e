"""Cohorts and their preprocessing: datasets and manifests (:mod:`~wmhkeras.data.datasets`), where the shared
real data lies (``shared``), the synthetic cohort generator (``synth``), the one preprocessing in TF ops shared
by training, ``segment`` and the exported model (``preprocessing``), and every split strategy (``splits``).
"""
