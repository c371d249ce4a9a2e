"""The names of the preprocessing steps, shared by every stage that records or checks them.

:mod:`wmhkeras.data.preprocessing` implements them, the config (``data.normalisation``,
``data.resample``) chooses them and the model card (:mod:`wmhkeras.io.model_card`) records them. They
live here, below all three, so that each reads the one list.
"""

#: Intensity normalisations (``data.normalisation``): max-scaling (the paper's) or a brain-masked z-score.
NORMALISATIONS = ("max", "zscore")
#: How slices are brought to the model's grid (``data.resample``; :class:`wmhkeras.data.preprocessing.Resampling`).
RESAMPLE_MODES = ("fixed", "spacing", "none")
