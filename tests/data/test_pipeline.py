import numpy as np
import pytest
import tensorflow as tf

from handray.config import load_config
from handray.core.errors import DatasetError
from handray.core.geometry import boxes_to_original, boxes_to_padded, resize_and_pad, resize_scale
from handray.core.masks import decode_counts
from handray.data.coco import load_dataset
from handray.data.hands import hand_categories
from handray.data.pipeline import build_dataset, check_classes, decode_masks, flip_class_map
from tests.conftest import random_keypoints, rectangle_mask, write_dataset

NO_PHOTOMETRIC = {
    "data.brightness_delta": 0.0,
    "data.contrast_range": [1.0, 1.0],
    "data.use_mini_mask": False,
    **{
        f"data.appearance.{change}_prob": 0.0
        for change in ("noise", "blur", "jpeg", "hue_saturation", "grey")
    },
}


def examples(dataset, config, **kwargs) -> dict[int, dict[str, np.ndarray]]:
    """Unbatched examples keyed by image id."""
    out = {}
    for batch in build_dataset(dataset, config, batch_size=1, **kwargs):
        example = {k: v.numpy()[0] for k, v in batch.items()}
        out[int(example["image_id"])] = example
    return out


def extent(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float32)


def test_training_batches_have_fixed_shapes_and_types(small_dataset):
    config = load_config("tiny")
    batch = next(iter(build_dataset(load_dataset(small_dataset), config, training=True)))
    size, slots, mini = config.data.image_size, config.data.max_gt_instances, 28
    n = config.train.images_per_worker
    expected = {
        "image": ((n, size, size, 3), tf.uint8),
        "window": ((n, 4), tf.int32),
        "scale": ((n, 2), tf.float32),
        "original_size": ((n, 2), tf.int32),
        "image_id": ((n,), tf.int64),
        "gt_boxes": ((n, slots, 4), tf.float32),
        "gt_class_ids": ((n, slots), tf.int32),
        "gt_crowd": ((n, slots), tf.bool),
        "gt_masks": ((n, slots, mini, mini), tf.uint8),
        "gt_keypoints": ((n, slots, 21, 3), tf.float32),
        "num_gt": ((n,), tf.int32),
    }
    assert {k: (tuple(v.shape), v.dtype) for k, v in batch.items()} == expected


def test_tf_mask_decoder_matches_the_numpy_reference():
    rng = np.random.default_rng(3)
    masks = [(rng.random((23, 31)) < p).astype(np.uint8) for p in (0.0, 0.3, 0.9, 1.0)]
    runs = []
    for mask in masks:
        flat = mask.T.reshape(-1)
        edges = np.flatnonzero(np.diff(flat)) + 1
        counts = np.diff(np.concatenate([[0], edges, [flat.size]]))
        runs.append(np.concatenate([[0], counts]) if flat[0] else counts)
    ragged = tf.ragged.constant([r.tolist() for r in runs], dtype=tf.int32)
    decoded = decode_masks(ragged, tf.constant(23), tf.constant(31)).numpy()
    for got, mask, counts in zip(decoded, masks, runs, strict=True):
        np.testing.assert_array_equal(got, mask)
        np.testing.assert_array_equal(decode_counts(counts, 23, 31), mask)


