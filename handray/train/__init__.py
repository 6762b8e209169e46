"""Training: the per-worker step and loop, Ray Train, Ray Tune."""
