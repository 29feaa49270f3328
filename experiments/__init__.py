"""The paper's claims tested on real images: ``python -m experiments.run`` (``make experiments``)."""