def test_window_and_scale_map_boxes_back_to_original_pixels(small_dataset):
    dataset = load_dataset(small_dataset)
    config = load_config("tiny", {"data.use_mini_mask": False})
    size = config.data.image_size
    for record in dataset.images:
        example = examples(dataset, config, training=False)[record.image_id]
        window, scale = example["window"], example["scale"]
        # The window is the whole original image, the scale keeps the aspect ratio.
        np.testing.assert_allclose(
            boxes_to_original(window.astype(np.float32), window, scale),
            [0, 0, record.height, record.width],
            atol=1e-4,
        )
        assert max(window[2], window[3]) == size
        # Pixels: the resized image sits in the window, zeros elsewhere.
        original = tf.io.decode_png(tf.io.read_file(str(record.path)))
        resized = tf.image.resize(tf.cast(original, tf.float32), window[2:]).numpy()
        image = example["image"].astype(np.float32)
        np.testing.assert_allclose(image[: window[2], : window[3]], np.round(resized), atol=1)
        assert not image[window[2] :].any() and not image[:, window[3] :].any()
        # Boxes: each instance's box maps back onto its source extent (within one resized pixel).
        sources = [decode_counts(c, record.height, record.width) for c in record.counts]
        for slot, source in enumerate(sources):
            mapped = boxes_to_original(example["gt_boxes"][slot], window, scale).numpy()
            np.testing.assert_allclose(mapped, extent(source), atol=1.0 / scale.min() + 1e-4)
            full = example["gt_masks"][slot]
            np.testing.assert_array_equal(extent(full), example["gt_boxes"][slot])


def test_box_mapping_round_trips_exactly():
    boxes = tf.constant([[3.5, 7.25, 40.0, 61.0], [0.0, 0.0, 1.0, 1.0]])
    window, scale = tf.constant([0, 0, 77, 128]), tf.constant([1.283, 1.28])
    np.testing.assert_allclose(
        boxes_to_original(boxes_to_padded(boxes, window, scale), window, scale), boxes, rtol=1e-6
    )


def test_resize_and_pad_agrees_with_the_training_pipeline(small_dataset):
    dataset = load_dataset(small_dataset)
    config = load_config("tiny")
    for record in dataset.images:
        example = examples(dataset, config, training=False)[record.image_id]
        image = tf.io.decode_png(tf.io.read_file(str(record.path)))
        padded, window, scale = resize_and_pad(image, config.data.image_size)
        np.testing.assert_array_equal(window, example["window"])
        np.testing.assert_allclose(scale, example["scale"])
        np.testing.assert_allclose(np.round(padded), example["image"], atol=1)


@pytest.mark.parametrize(("height", "width"), [(60, 100), (64, 64), (320, 320), (500, 90)])
def test_matterport_square_mode_scale(height, width):
    image_size, min_dim = 128, 100
    expected = min(max(1.0, min_dim / min(height, width)), image_size / max(height, width))
    assert resize_scale(height, width, image_size, min_dim).numpy() == pytest.approx(expected)
    assert resize_scale(height, width, image_size).numpy() == pytest.approx(
        image_size / max(height, width)
    )


def test_flip_swaps_left_and_right_and_keeps_masks_aligned(small_dataset):
    dataset = load_dataset(small_dataset)
    plain = load_config("tiny", NO_PHOTOMETRIC)
    flipped = load_config(
        "tiny", {**NO_PHOTOMETRIC, "data.flip_prob": 1.0, "data.scale_jitter": [1.0, 1.0]}
    )
    reference = examples(dataset, plain, training=False)
    augmented = examples(dataset, flipped, training=True, repeat=False)
    assert flip_class_map(dataset.class_names).tolist() == [0, 2, 1]
    for image_id, ref in reference.items():
        got = augmented[image_id]
        width = ref["window"][3]
        np.testing.assert_array_equal(got["window"], ref["window"])
        np.testing.assert_allclose(
            got["image"][:, :width].astype(int),
            ref["image"][:, :width][:, ::-1].astype(int),
            atol=1,
        )
        filled = ref["gt_class_ids"] > 0
        np.testing.assert_array_equal(got["gt_class_ids"][filled], 3 - ref["gt_class_ids"][filled])
        y1, x1, y2, x2 = ref["gt_boxes"][filled].T
        np.testing.assert_allclose(
            got["gt_boxes"][filled], np.stack([y1, width - x2, y2, width - x1], 1)
        )
        mirrored = ref["gt_masks"][filled][:, :, :width][:, :, ::-1]
        np.testing.assert_array_equal(got["gt_masks"][filled][:, :, :width], mirrored)
    assert any((ref["gt_class_ids"] > 0).any() for ref in reference.values())


