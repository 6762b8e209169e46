"""From padded network outputs to each image's detections in its own pixels
(`handray.postprocess`, `handray.unpad`), against NumPy references."""

import numpy as np
import tensorflow as tf

from handray.geometry import resize_and_pad
from handray.postprocess import paste_masks, to_original_pixels
from handray.unpad import image_detections


def test_paste_masks_matches_resizing_each_mask_to_its_box():
    rng = np.random.default_rng(1)
    masks = rng.uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)
    boxes = np.array([[[2, 3, 18, 11], [0, 0, 30, 40], [10, 20, 14, 36]]], np.float32)
    pasted = paste_masks(masks, boxes, tf.constant(30), tf.constant(40)).numpy()
    assert pasted.shape == (1, 3, 30, 40)
    for index, (y1, x1, y2, x2) in enumerate(boxes[0].astype(int)):
        # Integer boxes: the box-sized bilinear resize (pixel centres) is the reference.
        resized = tf.image.resize(masks[0, index][..., None], (y2 - y1, x2 - x1)).numpy()[..., 0]
        expected = np.zeros((30, 40), bool)
        expected[y1:y2, x1:x2] = resized >= 0.5
        np.testing.assert_array_equal(pasted[0, index], expected)


def test_to_original_pixels_keeps_scores_above_the_threshold_in_each_images_pixels():
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
    batch = to_original_pixels(outputs, windows, scales, sizes, 128, min_score=0.5)
    batch = {key: value.numpy() for key, value in batch.items()}
    np.testing.assert_array_equal(batch["num_detections"], [2, 2])
    np.testing.assert_array_equal(batch["image_sizes"], sizes)
    assert batch["masks"].shape == (2, 2, 100, 150)
    expected_boxes = np.minimum(original[:, :2], np.tile(sizes, [1, 2])[:, None, :])
    np.testing.assert_allclose(batch["boxes"], expected_boxes, atol=1e-3)
    for index, (height, width) in enumerate(sizes):
        image = image_detections(batch, index)
        assert image["masks"].shape == (2, height, width)
        assert not batch["masks"][index, :, height:].any()
        assert not batch["masks"][index, :, :, width:].any()
        for mask, (y1, x1, y2, x2) in zip(image["masks"], expected_boxes[index], strict=True):
            expected = np.zeros((height, width), bool)
            expected[round(y1) : round(y2), round(x1) : round(x2)] = True
            np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(batch["class_ids"], [[1, 2], [2, 1]])
    fewer = to_original_pixels(outputs, windows, scales, sizes, 128, min_score=0.75)
    np.testing.assert_array_equal(fewer["num_detections"], [1, 1])
    assert fewer["boxes"].shape[1] == 1


def test_image_detections_cuts_one_image_out_of_a_batch_of_arrays_or_tensors():
    batch = {
        "num_detections": np.array([1, 2]),
        "image_sizes": np.array([[3, 4], [5, 6]]),
        "boxes": np.arange(2 * 2 * 4).reshape(2, 2, 4),
        "class_ids": np.array([[1, 0], [2, 1]]),
        "scores": np.array([[0.9, 0.0], [0.8, 0.7]]),
        "masks": np.ones((2, 2, 5, 6), np.uint8),
    }
    first = image_detections(batch, 0)
    assert first["masks"].shape == (1, 3, 4) and first["rois"].tolist() == [[0, 1, 2, 3]]
    assert image_detections(batch, 1, count=1)["scores"].tolist() == [0.8]
    tensors = image_detections({k: tf.constant(v) for k, v in batch.items()}, 1)
    assert tensors["masks"].shape == (2, 5, 6)
    np.testing.assert_array_equal(tensors["class_ids"], [2, 1])
