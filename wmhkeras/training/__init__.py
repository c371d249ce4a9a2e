"""Training a generator (``wmhkeras train``): the tf.data pipeline (:mod:`~wmhkeras.training.pipeline`) built from
the cache (``cache``), the cohort check (``cohort``), the sampler (``sampler``), the validation tiles and
preview (``validation``) and the lesion synthesis (``lesion_synthesis``); augmentation (``augment``), the
callbacks and checkpoint commit (``callbacks``), the trainer (``trainer``), resuming (``resume``),
fine-tuning from a model's weights (``finetune``) and the multi-worker workaround (``multiworker``).
"""
