"""The keypoint head (`handray.model.heads.keypoint`): heatmap targets and decoding, its layers
and its loss, against NumPy references."""

import numpy as np
import pytest
import tensorflow as tf

from handray.config import ModelConfig, load_config
from handray.core.errors import ConfigError
from handray.data.coco import load_dataset
from handray.data.hands import hand_categories
from handray.data.pipeline import build_dataset
from handray.model import build_model
from handray.model.heads.base import GroundTruth, RoiSample
from handray.model.heads.keypoint import (
    KEYPOINT_LAYER_PREFIX,
    KeypointHead,
    build_keypoint_head,
    decode_heatmaps,
    gaussian_targets,
    heatmap_targets,
    keypoint_loss,
)
from handray.model.norm import Norm
from tests.conftest import rectangle_mask, write_dataset

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


@pytest.mark.parametrize(("upsample", "side"), [(4, 56), (2, 28), (1, 14)])
def test_keypoint_head_heatmaps_are_the_pool_times_the_upsample_factor(upsample, side):
    head = build_keypoint_head(14, 16, convs=2, width=8, num_keypoints=21, upsample=upsample)
    assert head(np.zeros((3, 14, 14, 16), np.float32)).shape == (3, side, side, 21)
    names = [layer.name for layer in head.layers if layer.weights]
    last = "logits" if upsample == 1 else "deconv"
    assert names == [f"{KEYPOINT_LAYER_PREFIX}{n}" for n in ("conv1", "conv2", last)]


def test_a_reduction_puts_a_1x1_convolution_before_the_3x3_ones():
    head = build_keypoint_head(14, 64, convs=2, width=32, num_keypoints=21, reduction=16)
    assert head(np.zeros((2, 14, 14, 64), np.float32)).shape == (2, 56, 56, 21)
    reduce, conv1 = (head.get_layer(f"{KEYPOINT_LAYER_PREFIX}{n}") for n in ("reduce", "conv1"))
    assert reduce.kernel.shape == (1, 1, 64, 16) and conv1.kernel.shape == (3, 3, 16, 32)
    with pytest.raises(ValueError, match="1, 2 or 4"):
        build_keypoint_head(14, 64, convs=2, width=32, num_keypoints=21, upsample=3)


def test_a_pixel_branch_joins_the_boxs_pixels_to_the_reduced_features():
    head = build_keypoint_head(
        14, 64, convs=2, width=32, num_keypoints=21, upsample=1, reduction=16, pixels=8
    )
    features = np.zeros((2, 14, 14, 64), np.float32)
    crops = np.random.default_rng(0).normal(size=(2, 28, 28, 3)).astype(np.float32)
    out = head([features, crops])
    assert out.shape == (2, 14, 14, 21)
    conv2, conv1 = (
        head.get_layer(f"{KEYPOINT_LAYER_PREFIX}{n}") for n in ("pixels_conv2", "conv1")
    )
    assert conv2.strides == (2, 2) and conv2.kernel.shape[-1] == 8
    assert conv1.kernel.shape == (3, 3, 16 + 8, 32)
    # The heatmaps depend on the pixels, not only on the (here empty) features.
    assert not np.allclose(out.numpy(), head([features, np.zeros_like(crops)]).numpy())


def test_the_new_keys_default_to_the_papers_head_and_are_checked():
    settings = ModelConfig()
    assert (settings.keypoint_upsample, settings.keypoint_sigma) == (4, 0.0)
    assert settings.keypoint_head_reduction == 0
    for key, value in [
        ("keypoint_upsample", 3),
        ("keypoint_sigma", -0.5),
        ("keypoint_head_reduction", -1),
    ]:
        with pytest.raises(ConfigError, match=f"model.{key}"):
            load_config("tiny", {f"model.{key}": value})


# ----- soft (Gaussian) targets ---------------------------------------------------------------


def numpy_gaussians(box, points, sigma, size):
    """Reference: each point's 2-D Gaussian of `sigma` cells at the cell centres, normalised
    over the size x size cells, flattened row-major [K, size * size]."""
    y1, x1, y2, x2 = box
    rows = (points[:, 1] - y1) / (y2 - y1) * size
    cols = (points[:, 0] - x1) / (x2 - x1) * size
    centres = np.arange(size) + 0.5
    squared = (centres[None, :, None] - rows[:, None, None]) ** 2 + (
        centres[None, None, :] - cols[:, None, None]
    ) ** 2
    weights = np.exp(-squared / (2 * sigma**2))
    return (weights / weights.sum(axis=(1, 2), keepdims=True)).reshape(len(points), -1)


