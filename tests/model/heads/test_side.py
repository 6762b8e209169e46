"""The side head (`handray.model.heads.side`) and the turned crops it reads, against PIL and
NumPy references; the box head's hand-or-background mode that goes with it."""

import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from handray.config import load_config
from handray.core.errors import ConfigError
from handray.model import build_model
from handray.model.heads import GroundTruth, RoiSample, SideHead
from handray.model.heads.box import BoxHead
from handray.model.heads.side import MIDDLE_BASE, WRIST
from handray.model.norm import Norm
from handray.model.roi_align import turned_crops


def pil_turned_crop(image: np.ndarray, cx, cy, side, angle, size) -> np.ndarray:
    """PIL's QUAD transform of the square of `side` around (cx, cy) turned by `angle`."""
    c, s, h = math.cos(angle), math.sin(angle), side / 2
    corners = [(-h, -h), (-h, h), (h, h), (h, -h)]  # top left, bottom left, bottom right, ...
    quad = tuple(v for x, y in corners for v in (cx + x * c - y * s, cy + x * s + y * c))
    picture = Image.fromarray(image)
    return np.asarray(picture.transform((size, size), Image.Transform.QUAD, quad, Image.BILINEAR))


@pytest.mark.parametrize(
    ("cx", "cy", "side", "angle"),
    [(20.3, 17.7, 16.0, 0.6), (25.0, 20.0, 10.0, 0.0), (8.0, 30.0, 22.0, -2.4)],
)
def test_turned_crops_match_pils_quad_transform(cx, cy, side, angle):
    image = np.random.default_rng(0).uniform(0, 255, (40, 50)).astype(np.float32)
    expected = pil_turned_crop(image, cx, cy, side, angle, 16)
    batch = np.stack([np.zeros_like(image), image])[..., None]  # the second image is read
    crops = turned_crops(
        batch,
        tf.constant([[[0.0, 0.0]], [[cy, cx]]]),
        tf.constant([[1.0], [side]]),
        tf.constant([[0.0], [angle]]),
        16,
    ).numpy()
    assert crops.shape == (2, 1, 16, 16, 1)
    # The third case reaches past the image's edges: zeros there, as in PIL.
    np.testing.assert_allclose(crops[1, 0, ..., 0], expected, atol=1e-3)


def test_an_upright_turn_puts_the_fingers_up():
    """A bright bar from a wrist towards the fingers at 60 degrees ends up vertical, above the
    centre, once the crop is turned by the direction the head's annotations give."""
    image = np.zeros((64, 64), np.float32)
    angle = math.radians(60.0)  # clockwise from up: fingers towards the upper right
    for t in np.linspace(0, 14, 60):
        x, y = 32 + t * math.sin(angle), 32 - t * math.cos(angle)
        image[round(y), round(x)] = 255.0
    crop = turned_crops(
        image[None, ..., None],
        tf.constant([[[32.0, 32.0]]]),
        tf.constant([[32.0]]),
        tf.constant([[angle]]),
        32,
    ).numpy()[0, 0, ..., 0]
    rows, cols = np.nonzero(crop > 60)
    assert rows.max() <= 17 and rows.min() <= 4  # from the centre upwards
    assert np.all(np.abs(cols - 15.5) <= 2.0)  # along the vertical through the centre


@pytest.fixture(scope="module")
def side_head():
    settings = load_config("tiny").model
    return SideHead(settings, Norm("batch", True, 0.9, 16))


def test_the_side_score_changes_sign_when_the_crop_is_mirrored(side_head):
    crops = tf.random.stateless_uniform([5, 32, 32, 3], seed=[1, 2], minval=-2, maxval=2)
    logit = side_head.side_network(crops).numpy()
    mirrored = side_head.side_network(tf.reverse(crops, axis=[2])).numpy()
    np.testing.assert_allclose(mirrored, -logit, atol=1e-5)
    assert np.abs(logit).max() > 0  # random weights still tell crops apart


