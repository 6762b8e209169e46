"""Region proposals: the RPN's best anchors, refined by its deltas, clipped, thinned by NMS."""

from __future__ import annotations

import tensorflow as tf

from handray.model.boxes import batched_nms, clip_boxes, decode_boxes


def generate_proposals(
    scores: tf.Tensor,
    deltas: tf.Tensor,
    anchors: tf.Tensor,
    windows: tf.Tensor,
    *,
    pre_nms_limit: int,
    count: int,
    nms_threshold: float,
    std_dev: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Fixed-size proposals per image.

    scores [B, N] (foreground probability), deltas [B, N, 4], anchors [N, 4] and windows [B, 4]
    normalised. Returns (boxes [B, count, 4], valid [B, count]); invalid slots are zero boxes.
    """
    limit = min(pre_nms_limit, int(anchors.shape[0]))
    top_scores, order = tf.math.top_k(scores, k=limit, sorted=True)
    boxes = decode_boxes(tf.gather(anchors, order), tf.gather(deltas, order, batch_dims=1), std_dev)
    boxes = clip_boxes(boxes, windows)
    keep, valid = batched_nms(boxes, top_scores, count, nms_threshold, score_threshold=-1.0)
    proposals = tf.gather(boxes, keep, batch_dims=1)
    return proposals * tf.cast(valid, proposals.dtype)[..., None], valid
