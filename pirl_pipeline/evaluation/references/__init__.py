"""Trivial references, written and scored exactly like a model's predictions.

A metric means something only beside what a model that learned (almost) nothing scores. Each reference is
written in ``pirl_predict``'s layout (``pirl_evaluate`` scores the folder) and also scored directly in the
row format of :mod:`pirl_pipeline.evaluation.missing_modalities` (Table 10 / Table 11 layouts).

- :mod:`.translation`: ``identity`` and ``histogram`` (a fitted intensity mapping);
- :mod:`.segmentation`: ``whole_brain`` and ``threshold`` (fitted on the training cases);
- :mod:`.common`: reading the raw cases and the percentile normalisation both use.
"""
