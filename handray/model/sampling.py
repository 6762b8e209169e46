"""Random, fixed-size subsampling of candidates (anchors, ROIs) inside a compiled graph."""

from __future__ import annotations

import tensorflow as tf


def sample_indices(
    candidates: tf.Tensor, slots: int, priority: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pick up to `slots` True positions per row of a [B, N] mask: random ones, or those of
    highest `priority` ([B, N] or [N], values in [0, 1]) when given.

    Returns (indices [B, slots], valid [B, slots]); a row with fewer candidates pads with
    invalid slots (index 0). Priorities plus top-k keep shapes fixed for XLA.
    """
    if priority is None:
        priority = tf.random.uniform(tf.shape(candidates))
    priority = tf.where(candidates, priority, -1.0)
    values, indices = tf.math.top_k(priority, k=min(slots, candidates.shape[1]))
    missing = slots - values.shape[1]  # more slots than candidates: pad with invalid ones
    values = tf.pad(values, [[0, 0], [0, missing]], constant_values=-1.0)
    indices = tf.pad(indices, [[0, 0], [0, missing]])
    valid = values >= 0.0
    return tf.where(valid, indices, 0), valid


def sample_mask(candidates: tf.Tensor, limits: tf.Tensor, max_slots: int) -> tf.Tensor:
    """Keep at most `limits[b]` random True entries of each row of a [B, N] mask (same shape)."""
    priority = tf.where(candidates, tf.random.uniform(tf.shape(candidates)), -1.0)
    max_slots = min(max_slots, candidates.shape[1])
    values, _ = tf.math.top_k(priority, k=max_slots)
    last = tf.clip_by_value(limits - 1, 0, max_slots - 1)
    threshold = tf.gather(values, last, batch_dims=1)
    keep = candidates & (priority >= threshold[:, None])
    return keep & (limits > 0)[:, None]
