"""Overlays: masks tinted, boxes outlined, including boxes thinner than a pixel."""

import numpy as np

from handray.visualize import draw_instances, instance_colour


def test_masks_are_tinted_and_thin_boxes_still_get_an_outline():
    image = np.zeros((20, 30, 3), np.uint8)
    masks = np.zeros((2, 20, 30), bool)
    masks[0, 2:6, 2:6] = True
    boxes = np.array([[2, 2, 6, 6], [10.2, 20.1, 10.6, 20.4]], np.float32)  # second: sub-pixel
    picture = np.asarray(draw_instances(image, boxes, masks, ["left_hand", "right_hand"]))
    assert picture[4, 4].any() and not picture[15, 5].any()
    assert tuple(picture[10, 20]) == instance_colour(1)
