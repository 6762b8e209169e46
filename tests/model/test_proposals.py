"""Region proposals against a numpy reference: decode, clip, top-k, NMS, zero padding."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from handray.model.proposals import generate_proposals
from tests.model.test_boxes import numpy_nms

STD = np.array([0.1, 0.1, 0.2, 0.2], np.float32)


def numpy_proposals(scores, deltas, anchors, window, pre_nms_limit, count, nms_threshold):
    """One image: the `pre_nms_limit` best anchors moved by their deltas (centre shift in box
    units, log-scaled sides), clipped to the window, greedy NMS, zeros after the last keeper.
    Returns (boxes [count, 4], indices of the kept anchors)."""
    order = np.argsort(-scores, kind="stable")[:pre_nms_limit]
    a, d = anchors[order], deltas[order] * STD
    height, width = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    cy = a[:, 0] + height / 2 + d[:, 0] * height
    cx = a[:, 1] + width / 2 + d[:, 1] * width
    height, width = height * np.exp(d[:, 2]), width * np.exp(d[:, 3])
    boxes = np.stack([cy - height / 2, cx - width / 2, cy + height / 2, cx + width / 2], -1)
    low, high = np.tile(window[:2], 2), np.tile(window[2:], 2)
    boxes = np.clip(boxes, low, high)
    kept = numpy_nms(boxes, scores[order], nms_threshold)[:count]
    out = np.zeros((count, 4), np.float32)
    out[: len(kept)] = boxes[kept]
    return out, order[kept]


def run(scores, deltas, anchors, windows, pre_nms_limit, count, nms_threshold):
    return generate_proposals(
        tf.constant(scores, tf.float32),
        tf.constant(deltas, tf.float32),
        tf.constant(anchors, tf.float32),
        tf.constant(windows, tf.float32),
        pre_nms_limit=pre_nms_limit,
        count=count,
        nms_threshold=nms_threshold,
        std_dev=tf.constant(STD),
    )


def test_a_hand_made_case_matches_numpy():
    """Image 0: anchor 4 scores lowest and falls to the pre-NMS limit, anchor 1 overlaps the
    better anchor 0 and falls to NMS, anchor 3 crosses the window and is clipped; three
    proposals survive of four slots. Image 1 has other scores, a narrower window and keeps
    the overlapping pair apart by shrinking anchor 1."""
    anchors = np.array(
        [
            [0.10, 0.10, 0.30, 0.30],
            [0.12, 0.10, 0.32, 0.30],
            [0.50, 0.50, 0.70, 0.70],
            [0.80, 0.80, 1.10, 1.10],
            [0.00, 0.60, 0.20, 0.90],
        ],
        np.float32,
    )
    deltas = np.zeros((2, 5, 4), np.float32)
    deltas[0, 0] = [0.5, -0.5, 1.0, 0.0]  # moved, taller
    deltas[1, 1] = [1.5, 0.0, -4.0, -4.0]  # moved down, shrunk to under half its side
    scores = np.array([[0.9, 0.8, 0.3, 0.7, 0.1], [0.6, 0.95, 0.2, 0.4, 0.5]], np.float32)
    windows = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.75, 1.0]], np.float32)
    boxes, valid = run(scores, deltas, anchors, windows, 4, 4, 0.5)

    expected_kept = [[0, 3, 2], [1, 0, 4, 3]]
    for image, kept in enumerate(expected_kept):
        reference, reference_kept = numpy_proposals(
            scores[image], deltas[image], anchors, windows[image], 4, 4, 0.5
        )
        assert reference_kept.tolist() == kept  # the case exercises what the docstring says
        np.testing.assert_allclose(boxes[image], reference, atol=1e-6)
        assert valid[image].numpy().tolist() == [i < len(kept) for i in range(4)]
    np.testing.assert_allclose(boxes[0, 1], [0.8, 0.8, 1.0, 1.0], atol=1e-6)  # clipped
    assert not boxes[0, 3].numpy().any()  # the empty slot is a zero box


def test_random_anchors_match_numpy():
    rng = np.random.default_rng(5)
    count, batch = 200, 3
    centres = rng.uniform(0.0, 1.0, (count, 2))
    sides = rng.uniform(0.05, 0.3, (count, 2))
    anchors = np.concatenate([centres - sides / 2, centres + sides / 2], 1).astype(np.float32)
    deltas = rng.normal(0.0, 1.0, (batch, count, 4)).astype(np.float32)
    scores = rng.uniform(0.01, 1.0, (batch, count)).astype(np.float32)
    windows = np.array([[0, 0, 1, 1], [0.1, 0, 0.9, 1], [0, 0.2, 1, 0.7]], np.float32)
    boxes, valid = run(scores, deltas, anchors, windows, 120, 40, 0.6)
    assert boxes.shape == (batch, 40, 4) and valid.shape == (batch, 40)
    for image in range(batch):
        reference, kept = numpy_proposals(
            scores[image], deltas[image], anchors, windows[image], 120, 40, 0.6
        )
        np.testing.assert_allclose(boxes[image], reference, atol=1e-5)
        assert valid[image].numpy().sum() == len(kept)


def test_a_limit_above_the_anchor_count_keeps_every_anchor_in_play():
    anchors = np.array([[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.6, 0.6]], np.float32)
    boxes, valid = run(
        np.array([[0.3, 0.7]]), np.zeros((1, 2, 4)), anchors, [[0, 0, 1, 1]], 1000, 3, 0.7
    )
    np.testing.assert_allclose(boxes[0], [anchors[1], anchors[0], np.zeros(4)], atol=1e-6)
    assert valid.numpy().tolist() == [[True, True, False]]
