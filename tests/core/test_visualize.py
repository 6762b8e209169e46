"""Overlays: masks tinted, boxes outlined, including boxes thinner than a pixel; hand skeletons
drawn one colour per finger, leaving out unlabelled keypoints, and nothing else changed."""

import numpy as np
import pytest

from handray.core.detections import Detections
from handray.core.hand_keypoints import FINGERS, KEYPOINT_NAMES
from handray.core.visualize import (
    FINGER_COLOURS,
    WRIST_COLOUR,
    draw_detection,
    draw_instances,
    instance_colour,
)


def test_masks_are_tinted_and_thin_boxes_still_get_an_outline():
    image = np.zeros((20, 30, 3), np.uint8)
    masks = np.zeros((2, 20, 30), bool)
    masks[0, 2:6, 2:6] = True
    boxes = np.array([[2, 2, 6, 6], [10.2, 20.1, 10.6, 20.4]], np.float32)  # second: sub-pixel
    picture = np.asarray(draw_instances(image, boxes, masks, ["left_hand", "right_hand"]))
    assert picture[4, 4].any() and not picture[15, 5].any()
    assert tuple(picture[10, 20]) == instance_colour(1)


def _upright_hand():
    """Keypoints [1, 21, 3] of a hand with its fingers straight up: finger f at x = 14 + 18 f,
    joints (tip to base, our order) at y = 25, 40, 55, 70; the wrist at (50, 92)."""
    points = np.zeros((1, len(KEYPOINT_NAMES), 3), np.float32)
    points[0, 0] = (50, 92, 0.9)
    for f in range(len(FINGERS)):
        for joint in range(4):
            points[0, 1 + 4 * f + joint] = (14 + 18 * f, 25 + 15 * joint, 0.9)
    return points


def _detection(keypoints) -> Detections:
    return Detections(
        boxes=np.array([[10, 5, 99, 95]], np.float32),
        class_ids=np.array([1], np.int32),
        scores=np.array([0.9], np.float32),
        masks=np.zeros((1, 100, 100), bool),
        class_names=("hand",),
        extras={} if keypoints is None else {"keypoints": keypoints},
    )


def test_each_finger_is_drawn_in_its_colour():
    picture = np.asarray(
        draw_detection(np.zeros((100, 100, 3), np.uint8), _detection(_upright_hand()))
    )
    for f, finger in enumerate(FINGERS):
        for y in (32, 47, 62):  # halfway along each bone between two joints
            assert tuple(picture[y, 14 + 18 * f]) == FINGER_COLOURS[finger], (finger, y)
    assert tuple(picture[92, 50]) == WRIST_COLOUR
    assert len(set(FINGER_COLOURS.values())) == len(FINGERS)


def test_an_unlabelled_keypoint_and_its_bones_are_left_out():
    points = _upright_hand()
    pip = KEYPOINT_NAMES.index("middle_pip")
    points[0, pip, 2] = 0  # the middle finger's joint at y = 55
    picture = np.asarray(draw_detection(np.zeros((100, 100, 3), np.uint8), _detection(points)))
    x = 14 + 18 * FINGERS.index("middle")
    assert not picture[47, x].any() and not picture[55, x].any() and not picture[62, x].any()
    assert tuple(picture[32, x]) == FINGER_COLOURS["middle"]  # tip to dip is still there


def test_without_keypoints_the_picture_is_unchanged():
    image = np.random.default_rng(0).integers(0, 256, (100, 100, 3), np.uint8)
    without = _detection(None)
    plain = np.asarray(draw_instances(image, without.boxes, without.masks, ["hand"], [0.9]))
    no_head = _detection(np.zeros((1, 0, 3), np.float32))
    for detection in (without, no_head):
        assert np.array_equal(np.asarray(draw_detection(image, detection)), plain)


def test_keypoints_of_another_layout_are_refused():
    with pytest.raises(ValueError, match=r"\[N, 21, 3\]"):
        draw_detection(np.zeros((100, 100, 3), np.uint8), _detection(np.zeros((1, 17, 3))))