def random_points(rng, count, labelled=False):
    """(x, y, v) with x in [0, 100), y in [0, 60); v random in {0, 1, 2} unless `labelled`."""
    visibility = np.full(count, 2.0) if labelled else rng.integers(0, 3, count)
    return np.stack(
        [rng.uniform(0, 100, count), rng.uniform(0, 60, count), visibility], axis=1
    ).astype(np.float32)


@pytest.mark.parametrize("sigma", [0.7, 2.0])
def test_gaussian_targets_sum_to_one_peak_at_the_keypoints_cell_and_match_numpy(sigma):
    rng = np.random.default_rng(3)
    box = np.array([10.0, 20.0, 50.0, 83.0], np.float32)
    points = random_points(rng, 40)
    size = 28
    targets, counts = gaussian_targets(box[None], points[None], size, sigma)
    targets, counts = targets.numpy()[0], counts.numpy()[0]
    rows, cols, inside = numpy_cells(box, points, size)
    np.testing.assert_array_equal(counts, inside)
    assert 0 < inside.sum() < len(points)
    assert targets.shape == (40, size * size)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(targets[inside].argmax(axis=1), (rows * size + cols)[inside])
    expected = numpy_gaussians(box.astype(np.float64), points.astype(np.float64), sigma, size)
    np.testing.assert_allclose(targets, expected, atol=1e-6)


def test_gaussian_targets_stay_finite_for_a_tiny_sigma_and_points_far_outside():
    """A plain exp would underflow to 0 / 0 there, and the NaN would reach the gradients."""
    box = np.array([0.0, 0.0, 1.0, 1.0], np.float32)
    points = np.array([[0.51, 0.47, 2.0], [50.0, -40.0, 2.0]], np.float32)
    targets, counts = gaussian_targets(box[None], points[None], 14, 0.01)
    assert np.isfinite(targets.numpy()).all()
    np.testing.assert_allclose(targets.numpy().sum(axis=-1), 1.0, rtol=1e-6)
    assert counts.numpy().tolist() == [[True, False]]
    # This narrow, the Gaussian is sigma 0's one-hot cell.
    cells, _ = heatmap_targets(box[None], points[None], 14)
    assert targets.numpy()[0, 0, cells.numpy()[0, 0]] == pytest.approx(1.0)


def numpy_log_softmax(logits):
    """Reference: log-probabilities over the cells of logits [..., S, S, K] -> [..., K, S*S]."""
    flat = logits.reshape(*logits.shape[:-3], -1, logits.shape[-1]).astype(np.float64)
    flat = np.moveaxis(flat, -2, -1)
    return flat - np.log(np.exp(flat).sum(axis=-1, keepdims=True))


def test_keypoint_loss_against_soft_targets_is_their_cross_entropy_with_the_softmax():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2, (2, 3, 8, 8, 5)).astype(np.float32)
    targets = rng.dirichlet(np.full(64, 0.3), (2, 3, 5)).astype(np.float32)
    counts = rng.uniform(size=(2, 3, 5)) < 0.5
    expected = -(targets * numpy_log_softmax(logits)).sum(axis=-1)[counts].mean()
    assert float(keypoint_loss(targets, counts, logits)) == pytest.approx(expected, rel=1e-5)
    assert float(keypoint_loss(targets, np.zeros_like(counts), logits)) == 0.0
    # A one-hot soft target gives the sparse loss of its cell.
    cells = targets.argmax(axis=-1).astype(np.int32)
    one_hot = np.eye(64, dtype=np.float32)[cells]
    assert float(keypoint_loss(one_hot, counts, logits)) == pytest.approx(
        float(keypoint_loss(cells, counts, logits)), rel=1e-5
    )


