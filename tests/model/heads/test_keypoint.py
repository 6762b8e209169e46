"""The keypoint head (`handray.model.heads.keypoint`): heatmap targets and decoding, its layers
and its loss, against NumPy references."""

import numpy as np
import pytest
import tensorflow as tf

from handray.model.heads.keypoint import (
    KEYPOINT_LAYER_PREFIX,
    build_keypoint_head,
    decode_heatmaps,
    heatmap_targets,
    keypoint_loss,
)

SIZE = 56


def numpy_cells(box, points, size=SIZE):
    """Reference: each point's (row, col) cell in the box's size x size grid, and whether it
    counts (labelled and inside)."""
    y1, x1, y2, x2 = box
    rows = (points[:, 1] - y1) / (y2 - y1) * size
    cols = (points[:, 0] - x1) / (x2 - x1) * size
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size) & (points[:, 2] > 0)
    return np.floor(rows).astype(int), np.floor(cols).astype(int), inside


def test_targets_are_the_cell_each_labelled_keypoint_falls_in():
    rng = np.random.default_rng(0)
    box = np.array([10.0, 20.0, 50.0, 83.0], np.float32)
    points = np.stack(
        [rng.uniform(0, 100, 40), rng.uniform(0, 60, 40), rng.integers(0, 3, 40)], axis=1
    ).astype(np.float32)
    index, counts = heatmap_targets(box[None], points[None], SIZE)
    rows, cols, inside = numpy_cells(box, points)
    np.testing.assert_array_equal(counts.numpy()[0], inside)
    assert 0 < inside.sum() < len(points)
    np.testing.assert_array_equal(index.numpy()[0][inside], (rows * SIZE + cols)[inside])
    assert not index.numpy()[0][~inside].any()


def test_a_keypoint_encoded_and_decoded_comes_back_within_half_a_cell():
    rng = np.random.default_rng(1)
    boxes = np.array([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 100.0, 90.0]], np.float32)
    points = np.stack(
        [
            np.stack([rng.uniform(20, 80, 21), rng.uniform(10, 50, 21), np.full(21, 2.0)], 1),
            np.stack([rng.uniform(0, 90, 21), rng.uniform(0, 100, 21), np.full(21, 2.0)], 1),
        ]
    ).astype(np.float32)
    index, counts = heatmap_targets(boxes, points, SIZE)
    assert counts.numpy().all()
    # Logits peaked at each target cell, as a trained head would give them.
    logits = tf.transpose(tf.one_hot(index, SIZE * SIZE, on_value=8.0), [0, 2, 1])
    logits = tf.reshape(logits, [2, SIZE, SIZE, 21])
    decoded = decode_heatmaps(logits, boxes).numpy()
    cell = np.stack([(boxes[:, 3] - boxes[:, 1]), (boxes[:, 2] - boxes[:, 0])], 1) / SIZE
    error = np.abs(decoded[..., :2] - points[..., :2])
    assert (error <= cell[:, None, :] / 2 + 1e-4).all()
    assert error.max() < 1.0  # within a pixel: boxes up to 112 px on a 56-cell grid
    # The score is the probability within one cell of the peak: the peak's own here, plus its
    # 3x3 neighbours' (8 of them, or fewer at a border).
    rows, cols = index.numpy() // SIZE, index.numpy() % SIZE
    neighbours = (np.minimum(rows + 1, SIZE - 1) - np.maximum(rows - 1, 0) + 1) * (
        np.minimum(cols + 1, SIZE - 1) - np.maximum(cols - 1, 0) + 1
    ) - 1
    total = np.exp(8.0) + SIZE * SIZE - 1
    np.testing.assert_allclose(decoded[..., 2], (np.exp(8.0) + neighbours) / total, rtol=1e-5)


def test_keypoint_loss_is_the_softmax_cross_entropy_over_cells_of_counted_keypoints():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 1, (2, 3, 8, 8, 5)).astype(np.float32)
    targets = rng.integers(0, 64, (2, 3, 5)).astype(np.int32)
    counts = rng.uniform(size=(2, 3, 5)) < 0.5
    flat = logits.reshape(2, 3, 64, 5)
    log_probs = flat - np.log(np.exp(flat).sum(axis=2, keepdims=True))
    picked = np.take_along_axis(log_probs, targets[:, :, None, :], axis=2)[:, :, 0]
    expected = -picked[counts].mean()
    assert float(keypoint_loss(targets, counts, logits)) == pytest.approx(expected, rel=1e-5)
    assert float(keypoint_loss(targets, np.zeros_like(counts), logits)) == 0.0


def test_keypoint_head_gives_one_heatmap_per_keypoint_at_four_times_the_pool():
    head = build_keypoint_head(14, 16, convs=3, width=8, num_keypoints=21)
    out = head(np.zeros((5, 14, 14, 16), np.float32))
    assert out.shape == (5, 56, 56, 21)
    names = [layer.name for layer in head.layers if layer.weights]
    assert names == [f"{KEYPOINT_LAYER_PREFIX}conv{i}" for i in (1, 2, 3)] + [
        f"{KEYPOINT_LAYER_PREFIX}deconv"
    ]
