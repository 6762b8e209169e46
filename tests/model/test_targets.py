"""Target assignment on hand-made cases, checked against the rules written out by hand."""

import numpy as np
import tensorflow as tf

from handray.model.boxes import encode_boxes
from handray.model.targets import detection_targets, rpn_targets

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
    labels, deltas = rpn_targets(anchors, boxes, classes, crowd, 256, STD)
    assert labels.numpy().tolist() == [[1, 0, -1, 0, -1]]
    np.testing.assert_allclose(deltas[0, 0], np.zeros(4), atol=1e-6)
    assert not deltas[0, 1:].numpy().any()


def test_rpn_best_anchor_of_a_hand_is_positive_even_below_threshold():
    anchors = tf.constant([[0.10, 0.10, 0.30, 0.50], [0.60, 0.00, 0.70, 0.10]])  # IoU 0.5, 0
    boxes, classes, crowd = gt([HAND], [1], [False])
    labels, deltas = rpn_targets(anchors, boxes, classes, crowd, 256, STD)
    assert labels.numpy().tolist() == [[1, -1]]
    expected = encode_boxes(anchors[:1], tf.constant([HAND]), STD)
    np.testing.assert_allclose(deltas[0, :1], expected, rtol=1e-5)


def test_rpn_sampling_caps_positives_at_half_and_fills_with_negatives():
    anchors = tf.constant([HAND] * 10 + [[0.8, 0.8, 0.9, 0.9]] * 10)
    boxes, classes, crowd = gt([HAND], [1], [False])
    labels, _ = rpn_targets(anchors, boxes, classes, crowd, 8, STD)
    assert (labels.numpy() == 1).sum() == 4
    assert (labels.numpy() == -1).sum() == 4


def test_rpn_without_ground_truth_samples_only_negatives():
    anchors = tf.constant([[0.1 * i, 0.0, 0.1 * i + 0.1, 0.1] for i in range(6)])
    boxes, classes, crowd = gt([], [], [])
    labels, deltas = rpn_targets(anchors, boxes, classes, crowd, 4, STD)
    assert (labels.numpy() == -1).sum() == 4 and (labels.numpy() == 1).sum() == 0
    assert not deltas.numpy().any()


def roi_targets(proposals, boxes, classes, crowd, masks=None, rois=8, ratio=0.25):
    proposals = tf.constant([proposals], tf.float32)
    valid = tf.reduce_any(proposals != 0, axis=-1)
    if masks is None:
        masks = tf.ones([1, 4, 6, 6], tf.uint8)
    return detection_targets(
        proposals,
        valid,
        boxes,
        classes,
        crowd,
        masks,
        rois_per_image=rois,
        positive_ratio=ratio,
        std_dev=STD,
        mask_shape=(4, 4),
        mini_mask=True,
    )


def test_detection_targets_without_ground_truth_are_all_background():
    boxes, classes, crowd = gt([], [], [])
    proposals = [[0.1 * i, 0.1, 0.1 * i + 0.1, 0.2] for i in range(3)] + [[0.0] * 4] * 3
    targets = roi_targets(proposals, boxes, classes, crowd)
    assert targets.positive_slots == 2
    assert not targets.positive.numpy().any()
    assert targets.valid.numpy().sum() == 3  # every real proposal is a negative
    assert not targets.class_ids.numpy().any() and not targets.deltas.numpy().any()
    assert not targets.masks.numpy().any()


def test_detection_targets_keep_crowd_overlaps_out_of_the_negatives():
    boxes, classes, crowd = gt([CROWD], [1], [True])
    proposals = [CROWD, [0.61, 0.61, 0.79, 0.79], [0.0, 0.0, 0.1, 0.1]]
    targets = roi_targets(proposals, boxes, classes, crowd)
    rois = targets.rois.numpy()[0][targets.valid.numpy()[0]]
    np.testing.assert_allclose(rois, [[0.0, 0.0, 0.1, 0.1]])  # only the far box remains
    assert not targets.positive.numpy().any()


def test_ground_truth_boxes_become_positives_with_their_class_and_mask():
    mini = np.zeros((1, 4, 6, 6), np.uint8)
    mini[0, 0, :, :3] = 1  # the hand's left half
    boxes, classes, crowd = gt([HAND], [2], [False])
    targets = roi_targets([[0.0] * 4], boxes, classes, crowd, masks=tf.constant(mini))
    assert targets.positive.numpy()[0].tolist()[:2] == [True, False]
    np.testing.assert_allclose(targets.rois[0, 0], HAND)
    assert targets.class_ids[0, 0] == 2
    np.testing.assert_allclose(targets.deltas[0, 0], np.zeros(4), atol=1e-6)
    np.testing.assert_array_equal(targets.masks[0, 0], [[1, 1, 0, 0]] * 4)


def test_more_positives_than_positive_slots_are_capped():
    boxes, classes, crowd = gt([HAND, [0.5, 0.5, 0.7, 0.7]], [1, 1], [False, False])
    proposals = [HAND] * 5 + [[0.5, 0.5, 0.7, 0.7]] * 5 + [[0.9, 0.0, 1.0, 0.1]] * 2
    targets = roi_targets(proposals, boxes, classes, crowd, rois=8, ratio=0.25)
    assert targets.positive.numpy().sum() == 2
    assert targets.valid.numpy().sum() == 2 + 2  # two positives, the two negatives there are
    positives = targets.rois.numpy()[0][:2]
    assert all(any(np.allclose(p, b) for b in (HAND, [0.5, 0.5, 0.7, 0.7])) for p in positives)
