"""Box arithmetic against plain numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from handray.model.boxes import (
    batched_nms,
    box_area,
    box_iou,
    clip_boxes,
    decode_boxes,
    encode_boxes,
)

STD_DEV = np.array([0.1, 0.1, 0.2, 0.2], np.float32)


def random_boxes(rng: np.random.Generator, shape: tuple[int, ...], low=0.0, high=1.0):
    """Ordered boxes (y1 <= y2, x1 <= x2) of shape [*shape, 4]."""
    corners = rng.uniform(low, high, (*shape, 2, 2))
    return np.concatenate([corners.min(-2), corners.max(-2)], axis=-1).astype(np.float32)


def sized_boxes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Boxes whose sides (0.02..0.6) differ by far less than decode's growth cap (e^4.135)."""
    centres = rng.uniform(0.0, 1.0, (*shape, 2))
    sizes = rng.uniform(0.02, 0.6, (*shape, 2))
    return np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=-1).astype(np.float32)


def numpy_iou(a: np.ndarray, b: np.ndarray) -> float:
    height = min(a[2], b[2]) - max(a[0], b[0])
    width = min(a[3], b[3]) - max(a[1], b[1])
    intersection = max(height, 0.0) * max(width, 0.0)
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    union = area_a + area_b - intersection
    return intersection / union if union > 0 else 0.0


