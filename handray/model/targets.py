"""Training targets, computed in the graph: anchor labels for the RPN, ROI labels for the heads.

Ground truth arrives as the pipeline makes it: boxes normalised to the padded square, class ids
(0 = empty slot), crowd flags and mini-masks. Crowd regions are never positives and anchors or
ROIs touching them are never negatives: they are ignored, as COCO evaluation ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from handray.model.boxes import box_iou, encode_boxes
from handray.model.roi_align import crop_and_resize, pixel_centre_boxes
from handray.model.sampling import sample_indices, sample_mask

RPN_POSITIVE_IOU = 0.7
RPN_NEGATIVE_IOU = 0.3
ROI_POSITIVE_IOU = 0.5
CROWD_IOU = 0.001


def _real_and_crowd(gt_class_ids: tf.Tensor, gt_crowd: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
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
) -> tuple[tf.Tensor, tf.Tensor]:
    """Anchor labels [B, N] (1 positive, -1 negative, 0 ignored) and box targets [B, N, 4].

    Positive: IoU >= 0.7 with a hand, or the best anchor of a hand. Negative: IoU < 0.3 with
    every hand and no contact with crowd regions. At most half the sampled anchors are positive;
    negatives fill the rest of `anchors_per_image`.
    """
    batch = tf.shape(gt_boxes)[0]
    real, crowd = _real_and_crowd(gt_class_ids, gt_crowd)
    all_anchors = tf.broadcast_to(anchors[None], [batch, *anchors.shape])
    iou = tf.where(real[:, None, :], box_iou(all_anchors, gt_boxes), -1.0)
    best_iou = tf.reduce_max(iou, axis=-1)
    best_gt = tf.argmax(iou, axis=-1, output_type=tf.int32)
    best_per_gt = tf.reduce_max(iou, axis=1, keepdims=True)
    is_best = tf.reduce_any((iou >= best_per_gt) & (iou > 0.0) & real[:, None, :], axis=-1)
    positive = (best_iou >= RPN_POSITIVE_IOU) | is_best
    negative = (best_iou < RPN_NEGATIVE_IOU) & ~positive
    negative &= ~_touches_crowd(all_anchors, gt_boxes, crowd)
    half = anchors_per_image // 2
    positive = sample_mask(positive, tf.fill([batch], half), half)
    needed = anchors_per_image - tf.reduce_sum(tf.cast(positive, tf.int32), axis=1)
    negative = sample_mask(negative, needed, anchors_per_image)
    labels = tf.where(positive, 1, tf.where(negative, -1, 0))
    matched = tf.gather(gt_boxes, best_gt, batch_dims=1)
    deltas = encode_boxes(all_anchors, matched, std_dev)
    return labels, deltas * tf.cast(positive, deltas.dtype)[..., None]


@dataclass
class RoiTargets:
    """Sampled ROIs [B, T, 4] with their targets; the first `positive_slots` hold positives."""

    rois: tf.Tensor
    valid: tf.Tensor  # [B, T] a real ROI (positive or negative)
    positive: tf.Tensor  # [B, T]
    class_ids: tf.Tensor  # [B, T] 0 for negatives
    deltas: tf.Tensor  # [B, T, 4] box targets (zero except positives)
    masks: tf.Tensor  # [B, positive_slots, h, w] mask targets of the positive slots
    positive_slots: int


def detection_targets(
    proposals: tf.Tensor,
    proposal_valid: tf.Tensor,
    gt_boxes: tf.Tensor,
    gt_class_ids: tf.Tensor,
    gt_crowd: tf.Tensor,
    gt_masks: tf.Tensor,
    *,
    rois_per_image: int,
    positive_ratio: float,
    std_dev: tf.Tensor,
    mask_shape: tuple[int, int],
    mini_mask: bool,
) -> RoiTargets:
    """Sample ROIs for the heads from proposals plus the ground-truth boxes themselves.

    Positives (IoU >= 0.5 with a hand) fill up to `rois_per_image * positive_ratio` slots;
    negatives (IoU < 0.5, away from crowd regions) fill the remaining slots. Adding the
    ground-truth boxes as candidates gives the heads positives from the first step on.
    """
    real, crowd = _real_and_crowd(gt_class_ids, gt_crowd)
    candidates = tf.concat([proposals, gt_boxes], axis=1)
    candidate_valid = tf.concat([proposal_valid, real], axis=1)
    iou = tf.where(real[:, None, :], box_iou(candidates, gt_boxes), -1.0)
    best_iou = tf.reduce_max(iou, axis=-1)
    best_gt = tf.argmax(iou, axis=-1, output_type=tf.int32)
    positive = candidate_valid & (best_iou >= ROI_POSITIVE_IOU)
    negative = candidate_valid & (best_iou < ROI_POSITIVE_IOU)
    negative &= ~_touches_crowd(candidates, gt_boxes, crowd)

    positive_slots = int(rois_per_image * positive_ratio)
    pos_index, pos_valid = sample_indices(positive, positive_slots)
    neg_index, neg_valid = sample_indices(negative, rois_per_image - positive_slots)
    pos_rois = tf.gather(candidates, pos_index, batch_dims=1)
    neg_rois = tf.gather(candidates, neg_index, batch_dims=1)
    pos_gt = tf.gather(best_gt, pos_index, batch_dims=1)
    pos_float = tf.cast(pos_valid, tf.float32)[..., None]
    neg_float = tf.cast(neg_valid, tf.float32)[..., None]

    matched_boxes = tf.gather(gt_boxes, pos_gt, batch_dims=1)
    pos_deltas = encode_boxes(pos_rois, matched_boxes, std_dev) * pos_float
    pos_classes = tf.where(pos_valid, tf.gather(gt_class_ids, pos_gt, batch_dims=1), 0)
    masks = _mask_targets(pos_rois, pos_gt, matched_boxes, gt_masks, mask_shape, mini_mask)
    negatives = rois_per_image - positive_slots
    return RoiTargets(
        rois=tf.concat([pos_rois * pos_float, neg_rois * neg_float], axis=1),
        valid=tf.concat([pos_valid, neg_valid], axis=1),
        positive=tf.concat([pos_valid, tf.zeros_like(neg_valid)], axis=1),
        class_ids=tf.concat([pos_classes, tf.zeros_like(neg_index)], axis=1),
        deltas=tf.concat([pos_deltas, tf.zeros([tf.shape(gt_boxes)[0], negatives, 4])], axis=1),
        masks=masks * pos_float[..., None],
        positive_slots=positive_slots,
    )


def _mask_targets(
    rois: tf.Tensor,
    gt_index: tf.Tensor,
    gt_boxes: tf.Tensor,
    gt_masks: tf.Tensor,
    mask_shape: tuple[int, int],
    mini_mask: bool,
) -> tf.Tensor:
    """Each ROI's view of its hand's mask, sampled at mask_shape pixel centres, 0/1 float.

    A mini-mask covers its ground-truth box, a full mask the whole padded image; either way the
    ROI is expressed in the mask's own pixel grid before sampling.
    """
    batch, slots = tf.shape(rois)[0], tf.shape(rois)[1]
    mask_h, mask_w = gt_masks.shape[2], gt_masks.shape[3]
    frame = gt_boxes if mini_mask else tf.constant([0.0, 0.0, 1.0, 1.0])
    boxes = pixel_centre_boxes(rois, frame, (mask_h, mask_w), mask_shape)
    slots_per_image = tf.shape(gt_masks)[1]
    flat_masks = tf.reshape(tf.cast(gt_masks, tf.float32), [-1, mask_h, mask_w, 1])
    box_indices = tf.range(batch)[:, None] * slots_per_image + gt_index
    crops = crop_and_resize(
        flat_masks, tf.reshape(boxes, [-1, 4]), tf.reshape(box_indices, [-1]), mask_shape
    )
    return tf.round(tf.reshape(crops, [batch, slots, *mask_shape]))
