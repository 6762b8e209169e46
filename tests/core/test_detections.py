"""One image's `Detections`, and cutting one image's rows out of a padded batch
(`handray.core.detections`)."""

import numpy as np
import tensorflow as tf

from handray.core.detections import Detections, image_rows

BATCH = {
    "num_detections": np.array([1, 2]),
    "image_sizes": np.array([[3, 4], [5, 6]]),
    "boxes": np.arange(2 * 2 * 4).reshape(2, 2, 4),
    "class_ids": np.array([[1, 0], [2, 1]]),
    "scores": np.array([[0.9, 0.0], [0.8, 0.7]]),
    "masks": np.ones((2, 2, 5, 6), np.uint8),
}


def test_image_rows_cuts_one_image_out_of_a_batch_of_arrays_or_tensors():
    first = image_rows(BATCH, 0)
    assert first["masks"].shape == (1, 3, 4) and first["boxes"].tolist() == [[0, 1, 2, 3]]
    assert image_rows(BATCH, 1, count=1)["scores"].tolist() == [0.8]
    tensors = image_rows({k: tf.constant(v) for k, v in BATCH.items()}, 1)
    assert tensors["masks"].shape == (2, 5, 6)
    np.testing.assert_array_equal(tensors["class_ids"], [2, 1])


def test_detections_from_rows_name_their_classes_and_carry_each_heads_output():
    keypoints = np.arange(2 * 2 * 21 * 3, dtype=np.float32).reshape(2, 2, 21, 3)
    rows = image_rows({**BATCH, "keypoints": keypoints}, 1)
    found = Detections.from_rows(rows, ("left_hand", "right_hand"))
    assert len(found) == 2 and found.names == ["right_hand", "left_hand"]
    assert found.image_size == (5, 6) and found.masks.dtype == bool
    np.testing.assert_array_equal(found.keypoints, keypoints[1])
    kept = found.at_least(0.75)
    assert kept.names == ["right_hand"] and kept.keypoints.shape == (1, 21, 3)
    np.testing.assert_allclose(found.select(np.array([1, 0])).scores, [0.7, 0.8])
    assert Detections.from_rows(image_rows(BATCH, 0), ("hand",)).keypoints is None