def test_flip_map_pairs_left_and_right_names_only():
    assert flip_class_map(("hand",)).tolist() == [0, 1]
    assert flip_class_map(("right_hand", "cup", "left_hand")).tolist() == [0, 3, 2, 1]


def test_crowd_slots_come_after_real_hands_and_limit_keeps_real_ones(small_dataset):
    dataset = load_dataset(small_dataset)
    record = dataset.images[1]  # one right hand (uncompressed RLE) and one crowd hand
    full = examples(dataset, load_config("tiny"), training=False)[record.image_id]
    assert full["gt_class_ids"][:3].tolist() == [2, 1, 0]
    assert full["gt_crowd"][:3].tolist() == [False, True, False]
    assert full["num_gt"] == 2
    one = examples(dataset, load_config("tiny", {"data.max_gt_instances": 1}), training=False)
    assert one[record.image_id]["gt_class_ids"].tolist() == [2]
    assert one[record.image_id]["gt_crowd"].tolist() == [False]


def test_mini_masks_of_rectangles_fill_the_mini_mask(small_dataset):
    dataset = load_dataset(small_dataset)
    for example in examples(dataset, load_config("tiny"), training=False).values():
        for slot in range(example["num_gt"]):
            # Resizing may round a corner pixel away; the box is otherwise full.
            assert example["gt_masks"][slot].mean() > 0.97
        assert not example["gt_masks"][example["num_gt"] :].any()


def test_mini_masks_expand_back_to_the_full_mask(tmp_path):
    mask = np.zeros((96, 96), np.uint8)
    yy, xx = np.mgrid[:96, :96]
    mask[(yy - 50) ** 2 / 30**2 + (xx - 40) ** 2 / 18**2 <= 1] = 1
    write_dataset(
        tmp_path, [{"height": 96, "width": 96, "instances": [{"mask": mask, "category_id": 1}]}]
    )
    dataset = load_dataset(tmp_path)
    mini = examples(dataset, load_config("tiny"), training=False)[1]
    full = examples(dataset, load_config("tiny", {"data.use_mini_mask": False}), training=False)[1]
    y1, x1, y2, x2 = full["gt_boxes"][0].astype(int)
    expanded = tf.image.resize(
        mini["gt_masks"][0][..., None].astype(np.float32), (y2 - y1, x2 - x1)
    )
    expanded = expanded.numpy()[..., 0] >= 0.5
    truth = full["gt_masks"][0][y1:y2, x1:x2].astype(bool)
    assert (expanded & truth).sum() / (expanded | truth).sum() > 0.95


def test_scale_jitter_above_one_crops_a_square_and_keeps_boxes_inside(small_dataset):
    dataset = load_dataset(small_dataset)
    config = load_config("tiny", {"data.scale_jitter": [2.0, 2.5], "data.use_mini_mask": False})
    for example in examples(dataset, config, training=True, repeat=False).values():
        size = config.data.image_size
        window = example["window"]
        assert window[2] <= size and window[3] <= size and max(window[2:]) == size
        for slot in range(example["num_gt"]):
            box = example["gt_boxes"][slot]
            np.testing.assert_array_equal(extent(example["gt_masks"][slot]), box)
            assert 0 <= box[0] < box[2] <= window[2] and 0 <= box[1] < box[3] <= window[3]


def test_shards_are_disjoint_and_cover_the_dataset(small_dataset):
    dataset = load_dataset(small_dataset)
    config = load_config("tiny")
    ids = [
        set(examples(dataset, config, training=False, num_shards=2, shard_index=i))
        for i in range(2)
    ]
    assert ids[0].isdisjoint(ids[1])
    assert ids[0] | ids[1] == {r.image_id for r in dataset.images}


def test_same_seed_same_augmentation_and_another_seed_differs(small_dataset):
    dataset = load_dataset(small_dataset)

    def first_images(seed: int) -> np.ndarray:
        config = load_config("tiny", {"data.seed": seed})
        batches = build_dataset(dataset, config, training=True, batch_size=3).take(2)
        return np.concatenate([b["image"].numpy() for b in batches])

    np.testing.assert_array_equal(first_images(1), first_images(1))
    assert not np.array_equal(first_images(1), first_images(2))


