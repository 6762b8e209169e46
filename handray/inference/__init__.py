"""Inference: checkpoints and their models, detections in original pixels, predict, export."""
