"""Per-case preprocessing: crop to non-zero, normalise, resample (and the inverse for prediction)."""
