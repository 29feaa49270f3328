"""Prediction: trained folds -> sliding-window inference on any modality subset -> original geometry."""