def test_class_count_mismatch_says_what_to_set(small_dataset):
    config = load_config("matterport")
    with pytest.raises(DatasetError, match=r"--set model.num_classes=3"):
        build_dataset(load_dataset(small_dataset), config, training=True)


def test_image_whose_size_differs_from_its_annotation_fails_loudly(tmp_path):
    write_dataset(
        tmp_path,
        [
            {
                "height": 20,
                "width": 30,
                "instances": [{"mask": rectangle_mask(20, 30, 1, 1, 5, 5), "category_id": 1}],
            }
        ],
    )
    from PIL import Image

    Image.new("RGB", (31, 20)).save(tmp_path / "images" / "train_001.png")
    data = build_dataset(load_dataset(tmp_path), load_config("tiny"), training=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="differs from its COCO width/height"):
        next(iter(data))


def in_square(points: np.ndarray, factor: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Numpy reference: [..., 3] keypoints already mirrored and shifted, scaled by `factor`
    (x, y); labelled ones inside [0, limit] kept, the rest (0, 0, 0)."""
    xy = points[..., :2] * factor
    keep = (points[..., 2] > 0) & ((xy >= 0) & (xy <= limit)).all(-1)
    return np.where(keep[..., None], np.concatenate([xy, points[..., 2:]], -1), 0)


@pytest.fixture
def hands_60x100(tmp_path) -> tuple:
    """One non-square image: a crowd hand with keypoints listed first, a right hand with
    keypoints, a left hand without. Returns the dataset and the keypoints written, by slot."""
    rng = np.random.default_rng(1)
    crowd, right = random_keypoints(rng, 60, 100), random_keypoints(rng, 60, 100)
    instances = [
        {"mask": rectangle_mask(60, 100, 2, 2, 10, 10), "category_id": 1, "iscrowd": 1},
        {"mask": rectangle_mask(60, 100, 5, 50, 40, 90), "category_id": 2},
        {"mask": rectangle_mask(60, 100, 20, 10, 55, 45), "category_id": 1},
    ]
    instances[0]["keypoints"], instances[1]["keypoints"] = crowd, right
    images = [{"height": 60, "width": 100, "instances": instances}]
    write_dataset(tmp_path, images, categories=hand_categories("left-right"))
    return load_dataset(tmp_path), np.stack([right, np.zeros((21, 3)), crowd])


def test_keypoints_are_resized_like_boxes_in_box_slot_order(hands_60x100):
    dataset, written = hands_60x100
    got = examples(dataset, load_config("tiny"), training=False)[1]
    # 100 px wide fills the 128 px square; 60 rows become round(60 * 1.28) = 77.
    assert got["window"].tolist() == [0, 0, 77, 128]
    expected = in_square(written, np.array([128 / 100, 77 / 60]), np.array([128, 77]))
    assert got["gt_class_ids"][:4].tolist() == [2, 1, 1, 0]
    np.testing.assert_allclose(got["gt_keypoints"][:3], expected, rtol=1e-6, atol=1e-4)
    assert not got["gt_keypoints"][3:].any()
    assert {0, 1, 2} <= set(got["gt_keypoints"][0, :, 2].tolist())


def test_flip_mirrors_keypoints_and_keeps_their_indices(hands_60x100):
    dataset, written = hands_60x100
    plain = load_config("tiny", NO_PHOTOMETRIC)
    flipped = load_config(
        "tiny", {**NO_PHOTOMETRIC, "data.flip_prob": 1.0, "data.scale_jitter": [1.0, 1.0]}
    )
    ref = examples(dataset, plain, training=False)[1]
    got = examples(dataset, flipped, training=True, repeat=False)[1]
    mirrored = written.copy()
    mirrored[..., 0] = 100 - written[..., 0]
    expected = in_square(mirrored, np.array([128 / 100, 77 / 60]), np.array([128, 77]))
    np.testing.assert_allclose(got["gt_keypoints"][:3], expected, rtol=1e-6, atol=1e-4)
    # Against the unflipped example: x mirrored in the window, y and v as they were, same joint.
    labelled = ref["gt_keypoints"][..., 2] > 0
    np.testing.assert_allclose(
        got["gt_keypoints"][..., 0][labelled],
        128 - ref["gt_keypoints"][..., 0][labelled],
        atol=1e-4,
    )
    np.testing.assert_allclose(
        got["gt_keypoints"][..., 1:], ref["gt_keypoints"][..., 1:], atol=1e-4
    )
    assert not got["gt_keypoints"][~labelled].any()
    assert got["gt_class_ids"][:3].tolist() == [1, 2, 2]  # left and right swapped


def test_scale_jitter_crops_keypoints_with_the_boxes_and_zeroes_the_cut_ones(tmp_path):
    # 64 px images scaled 2 x 1.25 = 2.5 exactly to 160 px, then cut to 128 at a random offset.
    # The hand's mask edges (16 and 48) land on whole pixels (40 and 120), so its box gives the
    # offset; keypoints at the image's edges fall outside the cut on at least one side.
    rng = np.random.default_rng(2)
    edges = [[0.2, 32, 2], [63.8, 32, 2], [32, 0.2, 1], [32, 63.8, 2]]
    points = [
        np.concatenate([[[16, 16, 2], [48, 48, 1]], edges, random_keypoints(rng, 64, 64, 15)])
        for _ in range(3)
    ]
    mask = rectangle_mask(64, 64, 16, 16, 48, 48)
    images = [
        {"height": 64, "width": 64, "instances": [{"mask": mask, "category_id": 1, "keypoints": p}]}
        for p in points
    ]
    write_dataset(tmp_path, images, categories=hand_categories("left-right"))
    config = load_config("tiny", {"data.scale_jitter": [1.25, 1.25], "data.flip_prob": 0.0})
    dropped = kept = 0
    for image_id, got in examples(
        load_dataset(tmp_path), config, training=True, repeat=False
    ).items():
        y1, x1, y2, x2 = got["gt_boxes"][0]
        assert (y2 - y1, x2 - x1) == (80, 80) and got["window"].tolist() == [0, 0, 128, 128]
        shifted = points[image_id - 1].copy()
        shifted[:, :2] -= np.array([40 - x1, 40 - y1]) / 2.5  # the offset, in original pixels
        expected = in_square(shifted, np.array([2.5, 2.5]), np.array([128, 128]))
        np.testing.assert_allclose(got["gt_keypoints"][0], expected, atol=1e-4)
        np.testing.assert_allclose(got["gt_keypoints"][0, :2, :2], [[x1, y1], [x2, y2]], atol=1e-4)
        cut = got["gt_keypoints"][0, 2:6, 2] == 0
        dropped, kept = dropped + cut.sum(), kept + (~cut).sum()
    assert dropped >= 3 and kept >= 1


def test_dataset_without_keypoints_gives_unlabelled_ones(small_dataset):
    dataset = load_dataset(small_dataset)
    for example in examples(dataset, load_config("tiny"), training=False).values():
        assert example["gt_keypoints"].shape == (8, 21, 3) and not example["gt_keypoints"].any()


def test_model_without_keypoint_head_gets_an_empty_keypoint_axis(hands_60x100):
    config = load_config("tiny", {"model.num_keypoints": 0})
    got = examples(hands_60x100[0], config, training=False)[1]
    assert got["gt_keypoints"].shape == (8, 0, 3)


def test_keypoint_count_mismatch_says_what_to_set(hands_60x100):
    config = load_config("tiny", {"model.num_keypoints": 17})
    message = (
        r"21 keypoints per instance but model.num_keypoints=17; use --set model.num_keypoints=21"
    )
    with pytest.raises(DatasetError, match=message):
        check_classes(hands_60x100[0], config)
    with pytest.raises(DatasetError, match=message):
        build_dataset(hands_60x100[0], config, training=True)