def test_annotated_direction_is_wrist_to_middle_base(side_head):
    keypoints = np.zeros((1, 3, 21, 3), np.float32)
    wrists = [(50, 50), (10, 10), (30, 40)]
    bases = [(50, 30), (20, 10), (30, 40)]  # up, right, the same point (unknown)
    for hand, (wrist, base) in enumerate(zip(wrists, bases, strict=True)):
        keypoints[0, hand, WRIST] = (*wrist, 2)
        keypoints[0, hand, MIDDLE_BASE] = (*base, 2)
    truth = GroundTruth(
        boxes=tf.zeros([1, 3, 4]),
        class_ids=tf.constant([[1, 2, 1]]),
        crowd=tf.zeros([1, 3], bool),
        batch={"gt_keypoints": tf.constant(keypoints)},
        image_size=64,
        mini_masks=True,
    )
    sample = RoiSample(
        rois=tf.zeros([1, 4, 4]),
        gt_index=tf.constant([[0, 1, 2, 1]]),
        class_ids=tf.constant([[1, 2, 1, 2]]),
        positive=tf.ones([1, 4], bool),
    )
    direction, known = side_head._annotated_direction(truth, sample)
    angles = np.arctan2(direction[0, :, 0], direction[0, :, 1])
    expected = [0.0, math.pi / 2, None, math.pi / 2]  # atan2(dx, -dy), clockwise from up
    assert known.numpy().tolist() == [[True, True, False, True]]
    for got, want in zip(angles, expected, strict=True):
        if want is not None:
            assert got == pytest.approx(want, abs=1e-6)


def test_refine_labels_each_detection_and_ranks_by_hand_times_side(side_head):
    detections = {
        "boxes": tf.constant([[[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3], [0] * 4]], tf.float32),
        "scores": tf.constant([[0.9, 0.8, 0.7, 0.0]]),
        "class_ids": tf.constant([[1, 1, 1, 0]]),
        "valid": tf.constant([[True, True, True, False]]),
    }
    logits = np.array([[0.0, 3.0, -4.0, 5.0]], np.float32)  # p(first side) per row
    outputs = tf.concat([tf.zeros([1, 4, 2]), tf.constant(logits)[..., None]], axis=-1)
    refined = side_head.refine(detections, outputs)
    first = 1.0 / (1.0 + np.exp(-logits[0, :3]))
    side = np.maximum(first, 1.0 - first)
    expected_scores = np.array([0.9, 0.8, 0.7]) * side
    order = np.argsort(-expected_scores)
    np.testing.assert_allclose(refined["scores"][0, :3], expected_scores[order], rtol=1e-6)
    assert refined["class_ids"][0, :3].numpy().tolist() == [
        1 if first[i] >= 0.5 else 2 for i in order
    ]
    np.testing.assert_allclose(refined["boxes"][0, :3, 2], np.array([1.0, 2.0, 3.0])[order])
    assert refined["valid"].numpy().tolist() == [[True, True, True, False]]
    assert float(refined["scores"][0, 3]) == 0.0 and int(refined["class_ids"][0, 3]) == 0


def test_hand_only_box_head_scores_background_against_any_hand():
    settings = load_config("tiny").model
    head = BoxHead(settings, Norm("batch", True, 0.9, 16))
    assert head.hand_only
    logits = tf.constant([[[0.5, 1.0, -2.0], [2.0, 0.1, 0.3]]])
    scored = head.scored_logits(logits).numpy()
    probs = tf.nn.softmax(logits).numpy()
    # Softmax of the scored logits is (p(background), p(left) + p(right)).
    two_way = tf.nn.softmax(scored).numpy()
    np.testing.assert_allclose(two_way[..., 0], probs[..., 0], rtol=1e-6)
    np.testing.assert_allclose(two_way[..., 1], probs[..., 1:].sum(-1), rtol=1e-6)
    assert head.scored_classes(tf.constant([0, 1, 2])).numpy().tolist() == [0, 1, 1]


def test_the_side_head_trains_only_its_own_layers_from_pixels(small_dataset):
    from handray.data.coco import load_dataset
    from handray.data.pipeline import build_dataset

    config = load_config("tiny")
    model = build_model(config, jit_compile=False)
    batch = next(iter(build_dataset(load_dataset(small_dataset), config, training=True)))
    with tf.GradientTape() as tape:
        values = model.train_step_losses(batch, mini_masks=True)
    variables = model.trainable_variables
    gradients = tape.gradient(values["mrcnn_side_loss"], variables)
    reached = {
        v.path.split("/")[0] for v, g in zip(variables, gradients, strict=True) if g is not None
    }
    assert reached and all(name.startswith("mrcnn_side_") for name in reached)
    assert float(values["mrcnn_side_loss"]) > 0
    assert 0.0 <= float(values["handedness_accuracy"]) <= 1.0


def test_side_head_needs_two_hand_classes():
    with pytest.raises(ConfigError, match="model.side_head"):
        load_config("matterport", {"model.side_head": True})
    with pytest.raises(ConfigError, match="model.side_crop_size"):
        load_config("tiny", {"model.side_crop_size": 30})