@pytest.mark.parametrize(("sigma", "upsample"), [(0.0, 4), (0.0, 1), (1.5, 2), (0.8, 1)])
def test_the_heads_loss_uses_its_sigma_and_heatmap_size(sigma, upsample):
    """`KeypointHead.loss` on two ROIs against numpy: the one-hot cell at sigma 0 (the loss
    of before), the normalised Gaussian otherwise, on a grid of upsample x pool cells."""
    settings = ModelConfig(
        keypoint_pool_size=4,
        keypoint_head_convs=1,
        keypoint_head_channels=4,
        num_keypoints=6,
        keypoint_sigma=sigma,
        keypoint_upsample=upsample,
    )
    head = KeypointHead(settings, Norm())
    size = head.heatmap_size
    assert size == 4 * upsample
    rng = np.random.default_rng(5)
    image = 64
    hands = np.stack([random_points(rng, 6, labelled=True) * [0.6, 1, 1] for _ in range(2)])
    rois = np.array([[0.1, 0.2, 0.9, 0.95], [0.0, 0.0, 0.5, 0.5]], np.float32)
    logits = rng.normal(0, 1, (1, 2, size, size, 6)).astype(np.float32)
    batch = {"gt_keypoints": tf.constant(hands[None])}
    ground_truth = GroundTruth(None, None, None, batch, image_size=image, mini_masks=False)
    sample = RoiSample(
        rois=tf.constant(rois[None]),
        gt_index=tf.constant([[0, 1]]),
        class_ids=tf.constant([[1, 1]]),
        positive=tf.constant([[True, True]]),
    )
    loss = float(head.loss(ground_truth, sample, tf.constant(logits)))
    log_probs = numpy_log_softmax(logits[0])  # [2, K, S*S]
    losses = []
    for roi, points, log_prob in zip(rois * image, hands, log_probs, strict=True):
        rows, cols, inside = numpy_cells(roi, points, size)
        if sigma:
            targets = numpy_gaussians(roi, points.astype(np.float64), sigma, size)
        else:
            targets = np.eye(size * size)[rows.clip(0, size - 1) * size + cols.clip(0, size - 1)]
        losses.extend(-(targets * log_prob).sum(axis=-1)[inside])
    assert 2 <= len(losses) < 12  # some keypoints count, some do not
    assert loss == pytest.approx(np.mean(losses), rel=1e-5)


# ----- sub-cell decoding -------------------------------------------------------------------


def numpy_local_soft_argmax(logits):
    """Reference: (row, col) [K, 2] in cells of each map of logits [S, S, K]: the mean of the
    cell centres around the best cell, weighted by the softmax probability of the cells of its
    3x3 neighbourhood mirrored at the border (cell -1 reads cell 1, cell S reads cell S - 2);
    and the probability within one cell of the best [K] (no mirroring)."""
    size = logits.shape[0]
    points, scores = [], []
    for heatmap in np.moveaxis(logits.astype(np.float64), -1, 0):
        probs = np.exp(heatmap - heatmap.max())
        probs /= probs.sum()
        row, col = np.unravel_index(probs.argmax(), probs.shape)
        total, moment_r, moment_c = 0.0, 0.0, 0.0
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                r, c = row + dr, col + dc
                p = probs[min(abs(r), 2 * (size - 1) - r), min(abs(c), 2 * (size - 1) - c)]
                total, moment_r, moment_c = total + p, moment_r + p * dr, moment_c + p * dc
        points.append([row + 0.5 + moment_r / total, col + 0.5 + moment_c / total])
        window = probs[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2]
        scores.append(window.sum())
    return np.array(points), np.array(scores)


