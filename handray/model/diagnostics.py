"""Per-stage numbers of a training step, so a person sees which stage lags, not just a loss.

Losses fall for a model that learns nothing useful (a head that memorises, an RPN whose hands
have one positive anchor each). These are Detectron-style stage diagnostics, computed in the
graph from tensors the step already has:

  rpn_positives_per_hand  positive anchors a hand gets before sampling (RPN supervision)
  proposal_recall_50/_70  share of hands that one of the top 100 proposals covers at IoU 0.5/0.7
  roi_positive_ratio      positives among the ROIs the heads train on
  head_fg_accuracy        positive ROIs the box head classifies as their exact class
  handedness_accuracy     positive ROIs whose most probable hand class is the right side
"""

from __future__ import annotations

import tensorflow as tf

from handray.model.boxes import box_iou
from handray.model.losses import masked_mean
from handray.model.targets import RoiTargets

DIAGNOSTIC_NAMES = (
    "rpn_positives_per_hand",
    "proposal_recall_50",
    "proposal_recall_70",
    "roi_positive_ratio",
    "head_fg_accuracy",
    "handedness_accuracy",
)
RECALL_PROPOSALS = 100


def _share(hits: tf.Tensor, where: tf.Tensor) -> tf.Tensor:
    return masked_mean(tf.cast(hits, tf.float32), where)


def proposal_recall(
    proposals: tf.Tensor, valid: tf.Tensor, gt_boxes: tf.Tensor, real: tf.Tensor, iou: float
) -> tf.Tensor:
    """Share of real hands [B, M] with a proposal among the first 100 [B, P, 4] at >= `iou`."""
    top = min(RECALL_PROPOSALS, proposals.shape[1])
    overlaps = box_iou(proposals[:, :top], gt_boxes)  # [B, top, M]
    overlaps = tf.where(valid[:, :top, None], overlaps, 0.0)
    return _share(tf.reduce_max(overlaps, axis=1) >= iou, real)


def training_diagnostics(
    anchors_per_hand: tf.Tensor,
    real: tf.Tensor,
    gt_boxes: tf.Tensor,
    proposals: tf.Tensor,
    proposal_valid: tf.Tensor,
    targets: RoiTargets,
    class_logits: tf.Tensor,
    class_ids: tf.Tensor,
) -> dict[str, tf.Tensor]:
    """The numbers named in DIAGNOSTIC_NAMES for one batch (scalars, 0 where undefined).

    `class_logits` [B, T, K] are the box head's scores and `class_ids` [B, T] the sampled
    ROIs' classes in the same terms (hand or background when a side head decides the side).
    """
    predicted = tf.argmax(class_logits, axis=-1, output_type=tf.int32)
    side = tf.argmax(class_logits[..., 1:], axis=-1, output_type=tf.int32) + 1
    positive = targets.positive
    return {
        "rpn_positives_per_hand": _share(anchors_per_hand, real),
        "proposal_recall_50": proposal_recall(proposals, proposal_valid, gt_boxes, real, 0.5),
        "proposal_recall_70": proposal_recall(proposals, proposal_valid, gt_boxes, real, 0.7),
        "roi_positive_ratio": _share(positive, targets.valid),
        "head_fg_accuracy": _share(predicted == class_ids, positive),
        "handedness_accuracy": _share(side == class_ids, positive),
    }
