"""Target assignment on hand-made cases, checked against the rules written out by hand."""

import numpy as np
import tensorflow as tf

from handray.model.anchors import generate_anchors
from handray.model.boxes import box_iou, encode_boxes
from handray.model.targets import RoiTargets, detection_targets, jitter_boxes, rpn_targets

STD = tf.constant([0.1, 0.1, 0.2, 0.2])
HAND = [0.10, 0.10, 0.30, 0.30]
CROWD = [0.60, 0.60, 0.80, 0.80]


def gt(boxes, classes, crowd):
    pad = 4 - len(boxes)
    return (
        tf.constant([boxes + [[0.0] * 4] * pad], tf.float32),
        tf.constant([classes + [0] * pad], tf.int32),
        tf.constant([crowd + [False] * pad]),
    )


def test_rpn_labels_positive_negative_and_crowd_ignored():
    anchors = tf.constant(
        [
            HAND,  # IoU 1 with the hand: positive
            [0.10, 0.10, 0.30, 0.42],  # IoU 0.6 with the hand: neither (0.3 <= IoU < 0.7)
            [0.40, 0.05, 0.50, 0.15],  # far from everything: negative
            [0.55, 0.55, 0.65, 0.65],  # touches the crowd region: ignored, never negative
            [0.85, 0.05, 0.95, 0.15],  # far: negative
        ]
    )
    boxes, classes, crowd = gt([HAND, CROWD], [1, 2], [False, True])
    labels, deltas, _ = rpn_targets(anchors, boxes, classes, crowd, 256, STD)
    assert labels.numpy().tolist() == [[1, 0, -1, 0, -1]]
    np.testing.assert_allclose(deltas[0, 0], np.zeros(4), atol=1e-6)
    assert not deltas[0, 1:].numpy().any()


def test_rpn_best_anchor_of_a_hand_is_positive_even_below_threshold():
    anchors = tf.constant([[0.10, 0.10, 0.30, 0.50], [0.60, 0.00, 0.70, 0.10]])  # IoU 0.5, 0
    boxes, classes, crowd = gt([HAND], [1], [False])
    labels, deltas, _ = rpn_targets(anchors, boxes, classes, crowd, 256, STD)
    assert labels.numpy().tolist() == [[1, -1]]
    expected = encode_boxes(anchors[:1], tf.constant([HAND]), STD)
    np.testing.assert_allclose(deltas[0, :1], expected, rtol=1e-5)


def test_rpn_sampling_caps_positives_at_half_and_fills_with_negatives():
    anchors = tf.constant([HAND] * 10 + [[0.8, 0.8, 0.9, 0.9]] * 10)
    boxes, classes, crowd = gt([HAND], [1], [False])
    labels, _, _ = rpn_targets(anchors, boxes, classes, crowd, 8, STD)
    assert (labels.numpy() == 1).sum() == 4
    assert (labels.numpy() == -1).sum() == 4


def test_rpn_without_ground_truth_samples_only_negatives():
    anchors = tf.constant([[0.1 * i, 0.0, 0.1 * i + 0.1, 0.1] for i in range(6)])
    boxes, classes, crowd = gt([], [], [])
    labels, deltas, _ = rpn_targets(anchors, boxes, classes, crowd, 4, STD)
    assert (labels.numpy() == -1).sum() == 4 and (labels.numpy() == 1).sum() == 0
    assert not deltas.numpy().any()