def test_sub_cell_decoding_recovers_points_between_cell_centres():
    """Heatmaps that are a Gaussian (sigma 1 cell) around points placed off the cell centres
    (as a head trained on Gaussian targets gives them) decode within a fraction of a cell of
    the points, where the best cell's centre alone is up to half a cell (a quarter on average)
    off; in a border cell, the point is never further off than that centre."""
    rng = np.random.default_rng(6)
    size, count = 28, 40
    truth = rng.uniform(1.0, size - 1.0, (count, 2))  # (row, col), in cells
    # Between two cells, near a cell's edge, and in the border cells.
    truth[:5] = [[10.0, 10.0], [10.5, 12.0], [3.25, 20.75], [0.2, 27.9], [0.9, 5.6]]
    centres = np.arange(size) + 0.5
    squared = (centres[:, None, None] - truth[None, None, :, 0]) ** 2 + (
        centres[None, :, None] - truth[None, None, :, 1]
    ) ** 2
    logits = (-squared / 2.0).astype(np.float32)  # [S, S, K]
    box = np.array([10.0, 20.0, 66.0, 48.0], np.float32)  # 2 px rows, 1 px columns per cell
    decoded = decode_heatmaps(logits[None], box[None]).numpy()[0]
    rows = (decoded[:, 1] - box[0]) / (box[2] - box[0]) * size
    cols = (decoded[:, 0] - box[1]) / (box[3] - box[1]) * size
    expected, scores = numpy_local_soft_argmax(logits)
    np.testing.assert_allclose(np.stack([rows, cols], 1), expected, atol=1e-4)
    np.testing.assert_allclose(decoded[:, 2], scores, rtol=1e-5)
    error = np.abs(np.stack([rows, cols], 1) - truth)
    centre_error = np.abs(np.floor(truth) + 0.5 - truth)
    assert error.max() < 0.5
    assert (error <= centre_error + 1e-4).all()
    assert error.mean() < 0.6 * centre_error.mean()
    np.testing.assert_allclose(error[3:5, 0], centre_error[3:5, 0], atol=1e-4)  # border rows
    np.testing.assert_allclose(error[3, 1], centre_error[3, 1], atol=1e-4)  # border column


def test_decoding_compiles_with_xla_and_gives_the_eager_result():
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 3, (2, 3, 14, 14, 21)).astype(np.float32)
    boxes = np.sort(rng.uniform(0, 1, (2, 3, 4)), axis=-1).astype(np.float32)[..., [0, 1, 2, 3]]
    eager = decode_heatmaps(logits, boxes).numpy()
    compiled = tf.function(decode_heatmaps, jit_compile=True)(logits, boxes).numpy()
    assert eager.shape == (2, 3, 21, 3)
    np.testing.assert_allclose(compiled, eager, atol=1e-5)


CHEAP_HEAD = {
    "model.keypoint_head_reduction": 32,
    "model.keypoint_head_convs": 2,
    "model.keypoint_head_channels": 32,
    "model.keypoint_upsample": 1,
    "model.keypoint_sigma": 1.0,
}


@pytest.mark.slow  # an XLA compile
def test_a_model_with_the_cheap_head_trains_on_gaussian_targets_and_compiles_predict(tmp_path):
    rng = np.random.default_rng(8)
    hands = [(8, 6, 40, 30), (20, 34, 56, 60)]  # y1, x1, y2, x2 of two hands on 64x64
    instances = [
        {
            "mask": rectangle_mask(64, 64, *hand),
            "category_id": 1 + index,
            "keypoints": np.column_stack(
                [rng.uniform(hand[1], hand[3], 21), rng.uniform(hand[0], hand[2], 21), [2] * 21]
            ),
        }
        for index, hand in enumerate(hands)
    ]
    images = [{"height": 64, "width": 64, "instances": instances}] * 2
    write_dataset(tmp_path, images, categories=hand_categories("left-right"))
    config = load_config("tiny", {**CHEAP_HEAD, "data.image_size": 64, "data.augment": False})
    model = build_model(config, jit_compile=False)
    batch = next(iter(build_dataset(load_dataset(tmp_path), config, training=True)))
    head = model.roi_head("keypoints")
    with tf.GradientTape() as tape:
        losses = model.train_step_losses(batch, mini_masks=config.data.use_mini_mask)
    loss = losses["mrcnn_keypoint_loss"]
    gradients = tape.gradient(loss, head.network.trainable_variables)
    assert 0 < float(loss) < np.log(14 * 14) + 1  # about chance, a 14x14 grid
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in gradients)
    compiled = build_model(config, jit_compile=True)
    size = config.data.image_size
    images = tf.zeros((2, size, size, 3), tf.uint8)
    windows = tf.constant([[0, 0, size, size], [0, 0, 48, size]], tf.int32)
    out = compiled.predict_padded(images, windows, tf.constant(0.5))
    assert out["keypoints"].shape == (2, config.model.detection_max_instances, 21, 3)