def numpy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy NMS of one image: best score first, drop what overlaps a kept box too much."""
    kept: list[int] = []
    for index in np.argsort(-scores, kind="stable"):
        if scores[index] <= 0.0:
            break
        if all(numpy_iou(boxes[index], boxes[k]) <= iou_threshold for k in kept):
            kept.append(int(index))
    return kept


def test_box_iou_equals_numpy_iou():
    rng = np.random.default_rng(0)
    a = random_boxes(rng, (2, 9))
    b = random_boxes(rng, (2, 7))
    a[:, 0] = [0.0, 0.0, 0.1, 0.1]  # disjoint from the next one
    b[:, 0] = [0.5, 0.5, 0.9, 0.9]
    a[:, 1] = [0.3, 0.3, 0.3, 0.6]  # empty
    b[:, 1] = [0.2, 0.2, 0.2, 0.2]  # empty
    b[:, 2] = a[:, 2]  # identical
    ours = box_iou(a, b).numpy()
    expected = np.array(
        [[[numpy_iou(x, y) for y in b[image]] for x in a[image]] for image in range(2)]
    )
    assert ours.shape == (2, 9, 7)
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    assert ours[:, 0, 0].max() == 0.0 and ours[:, 1].max() == 0.0 and ours[:, :, 1].max() == 0.0
    np.testing.assert_allclose(ours[:, 2, 2], 1.0, rtol=1e-6)


def test_box_area_is_zero_for_flipped_boxes():
    boxes = np.array([[0.1, 0.2, 0.5, 0.4], [0.5, 0.2, 0.1, 0.4], [0.1, 0.4, 0.5, 0.2]], np.float32)
    np.testing.assert_allclose(box_area(boxes).numpy(), [0.08, 0.0, 0.0], atol=1e-7)


@pytest.mark.parametrize("std_dev", [None, STD_DEV])
def test_encode_then_decode_returns_the_targets(std_dev):
    rng = np.random.default_rng(1)
    anchors = sized_boxes(rng, (2, 30))
    targets = sized_boxes(rng, (2, 30))
    deltas = encode_boxes(anchors, targets, std_dev)
    np.testing.assert_allclose(decode_boxes(anchors, deltas, std_dev).numpy(), targets, atol=1e-5)


def test_encode_matches_hand_computed_deltas():
    anchor = np.array([[0.0, 0.0, 0.2, 0.4]], np.float32)  # centre (0.1, 0.2), size 0.2 x 0.4
    target = np.array([[0.1, 0.1, 0.5, 0.3]], np.float32)  # centre (0.3, 0.2), size 0.4 x 0.2
    expected = np.array([[1.0, 0.0, np.log(2.0), np.log(0.5)]])
    np.testing.assert_allclose(encode_boxes(anchor, target).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(
        encode_boxes(anchor, target, STD_DEV).numpy(), expected / STD_DEV, atol=1e-5
    )


def test_decode_caps_growth_so_huge_deltas_stay_finite():
    anchor = np.array([[0.4, 0.4, 0.6, 0.6]], np.float32)
    decoded = decode_boxes(anchor, np.array([[0.0, 0.0, 1e4, 1e4]], np.float32)).numpy()
    assert np.isfinite(decoded).all()
    np.testing.assert_allclose(decoded[0, 2] - decoded[0, 0], 0.2 * np.exp(4.135), rtol=1e-5)


def test_clip_boxes_clips_each_image_to_its_window():
    rng = np.random.default_rng(2)
    boxes = random_boxes(rng, (2, 20), low=-0.5, high=1.5)
    windows = np.array([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.7, 0.9]], np.float32)
    expected = np.stack(
        [
            np.clip(boxes[image], windows[image, [0, 1, 0, 1]], windows[image, [2, 3, 2, 3]])
            for image in range(2)
        ]
    )
    np.testing.assert_allclose(clip_boxes(boxes, windows).numpy(), expected)


def nms_inputs(seed: int = 3):
    """Two images x 50 boxes in clusters (so that NMS has work), the last 8 of image 1 padding."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.2, 0.8, (2, 50, 2))
    centres[:, 25:] = centres[:, :25] + rng.normal(0.0, 0.03, (2, 25, 2))  # near-duplicates
    sizes = rng.uniform(0.05, 0.3, (2, 50, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=-1).astype(np.float32)
    scores = rng.uniform(0.01, 1.0, (2, 50)).astype(np.float32)
    boxes[1, 42:] = 0.0
    scores[1, 42:] = -1.0
    return boxes, scores


@pytest.mark.parametrize("max_output", [5, 60])
def test_batched_nms_equals_numpy_greedy_nms(max_output):
    boxes, scores = nms_inputs()
    indices, valid = batched_nms(boxes, scores, max_output, iou_threshold=0.3)
    assert indices.shape == valid.shape == (2, max_output)
    survivors_seen = []
    for image in range(2):
        expected = numpy_nms(boxes[image], scores[image], 0.3)
        survivors_seen.append(len(expected))
        count = int(valid[image].numpy().sum())
        assert valid[image, :count].numpy().all()  # valid entries come first
        assert indices[image].numpy().tolist() == (
            expected[:max_output] + [0] * (max_output - min(len(expected), max_output))
        )
        assert count == min(len(expected), max_output)
    # The cases the parameters are meant to cover: a cap below and above the survivors.
    assert min(survivors_seen) > 5 and max(survivors_seen) < 60
    assert all(index < 42 for index in indices[1].numpy()[valid[1].numpy()])


def test_batched_nms_score_threshold_drops_low_scores():
    boxes, scores = nms_inputs()
    indices, valid = batched_nms(boxes, scores, 50, iou_threshold=0.3, score_threshold=0.5)
    for image in range(2):
        kept = indices[image].numpy()[valid[image].numpy()]
        masked = np.where(scores[image] > 0.5, scores[image], -1.0)
        assert kept.tolist() == numpy_nms(boxes[image], masked, 0.3)


def test_batched_nms_compiles_with_xla_and_equals_eager():
    boxes, scores = nms_inputs(seed=4)
    compiled = tf.function(lambda b, s: batched_nms(b, s, 20, iou_threshold=0.5), jit_compile=True)
    ours, eager = compiled(boxes, scores), batched_nms(boxes, scores, 20, iou_threshold=0.5)
    np.testing.assert_array_equal(ours[0].numpy(), eager[0].numpy())
    np.testing.assert_array_equal(ours[1].numpy(), eager[1].numpy())
    assert ours[1].numpy().any()


def test_batched_nms_keeps_images_independent_of_a_flipped_first_box():
    # non_max_suppression_padded guesses the coordinate order of the whole batch from the first
    # box of the first image; one flipped box there must not change another image's result.
    boxes, scores = nms_inputs()
    flipped = boxes.copy()
    flipped[0, 0] = flipped[0, 0, [2, 3, 0, 1]]
    expected = batched_nms(boxes, scores, 30, iou_threshold=0.3)
    ours = batched_nms(flipped, scores, 30, iou_threshold=0.3)
    np.testing.assert_array_equal(ours[0][1].numpy(), expected[0][1].numpy())
    np.testing.assert_array_equal(ours[1][1].numpy(), expected[1][1].numpy())