def test_rpn_positive_counts_per_hand_match_a_numpy_reference():
    """Anchor matching statistics of real anchor grids: each hand's positives before sampling,
    for the old rule (one anchor size per level, IoU 0.7) and the tiny preset's (two sizes,
    IoU 0.5), against the rule written in numpy."""
    rng = np.random.default_rng(3)
    centres = rng.uniform(0.2, 0.8, (3, 2))
    sides = rng.uniform(0.1, 0.3, (3, 1)) * rng.uniform(0.8, 1.25, (3, 2))
    hands = np.concatenate([centres - sides / 2, centres + sides / 2], 1).tolist()
    boxes, classes, crowd = gt(hands, [1, 2, 1], [False] * 3)
    totals = []
    for octaves, positive_iou in (((1.0,), 0.7), ((1.0, 2**0.5), 0.5)):
        anchors = generate_anchors(
            128, (8, 16, 32, 64, 128), (0.5, 1, 2), (4, 8, 16, 32, 64), octaves=octaves
        )
        _, _, per_hand = rpn_targets(
            tf.constant(anchors), boxes, classes, crowd, 256, STD, positive_iou=positive_iou
        )
        iou = box_iou(tf.constant(anchors)[None], boxes).numpy()[0][:, :3]  # [N, 3]
        owner = iou.argmax(1)
        positive = (iou.max(1) >= positive_iou) | (iou == iou.max(0)).any(1)
        expected = [int((positive & (owner == h)).sum()) for h in range(3)]
        assert per_hand.numpy()[0, :3].tolist() == expected
        assert per_hand.numpy()[0, 3] == 0  # an empty slot has none
        totals.append(sum(expected))
    assert totals[1] > totals[0] * 2  # the hand rule gives hands several anchors each


def test_rpn_negative_iou_is_configurable():
    anchors = tf.constant([[0.10, 0.10, 0.30, 0.60]])  # IoU 0.4 with the hand
    boxes, classes, crowd = gt([HAND, [0.7, 0.7, 0.9, 0.9]], [1, 1], [False, False])
    best = tf.constant([HAND, [0.7, 0.7, 0.9, 0.9]])  # each hand's own best anchor
    for negative_iou, label in ((0.3, 0), (0.45, -1)):
        labels, _, _ = rpn_targets(
            tf.concat([anchors, best], 0), boxes, classes, crowd, 8, STD, 0.7, negative_iou
        )
        assert labels.numpy()[0, 0] == label


def roi_targets(proposals, boxes, classes, crowd, rois=8, ratio=0.25, **options) -> RoiTargets:
    proposals = tf.constant([proposals], tf.float32)
    valid = tf.reduce_any(proposals != 0, axis=-1)
    return detection_targets(
        proposals,
        valid,
        boxes,
        classes,
        crowd,
        rois_per_image=rois,
        positive_ratio=ratio,
        **options,
    )


def test_detection_targets_without_ground_truth_are_all_background():
    boxes, classes, crowd = gt([], [], [])
    proposals = [[0.1 * i, 0.1, 0.1 * i + 0.1, 0.2] for i in range(3)] + [[0.0] * 4] * 3
    targets = roi_targets(proposals, boxes, classes, crowd)
    assert targets.positive_slots == 2
    assert not targets.positive.numpy().any()
    assert targets.valid.numpy().sum() == 3  # every real proposal is a negative
    assert not targets.class_ids.numpy().any() and not targets.gt_index.numpy().any()


def test_detection_targets_keep_crowd_overlaps_out_of_the_negatives():
    boxes, classes, crowd = gt([CROWD], [1], [True])
    proposals = [CROWD, [0.61, 0.61, 0.79, 0.79], [0.0, 0.0, 0.1, 0.1]]
    targets = roi_targets(proposals, boxes, classes, crowd)
    rois = targets.rois.numpy()[0][targets.valid.numpy()[0]]
    np.testing.assert_allclose(rois, [[0.0, 0.0, 0.1, 0.1]])  # only the far box remains
    assert not targets.positive.numpy().any()


def test_ground_truth_boxes_become_positives_with_their_class_and_hand():
    """Their box and mask targets: tests/model/heads/test_box.py and test_mask.py."""
    boxes, classes, crowd = gt([[0.5, 0.5, 0.7, 0.7], HAND], [1, 2], [False, False])
    targets = roi_targets([[0.0] * 4], boxes, classes, crowd)
    assert targets.positive.numpy()[0].tolist()[:3] == [True, True, False]
    hands = targets.gt_index.numpy()[0, :2]
    assert sorted(hands) == [0, 1]
    np.testing.assert_allclose(targets.rois.numpy()[0, :2], boxes.numpy()[0, hands])
    np.testing.assert_array_equal(targets.class_ids.numpy()[0, :2], classes.numpy()[0, hands])


