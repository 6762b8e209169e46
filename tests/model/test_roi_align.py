"""ROI Align against TensorFlow's own crop_and_resize, eagerly and under XLA."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from handray.model.roi_align import crop_and_resize, pyramid_roi_align

IMAGE_SIZE = 512  # levels: sqrt(h * w) up to 0.155 -> P2, 0.309 -> P3, 0.619 -> P4, above -> P5
# Non-square maps, so that a swapped height and width would show.
MAP_SHAPES = [(40, 56), (20, 28), (10, 14), (5, 7)]


def random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    """Boxes of every awkward kind: partly outside [0, 1], flipped, tiny, degenerate."""
    corners = rng.uniform(-0.3, 1.3, (count, 2, 2))
    ordinary = np.concatenate([corners.min(1), corners.max(1)], axis=1)
    flipped = ordinary[: count // 4][:, [2, 3, 0, 1]]
    tiny = ordinary[: count // 4].copy()
    tiny[:, 2:] = tiny[:, :2] + rng.uniform(1e-4, 1e-2, (len(tiny), 2))
    fixed = np.array(
        [[0, 0, 1, 1], [0, 0, 0, 0], [0.5, 0.5, 0.5, 0.5], [0.2, 0.8, 0.6, 0.1], [-1, -1, 2, 2]]
    )
    return np.concatenate([ordinary, flipped, tiny, fixed]).astype(np.float32)


def crop_inputs(channels: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(3, 11, 17, channels)).astype(np.float32)
    boxes = random_boxes(rng, 24)
    box_indices = rng.integers(0, len(images), len(boxes)).astype(np.int32)
    return images, boxes, box_indices


def pyramid_inputs(seed: int = 0, batch: int = 2, channels: int = 3):
    """P2..P5 maps and [B, R, 4] boxes that reach every level, with padding rows at the end."""
    rng = np.random.default_rng(seed)
    maps = [rng.normal(size=(batch, h, w, channels)).astype(np.float32) for h, w in MAP_SHAPES]
    # Pixel sides 40 and 60 -> P2, 110 -> P3, 224 -> P4, 400 and 900 -> P5 (clipped from P6).
    sides = np.array([40, 60, 110, 224, 400, 900] * batch, np.float32).reshape(batch, -1)
    sides = sides / IMAGE_SIZE * rng.uniform(0.95, 1.05, sides.shape)
    aspect = rng.uniform(0.5, 2.0, sides.shape)
    height, width = sides * np.sqrt(aspect), sides / np.sqrt(aspect)
    y1, x1 = rng.uniform(-0.1, 0.6, (2, *sides.shape))
    sized = np.stack([y1, x1, y1 + height, x1 + width], axis=-1)
    random = np.stack([random_boxes(rng, 8) for _ in range(batch)])
    padding = np.zeros((batch, 3, 4))
    boxes = np.concatenate([sized, random, padding], axis=1).astype(np.float32)
    return maps, boxes


def reference_level(box: np.ndarray) -> int:
    """matterport's level formula in numpy; boxes without area are padding and go to P2."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    if area <= 0:
        return 2
    return int(np.clip(4 + np.round(np.log2(np.sqrt(area) / (224.0 / IMAGE_SIZE))), 2, 5))


def reference_pyramid(maps: list[np.ndarray], boxes: np.ndarray, pool: int) -> np.ndarray:
    """Box by box: pick the level in numpy, crop that level's map with tf.image.crop_and_resize."""
    out = np.zeros((*boxes.shape[:2], pool, pool, maps[0].shape[-1]), np.float32)
    for image in range(boxes.shape[0]):
        for roi in range(boxes.shape[1]):
            level_map = maps[reference_level(boxes[image, roi]) - 2]
            out[image, roi] = tf.image.crop_and_resize(
                level_map, boxes[image, roi][None], [image], (pool, pool)
            )[0]
    return out


@pytest.mark.parametrize("channels", [1, 5])
@pytest.mark.parametrize("crop_size", [(1, 1), (7, 7), (14, 9)])
def test_crop_and_resize_equals_tf_crop_and_resize(crop_size, channels):
    images, boxes, box_indices = crop_inputs(channels)
    ours = crop_and_resize(images, boxes, box_indices, crop_size)
    theirs = tf.image.crop_and_resize(images, boxes, box_indices, crop_size)
    assert ours.dtype == tf.float32
    assert ours.shape == (len(boxes), *crop_size, channels)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)


@pytest.mark.parametrize("crop_size", [(1, 1), (7, 5)])
def test_crop_and_resize_gradient_equals_tf_gradient(crop_size):
    images, boxes, box_indices = crop_inputs(channels=2, seed=1)
    images = tf.constant(images)
    # A fixed random cotangent, so that every output element weighs differently.
    weights = tf.random.stateless_normal((len(boxes), *crop_size, 2), seed=(1, 2))

    def gradient(crop):
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = tf.reduce_sum(crop(images, boxes, box_indices, crop_size) * weights)
        return tape.gradient(loss, images)

    ours = gradient(crop_and_resize)
    theirs = gradient(tf.image.crop_and_resize)
    assert float(tf.reduce_sum(tf.abs(theirs))) > 0
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)


