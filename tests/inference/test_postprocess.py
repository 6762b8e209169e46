"""From padded network outputs to each image's detections in its own pixels
(`handray.inference.postprocess`, then `handray.core.detections.image_rows`), against NumPy
references."""

import numpy as np
import pytest
import tensorflow as tf

from handray.config import load_config
from handray.core.detections import image_rows
from handray.core.geometry import resize_and_pad
from handray.inference.postprocess import to_original_pixels
from handray.model.heads import MaskHead
from handray.model.norm import Norm


@pytest.fixture(scope="module")
def heads() -> list[MaskHead]:
    """A model's ROI heads without the keypoint head."""
    return [MaskHead(load_config("tiny").model, Norm())]


def test_to_original_pixels_keeps_scores_above_the_threshold_in_each_images_pixels(heads):
    """Two images of different sizes in one batch, three detection slots each: boxes map back
    through each image's own window and scale, are clipped to it, and rows below `min_score`
    or not valid are dropped; masks are zero outside the image and outside the box."""
    sizes = np.array([[100, 150], [60, 40]], np.int32)
    prepared = [resize_and_pad(tf.zeros([*s, 3], tf.uint8), 128) for s in sizes]
    windows = tf.stack([p[1] for p in prepared])
    scales = tf.stack([p[2] for p in prepared]).numpy()
    original = np.array(
        [
            [[10, 20, 40, 61], [0, 0, 100, 150], [5, 5, 9, 9]],
            [[5, 3, 59, 17], [50, 30, 70, 45], [0, 0, 1, 1]],  # the 2nd runs past the image
        ],
        np.float32,
    )
    padded = original * np.tile(scales, [1, 2])[:, None, :] / 128.0
    outputs = {
        "boxes": tf.constant(padded),
        "class_ids": tf.constant([[1, 2, 1], [2, 1, 1]]),
        "scores": tf.constant([[0.9, 0.6, 0.2], [0.8, 0.7, 0.0]]),
        "valid": tf.constant([[True, True, True], [True, True, False]]),
        "masks": tf.ones([2, 3, 28, 28]),
    }
    batch = to_original_pixels(outputs, heads, windows, scales, sizes, 128, 0.5, 0.5)
    batch = {key: value.numpy() for key, value in batch.items()}
    # Each head's output under its name; no keypoint head, no keypoints.
    assert set(batch) == {"num_detections", "boxes", "class_ids", "scores", "image_sizes", "masks"}
    np.testing.assert_array_equal(batch["num_detections"], [2, 2])
    np.testing.assert_array_equal(batch["image_sizes"], sizes)
    assert batch["masks"].shape == (2, 2, 100, 150)
    expected_boxes = np.minimum(original[:, :2], np.tile(sizes, [1, 2])[:, None, :])
    np.testing.assert_allclose(batch["boxes"], expected_boxes, atol=1e-3)
    for index, (height, width) in enumerate(sizes):
        image = image_rows(batch, index)
        assert image["masks"].shape == (2, height, width)
        assert not batch["masks"][index, :, height:].any()
        assert not batch["masks"][index, :, :, width:].any()
        for mask, (y1, x1, y2, x2) in zip(image["masks"], expected_boxes[index], strict=True):
            expected = np.zeros((height, width), bool)
            expected[round(y1) : round(y2), round(x1) : round(x2)] = True
            np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(batch["class_ids"], [[1, 2], [2, 1]])
    fewer = to_original_pixels(outputs, heads, windows, scales, sizes, 128, 0.75, 0.5)
    np.testing.assert_array_equal(fewer["num_detections"], [1, 1])
    assert fewer["boxes"].shape[1] == 1