def test_more_positives_than_positive_slots_are_capped():
    boxes, classes, crowd = gt([HAND, [0.5, 0.5, 0.7, 0.7]], [1, 1], [False, False])
    proposals = [HAND] * 5 + [[0.5, 0.5, 0.7, 0.7]] * 5 + [[0.9, 0.0, 1.0, 0.1]] * 2
    targets = roi_targets(proposals, boxes, classes, crowd, rois=8, ratio=0.25)
    assert targets.positive.numpy().sum() == 2
    assert targets.valid.numpy().sum() == 2 + 2  # two positives, the two negatives there are
    positives = targets.rois.numpy()[0][:2]
    assert all(any(np.allclose(p, b) for b in (HAND, [0.5, 0.5, 0.7, 0.7])) for p in positives)


def test_jittered_ground_truth_holds_the_positive_ratio():
    """With a proposal set that holds no hand, the positive slots still fill from jittered
    copies of the boxes, and every one of them is a true positive (IoU >= 0.5)."""
    hands = [HAND, [0.5, 0.5, 0.8, 0.7]]
    boxes, classes, crowd = gt(hands, [1, 2], [False, False])
    far = [[0.9, 0.0 + 0.01 * i, 0.95, 0.05 + 0.01 * i] for i in range(40)]
    plain = roi_targets(far, boxes, classes, crowd, rois=32, ratio=0.25)
    jittered = roi_targets(far, boxes, classes, crowd, rois=32, ratio=0.25, positive_jitter=6)
    assert plain.positive.numpy().sum() == 2  # only the two boxes themselves
    assert jittered.positive.numpy().sum() == 8  # the configured 0.25 of 32 slots
    rois = jittered.rois.numpy()[0][:8]
    best = box_iou(tf.constant(rois)[None], boxes).numpy()[0].max(1)
    assert (best >= 0.5).all()


def test_jitter_boxes_stay_near_their_box():
    boxes = tf.constant([[HAND] * 500])
    moved = jitter_boxes(boxes).numpy()[0]
    iou = box_iou(tf.constant(moved)[None], tf.constant([[HAND]])).numpy()[0, :, 0]
    assert iou.min() > 0.5 and iou.mean() < 0.95
    assert np.ptp(moved[:, 0]) > 0.01  # they do move


def test_hard_negatives_are_the_highest_ranked_proposals():
    boxes, classes, crowd = gt([HAND], [1], [False])
    negatives = [[0.6, 0.02 * i, 0.7, 0.02 * i + 0.02] for i in range(30)]  # ranked best first
    targets = roi_targets(
        negatives, boxes, classes, crowd, rois=13, ratio=0.25, hard_negative_fraction=0.5
    )
    rois = targets.rois.numpy()[0]
    np.testing.assert_allclose(rois[3:8], negatives[:5])  # 5 hard slots: the first five
    assert targets.valid.numpy()[0, 3:].all()
    rest = {tuple(np.round(r, 4)) for r in rois[8:]}
    assert not rest & {tuple(np.round(n, 4)) for n in negatives[:5]}  # never picked twice


def test_mask_rois_bound_the_slots_the_roi_heads_train_on():
    """Their mask targets: tests/model/heads/test_mask.py."""
    boxes, classes, crowd = gt([HAND], [1], [False])
    targets = roi_targets([HAND] * 6, boxes, classes, crowd, rois=16, ratio=0.5, mask_rois=2)
    assert targets.positive_slots == 8 and targets.mask_slots == 2
    assert targets.positive.numpy()[0, :2].all()
