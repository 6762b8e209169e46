"""`Predictor`: images of any size in, `Detections` in each image's own pixels out, on the
`tiny` preset with random weights."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from handray.config import load_config
from handray.core.detections import Detections
from handray.inference.predictor import Predictor
from handray.inference.thresholds import Thresholds
from handray.model import build_model

CLASS_NAMES = ("left_hand", "right_hand")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    config = load_config("tiny")
    return Predictor(build_model(config, jit_compile=False), Thresholds.from_config(config))


def test_detect_maps_boxes_and_masks_back_to_original_pixels(predictor, monkeypatch):
    """Non-square images of different sizes in one batch: a box drawn at known original pixels
    in the padded square comes back on exactly those pixels, with its mask filling it."""
    images = [np.zeros((100, 150, 3), np.uint8), np.zeros((60, 40, 3), np.uint8)]
    truth = np.array([[10.0, 20.0, 40.0, 61.0], [5.0, 3.0, 59.0, 17.0]], np.float32)
    model = predictor.model
    size = model.image_size

    def fake_predict(padded, windows, min_score):
        scale = tf.cast(windows[:, 2:], tf.float32) / np.array([[100, 150], [60, 40]], np.float32)
        boxes = truth * tf.tile(scale, [1, 2]) / size  # original -> padded, normalised
        return {
            "boxes": boxes[:, None, :],
            "class_ids": tf.constant([[1], [2]]),
            "scores": tf.constant([[0.9], [0.8]]),
            "valid": tf.constant([[True], [True]]),
            "masks": tf.ones([2, 1, 28, 28]),
            "keypoints": tf.zeros([2, 1, 21, 3]),
            "side_score": tf.constant([[0.7], [0.6]]),
        }

    monkeypatch.setattr(model, "predict_padded", fake_predict)
    results = predictor.detect(images)
    for result, image, box in zip(results, images, truth, strict=True):
        np.testing.assert_allclose(result.boxes[0], box, atol=1e-3)
        y1, x1, y2, x2 = box.astype(int)
        expected = np.zeros(image.shape[:2], bool)
        expected[y1:y2, x1:x2] = True
        assert result.masks.shape == (1, *image.shape[:2])
        np.testing.assert_array_equal(result.masks[0], expected)
    assert [r.class_ids.tolist() for r in results] == [[1], [2]]
    assert [r.names for r in results] == [["left_hand"], ["right_hand"]]
    assert [float(r.extras["side_score"][0]) for r in results] == pytest.approx([0.7, 0.6])


def test_detect_output_types_on_real_inference(predictor):
    results = predictor.detect([np.full((70, 90, 3), 128, np.uint8)], min_score=0.0)
    (result,) = results
    count = len(result.scores)
    assert result.boxes.shape == (count, 4)
    assert result.masks.shape == (count, 70, 90) and result.masks.dtype == bool
    assert result.keypoints.shape == (count, 21, 3)
    assert result.class_names == CLASS_NAMES
    assert count <= load_config("tiny").model.detection_max_instances
    assert predictor.detect([]) == []
    with pytest.raises(ValueError, match=r"image 1 has shape \(5, 5\); detect takes RGB"):
        predictor.detect([np.zeros((5, 5, 3), np.uint8), np.zeros((5, 5), np.uint8)])


def test_a_lower_min_score_only_adds_detections_below_the_higher_one(predictor):
    """Thresholds are call arguments of one model: the detections at 0.5 are exactly the
    prefix of those at 0 that score 0.5 or more."""
    image = np.random.default_rng(3).integers(0, 255, (90, 110, 3), np.uint8)
    (everything,) = predictor.detect([image], min_score=0.0)
    threshold = float(np.median(everything.scores))
    (some,) = predictor.detect([image], min_score=threshold)
    kept = everything.scores >= threshold
    assert 0 < kept.sum() < len(kept)
    for key in ("boxes", "class_ids", "scores", "masks", "keypoints"):
        np.testing.assert_array_equal(getattr(some, key), getattr(everything, key)[kept], key)


def test_paths_pil_images_and_arrays_give_the_same_detections(predictor, tmp_path):
    """A call takes any kind of image, one or a list, in batches padded to `batch_size`."""
    pixels = np.random.default_rng(4).integers(0, 255, (50, 70, 3), np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    with Image.open(path) as picture:
        found = predictor([path, str(path), picture, pixels], min_score=0.0)
    single = predictor(pixels, min_score=0.0)
    assert isinstance(single, Detections) and len(found) == 4
    (batch,) = predictor.predict_batch([pixels], 0.0)
    for other in (*found, batch):
        np.testing.assert_allclose(other.scores, single.scores, atol=1e-5)
        np.testing.assert_allclose(other.boxes, single.boxes, atol=1e-3)