def test_pyramid_roi_align_equals_per_level_crop_and_resize():
    maps, boxes = pyramid_inputs()
    levels = {reference_level(box) for box in boxes.reshape(-1, 4)}
    assert levels == {2, 3, 4, 5}
    ours = pyramid_roi_align([tf.constant(m) for m in maps], boxes, 7, IMAGE_SIZE)
    assert ours.shape == (*boxes.shape[:2], 7, 7, 3)
    np.testing.assert_allclose(ours.numpy(), reference_pyramid(maps, boxes, 7), atol=1e-5)


def test_pyramid_roi_align_padding_boxes_give_finite_output_and_gradient():
    maps, _ = pyramid_inputs()
    maps = [tf.constant(m) for m in maps]
    boxes = tf.zeros((2, 4, 4))
    with tf.GradientTape() as tape:
        tape.watch(maps)
        pooled = pyramid_roi_align(maps, boxes, 3, IMAGE_SIZE)
        loss = tf.reduce_sum(pooled)
    grads = tape.gradient(loss, maps)
    assert np.isfinite(pooled.numpy()).all()
    # A zero box is the point (0, 0) of P2: every sample reads that pixel.
    expected = np.broadcast_to(maps[0].numpy()[:, None, None, None, 0, 0], pooled.shape)
    np.testing.assert_allclose(pooled.numpy(), expected)
    assert all(np.isfinite(g.numpy()).all() for g in grads)
    assert float(tf.reduce_sum(tf.abs(grads[1]))) == 0.0


def test_pyramid_roi_align_gradient_is_dense_and_equals_the_reference_gradient():
    """The maps' gradient is a scatter-add of static shape: a sparse one (`tf.gather`'s) turns,
    through the concat of the levels, into a `Where` per level, whose dynamic shape XLA's
    compiler bounds by evaluating the whole network that feeds the maps."""
    maps, boxes = pyramid_inputs(seed=4)
    weights = np.random.default_rng(5).normal(size=(*boxes.shape[:2], 5, 5, 3)).astype(np.float32)

    def gradient(pool):
        tensors = [tf.constant(m) for m in maps]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            loss = tf.reduce_sum(pool(tensors) * weights)
        return tape.gradient(loss, tensors)

    def reference(tensors):
        rows = []
        for image in range(boxes.shape[0]):
            for roi in range(boxes.shape[1]):
                level_map = tensors[reference_level(boxes[image, roi]) - 2]
                box = boxes[image, roi][None]
                rows.append(tf.image.crop_and_resize(level_map, box, [image], (5, 5))[0])
        return tf.reshape(tf.stack(rows), weights.shape)

    ours = gradient(lambda tensors: pyramid_roi_align(tensors, boxes, 5, IMAGE_SIZE))
    theirs = gradient(reference)
    for mine, expected in zip(ours, theirs, strict=True):
        assert isinstance(mine, tf.Tensor)  # not IndexedSlices
        np.testing.assert_allclose(mine.numpy(), tf.convert_to_tensor(expected), atol=1e-4)

    specs = [tf.TensorSpec(m.shape, tf.float32) for m in maps]
    traced = tf.function(lambda *tensors: gradient_of_sum(tensors, boxes)).get_concrete_function(
        *specs
    )
    assert "Where" not in {op.type for op in traced.graph.get_operations()}


def gradient_of_sum(tensors, boxes):
    with tf.GradientTape() as tape:
        tape.watch(list(tensors))
        loss = tf.reduce_sum(pyramid_roi_align(list(tensors), boxes, 5, IMAGE_SIZE))
    return tape.gradient(loss, list(tensors))


def test_crop_and_resize_compiles_with_xla_and_equals_eager():
    images, boxes, box_indices = crop_inputs(channels=3, seed=2)
    images = tf.constant(images)

    def crop_and_gradient(images, boxes, box_indices):
        with tf.GradientTape() as tape:
            tape.watch(images)
            crops = crop_and_resize(images, boxes, box_indices, (7, 9))
            loss = tf.reduce_sum(crops * crops)
        return crops, tape.gradient(loss, images)

    compiled = tf.function(crop_and_gradient, jit_compile=True)
    outputs = compiled(images, boxes, box_indices), crop_and_gradient(images, boxes, box_indices)
    for ours, eager in zip(*outputs, strict=True):
        np.testing.assert_allclose(ours.numpy(), eager.numpy(), atol=1e-4)


@pytest.mark.slow  # an XLA compile
def test_pyramid_roi_align_compiles_with_xla_and_equals_eager():
    maps, boxes = pyramid_inputs(seed=3)
    maps = [tf.constant(m) for m in maps]

    def pool_and_gradient(maps, boxes):
        with tf.GradientTape() as tape:
            tape.watch(maps)
            pooled = pyramid_roi_align(maps, boxes, 5, IMAGE_SIZE)
            loss = tf.reduce_sum(pooled * pooled)
        return [pooled, *tape.gradient(loss, maps)]

    compiled = tf.function(pool_and_gradient, jit_compile=True)
    for ours, eager in zip(compiled(maps, boxes), pool_and_gradient(maps, boxes), strict=True):
        np.testing.assert_allclose(ours.numpy(), eager.numpy(), atol=1e-4)
