"""Metrics and evaluation of predictions."""
