"""Training targets, computed in the graph: anchor labels for the RPN, ROI labels for the heads.

Ground truth arrives as the pipeline makes it: boxes normalised to the padded square, class ids
(0 = empty slot), crowd flags and mini-masks. Crowd regions are never positives and anchors or
ROIs touching them are never negatives: they are ignored, as COCO evaluation ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from handray.model.boxes import box_iou, encode_boxes
from handray.model.sampling import sample_indices, sample_mask

ROI_POSITIVE_IOU = 0.5
CROWD_IOU = 0.001


def real_and_crowd(gt_class_ids: tf.Tensor, gt_crowd: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Masks [B, M] of the filled ground-truth slots that are hands, and those that are crowd."""
    filled = gt_class_ids > 0
    return filled & ~gt_crowd, filled & gt_crowd


def _touches_crowd(boxes: tf.Tensor, gt_boxes: tf.Tensor, crowd: tf.Tensor) -> tf.Tensor:
    """[B, N] True where a box overlaps any crowd region of its image."""
    iou = box_iou(boxes, gt_boxes)
    return tf.reduce_max(tf.where(crowd[:, None, :], iou, 0.0), axis=-1) >= CROWD_IOU


def rpn_targets(
    anchors: tf.Tensor,
    gt_boxes: tf.Tensor,
    gt_class_ids: tf.Tensor,
    gt_crowd: tf.Tensor,
    anchors_per_image: int,
    std_dev: tf.Tensor,
    positive_iou: float = 0.7,
    negative_iou: float = 0.3,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Anchor labels [B, N] (1 positive, -1 negative, 0 ignored), box targets [B, N, 4], and
    the number of positive anchors each hand has before sampling [B, M] (a diagnostic: a hand
    with one positive anchor trains the RPN far less than one with five).

    Positive: IoU >= `positive_iou` with a hand, or the best anchor of a hand. Negative: IoU
    < `negative_iou` with every hand and no contact with crowd regions. At most half the
    sampled anchors are positive; negatives fill the rest of `anchors_per_image`.
    """
    batch = tf.shape(gt_boxes)[0]
    real, crowd = real_and_crowd(gt_class_ids, gt_crowd)
    all_anchors = tf.broadcast_to(anchors[None], [batch, *anchors.shape])
    iou = tf.where(real[:, None, :], box_iou(all_anchors, gt_boxes), -1.0)
    best_iou = tf.reduce_max(iou, axis=-1)
    best_gt = tf.argmax(iou, axis=-1, output_type=tf.int32)
    best_per_gt = tf.reduce_max(iou, axis=1, keepdims=True)
    is_best = tf.reduce_any((iou >= best_per_gt) & (iou > 0.0) & real[:, None, :], axis=-1)
    positive = (best_iou >= positive_iou) | is_best
    negative = (best_iou < negative_iou) & ~positive
    negative &= ~_touches_crowd(all_anchors, gt_boxes, crowd)
    owner = tf.one_hot(best_gt, tf.shape(gt_boxes)[1]) * tf.cast(positive, tf.float32)[..., None]
    positives_per_hand = tf.reduce_sum(owner, axis=1) * tf.cast(real, tf.float32)
    half = anchors_per_image // 2
    positive = sample_mask(positive, tf.fill([batch], half), half)
    needed = anchors_per_image - tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)
    negative = sample_mask(negative, needed, anchors_per_image)
    labels = tf.where(positive, 1, tf.where(negative, -1, 0))
    matched = tf.gather(gt_boxes, best_gt, batch_dims=1)
    deltas = encode_boxes(all_anchors, matched, std_dev)
    return labels, deltas * tf.cast(positive, deltas.dtype)[..., None], positives_per_hand


@dataclass
class RoiTargets:
    """Sampled ROIs [B, T, 4] for the heads; the first `positive_slots` hold positives, and the
    first `mask_slots` of those are the ones the ROI heads (mask, keypoints, ...) train on."""

    rois: tf.Tensor
    valid: tf.Tensor  # [B, T] a real ROI (positive or negative)
    positive: tf.Tensor  # [B, T]
    class_ids: tf.Tensor  # [B, T] 0 for negatives
    gt_index: tf.Tensor  # [B, T] the hand a positive matched (0 for negatives)
    positive_slots: int
    mask_slots: int


def detection_targets(
    proposals: tf.Tensor,
    proposal_valid: tf.Tensor,
    gt_boxes: tf.Tensor,
    gt_class_ids: tf.Tensor,
    gt_crowd: tf.Tensor,
    *,
    rois_per_image: int,
    positive_ratio: float,
    positive_jitter: int = 0,
    hard_negative_fraction: float = 0.0,
    mask_rois: int = 0,
) -> RoiTargets:
    """Sample ROIs for the heads from proposals plus the ground-truth boxes themselves.

    Positives (IoU >= 0.5 with a hand) fill up to `rois_per_image * positive_ratio` slots;
    negatives (IoU < 0.5, away from crowd regions) fill the remaining slots. Adding the
    ground-truth boxes, and `positive_jitter` jittered copies of each, as candidates gives the
    heads their share of positives from the first step on, before the RPN proposes hands.
    `hard_negative_fraction` of the negative slots go to the negatives the RPN ranks highest
    (proposals arrive best first): the faces and forearms the classifier must learn to reject.
    `mask_rois` (0: all positive slots) bounds the positives the ROI heads train on. Each head
    computes its own targets from the positives and the hands they matched (`gt_index`).
    """
    real, crowd = real_and_crowd(gt_class_ids, gt_crowd)
    jittered = [jitter_boxes(gt_boxes) for _ in range(positive_jitter)]
    candidates = tf.concat([proposals, gt_boxes, *jittered], axis=1)
    candidate_valid = tf.concat([proposal_valid, *[real] * (1 + positive_jitter)], axis=1)
    iou = tf.where(real[:, None, :], box_iou(candidates, gt_boxes), -1.0)
    best_iou = tf.reduce_max(iou, axis=-1)
    best_gt = tf.argmax(iou, axis=-1, output_type=tf.int32)
    positive = candidate_valid & (best_iou >= ROI_POSITIVE_IOU)
    negative = candidate_valid & (best_iou < ROI_POSITIVE_IOU)
    negative &= ~_touches_crowd(candidates, gt_boxes, crowd)

    positive_slots = int(rois_per_image * positive_ratio)
    negatives = rois_per_image - positive_slots
    mask_slots = min(mask_rois or positive_slots, positive_slots)
    pos_index, pos_valid = sample_indices(positive, positive_slots)
    neg_index, neg_valid = _sample_negatives(negative, negatives, hard_negative_fraction)
    pos_rois = tf.gather(candidates, pos_index, batch_dims=1)
    neg_rois = tf.gather(candidates, neg_index, batch_dims=1)
    pos_gt = tf.gather(best_gt, pos_index, batch_dims=1)
    pos_float = tf.cast(pos_valid, tf.float32)[..., None]
    neg_float = tf.cast(neg_valid, tf.float32)[..., None]
    pos_classes = tf.where(pos_valid, tf.gather(gt_class_ids, pos_gt, batch_dims=1), 0)
    return RoiTargets(
        rois=tf.concat([pos_rois * pos_float, neg_rois * neg_float], axis=1),
        valid=tf.concat([pos_valid, neg_valid], axis=1),
        positive=tf.concat([pos_valid, tf.zeros_like(neg_valid)], axis=1),
        class_ids=tf.concat([pos_classes, tf.zeros_like(neg_index)], axis=1),
        gt_index=tf.concat([tf.where(pos_valid, pos_gt, 0), tf.zeros_like(neg_index)], axis=1),
        positive_slots=positive_slots,
        mask_slots=mask_slots,
    )


def jitter_boxes(boxes: tf.Tensor, shift: float = 0.1, scale: float = 0.15) -> tf.Tensor:
    """Boxes [B, M, 4] moved by up to `shift` of their size and rescaled by up to `scale` per
    side (log-uniform): nearby positives like those a trained RPN proposes."""
    size = boxes[..., 2:] - boxes[..., :2]
    centre = 0.5 * (boxes[..., 2:] + boxes[..., :2])
    centre += size * tf.random.uniform(tf.shape(size), -shift, shift)
    size *= tf.exp(tf.random.uniform(tf.shape(size), -scale, scale))
    return tf.concat([centre - 0.5 * size, centre + 0.5 * size], axis=-1)


def _sample_negatives(
    negative: tf.Tensor, slots: int, hard_fraction: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """`hard_fraction` of the slots for the first (highest-ranked) negatives, the rest random."""
    hard_slots = round(slots * hard_fraction)
    if hard_slots == 0:
        return sample_indices(negative, slots)
    count = negative.shape[1]
    rank = 1.0 - tf.range(count, dtype=tf.float32) / count  # earlier candidates first
    hard_index, hard_valid = sample_indices(negative, hard_slots, rank)
    taken = tf.reduce_any(
        tf.cast(tf.one_hot(hard_index, count), tf.bool) & hard_valid[..., None], axis=1
    )
    rest_index, rest_valid = sample_indices(negative & ~taken, slots - hard_slots)
    return tf.concat([hard_index, rest_index], 1), tf.concat([hard_valid, rest_valid], 1)
