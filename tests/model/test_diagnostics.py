"""Stage diagnostics against the same numbers computed in numpy."""

import numpy as np
import pytest
import tensorflow as tf

from handray.model.boxes import box_iou
from handray.model.diagnostics import RECALL_PROPOSALS, proposal_recall, training_diagnostics
from handray.model.targets import RoiTargets


def random_boxes(rng, shape):
    centres = rng.uniform(0.2, 0.8, (*shape, 2))
    sides = rng.uniform(0.05, 0.3, (*shape, 2))
    return np.concatenate([centres - sides / 2, centres + sides / 2], -1).astype(np.float32)


def test_proposal_recall_matches_numpy_and_looks_only_at_the_top_100():
    rng = np.random.default_rng(0)
    proposals = random_boxes(rng, (2, 150))
    valid = rng.uniform(size=(2, 150)) > 0.2
    hands = random_boxes(rng, (2, 4))
    hands[1, 2] = proposals[1, 120]  # only proposal 120 covers it: outside the top 100
    real = np.array([[True, True, True, False], [True, True, True, True]])
    for threshold in (0.5, 0.7):
        got = proposal_recall(proposals, valid, hands, real, threshold).numpy()
        hits = []
        for b in range(2):
            top = proposals[b, :RECALL_PROPOSALS][valid[b, :RECALL_PROPOSALS]]
            iou = box_iou(top[None], hands[b][None]).numpy()[0]
            hits += [iou[:, m].max() >= threshold for m in range(4) if real[b, m]]
        assert got == np.float32(np.mean(hits))
    assert proposal_recall(proposals, valid, hands, np.zeros((2, 4), bool), 0.5) == 0.0


def test_head_accuracies_and_positive_ratio_count_the_right_rois():
    class_ids = tf.constant([[1, 2, 2, 0, 0, 0]])
    positive = tf.constant([[True, True, True, False, False, False]])
    valid = tf.constant([[True, True, True, True, True, False]])
    targets = RoiTargets(
        rois=tf.zeros([1, 6, 4]),
        valid=valid,
        positive=positive,
        class_ids=class_ids,
        gt_index=tf.zeros([1, 6], tf.int32),
        positive_slots=3,
        mask_slots=1,
    )
    # ROI 0: right class; ROI 1: called background but its best hand class is right;
    # ROI 2: wrong side. Negatives do not count towards either accuracy.
    logits = tf.constant(
        [[[0, 5, 1], [5, 1, 2], [0, 3, 1], [9, 0, 0], [0, 9, 0], [0, 0, 9]]], tf.float32
    )
    out = training_diagnostics(
        anchors_per_hand=tf.constant([[3.0, 5.0, 0.0]]),
        real=tf.constant([[True, True, False]]),
        gt_boxes=tf.zeros([1, 3, 4]),
        proposals=tf.zeros([1, 4, 4]),
        proposal_valid=tf.zeros([1, 4], bool),
        targets=targets,
        class_logits=logits,
        class_ids=class_ids,
    )
    values = {k: float(v) for k, v in out.items()}
    expected = {
        "rpn_positives_per_hand": 4.0,
        "roi_positive_ratio": 3 / 5,
        "head_fg_accuracy": 1 / 3,
        "handedness_accuracy": 2 / 3,
        "proposal_recall_50": 0.0,
    }
    for name, value in expected.items():
        assert values[name] == pytest.approx(value, rel=1e-6), name
