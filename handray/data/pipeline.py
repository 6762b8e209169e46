"""The tf.data input pipeline: COCO records to fixed-shape Mask R-CNN training batches.

Everything inside the map function is a TensorFlow op (no `py_function`), so decoding, mask
expansion and augmentation run in parallel outside the Python interpreter. Each worker of a
distributed run reads its own shard. Randomness is stateless and keyed by the element's position,
so a run with the same seed sees the same augmentations: flip, scale jitter with a crop,
brightness and contrast, and the photo-like appearance changes of `appearance.py` (pixels only,
on the image's region before padding).

Every example holds:
  image           uint8   [S, S, 3]   resized keeping aspect ratio, zero-padded at the bottom/right
  window          int32   [4]         the image's extent in the square: y1, x1, y2, x2
  scale           float32 [2]         per-axis resize factor (sy, sx); see `data.resize`
  original_size   int32   [2]         height, width of the source image
  image_id        int64   []          the COCO image id
  gt_boxes        float32 [M, 4]      y1, x1, y2, x2 in square pixels (y2/x2 exclusive)
  gt_class_ids    int32   [M]         1..K; 0 marks padding
  gt_crowd        bool    [M]         crowd regions: ignored, never background
  gt_masks        uint8   [M, m, m]   mini-masks cropped to each box (or [M, S, S] full masks)
  gt_keypoints    float32 [M, K, 3]   x, y in the frame of gt_boxes' corners, v 0/1/2; (0, 0, 0)
                                      when unlabelled or cut off; K = model.num_keypoints (all
                                      zeros when the dataset has no keypoints)
  num_gt          int32   []          filled slots among the M (non-crowd instances first)
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from handray.config import Config
from handray.core.errors import DatasetError
from handray.core.geometry import pixel_centre_boxes, resize_scale, resized_shape
from handray.data.appearance import NUM_SEEDS, random_appearance
from handray.data.coco import CocoDataset

log = logging.getLogger(__name__)

_SIDES = ("left", "right")


def flip_class_map(class_names: tuple[str, ...] | list[str]) -> np.ndarray:
    """Class-id permutation for a horizontal flip: `left_X` <-> `right_X`, others unchanged."""
    index = {name: i + 1 for i, name in enumerate(class_names)}
    mapping = np.arange(len(class_names) + 1, dtype=np.int32)
    for name, class_id in index.items():
        for side, other in zip(_SIDES, reversed(_SIDES), strict=True):
            if name.startswith(side):
                mirror = other + name[len(side) :]
                mapping[class_id] = index.get(mirror, class_id)
    return mapping


def build_dataset(
    dataset: CocoDataset,
    config: Config,
    *,
    training: bool,
    batch_size: int | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    repeat: bool | None = None,
    threads: int | None = None,
) -> tf.data.Dataset:
    """Batches for training (shuffled, augmented, repeated) or evaluation (in order, as is).

    `num_shards`/`shard_index` give each distributed worker a disjoint part of the images;
    `threads` caps the pipeline's threads (default: all cores), for workers sharing a machine.
    """
    check_classes(dataset, config)
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} is not within 0..{num_shards - 1}")
    if len(dataset) < num_shards:
        raise DatasetError(
            f"{dataset.annotation_file}: {len(dataset)} image(s) cannot feed {num_shards} workers"
        )
    batch_size = batch_size or config.train.images_per_worker
    repeat = training if repeat is None else repeat
    data = tf.data.Dataset.from_tensor_slices(_slices(dataset, config.model.num_keypoints))
    data = data.shard(num_shards, shard_index)
    if training:
        data = data.shuffle(config.data.shuffle_buffer, seed=config.data.seed)
    if repeat:
        data = data.repeat()
    load = _example_loader(config, flip_class_map(dataset.class_names), training, shard_index)
    load = tf.autograph.experimental.do_not_convert(load)  # plain TF ops: no conversion
    data = data.enumerate().map(load, num_parallel_calls=tf.data.AUTOTUNE)
    data = data.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    if threads:
        options.threading.private_threadpool_size = threads
    return data.with_options(options).prefetch(tf.data.AUTOTUNE)


def decode_masks(counts: tf.RaggedTensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Expand per-instance run lengths ([n, (runs)]) into uint8 masks [n, H, W]."""
    values = tf.ragged.range(counts.row_lengths()).flat_values % 2
    flat = tf.repeat(tf.cast(values, tf.uint8), counts.flat_values)
    masks = tf.reshape(flat, tf.stack([counts.nrows(out_type=tf.int32), width, height]))
    return tf.transpose(masks, [0, 2, 1])


def boxes_from_masks(masks: tf.Tensor) -> tf.Tensor:
    """Pixel extent of each [n, H, W] mask as float y1, x1, y2, x2 (exclusive ends)."""
    masks = tf.cast(masks, tf.bool)
    rows = tf.reduce_any(masks, axis=2)
    cols = tf.reduce_any(masks, axis=1)

    def extent(lines: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        lines = tf.cast(lines, tf.int32)
        first = tf.argmax(lines, axis=1, output_type=tf.int32)
        last = tf.shape(lines)[1] - tf.argmax(tf.reverse(lines, [1]), axis=1, output_type=tf.int32)
        return first, last

    (y1, y2), (x1, x2) = extent(rows), extent(cols)
    return tf.cast(tf.stack([y1, x1, y2, x2], axis=1), tf.float32)


def mini_masks(masks: tf.Tensor, boxes: tf.Tensor, shape: tuple[int, int]) -> tf.Tensor:
    """Crop each [n, H, W] mask to its box and resize to `shape` (pixel-centre exact), uint8."""
    size = tf.shape(masks)[1:3]
    frame = tf.stack([0.0, 0.0, tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)])
    normalised = pixel_centre_boxes(boxes, frame, size, shape)
    crops = tf.image.crop_and_resize(
        tf.cast(masks, tf.float32)[..., None],
        normalised,
        tf.range(tf.shape(masks)[0]),
        shape,
        method="bilinear",
    )
    return tf.cast(crops[..., 0] >= 0.5, tf.uint8)


def check_classes(dataset: CocoDataset, config: Config) -> None:
    """The dataset's categories must fit the model's class and keypoint counts (names only warn).

    A dataset without keypoints fits any model (its keypoint targets are zeros), and a model
    without a keypoint head (`model.num_keypoints` 0) fits any dataset.
    """
    if dataset.num_classes != config.model.num_classes:
        names = "[" + ", ".join(dataset.class_names) + "]"
        raise DatasetError(
            f"{dataset.annotation_file} has {len(dataset.class_names)} categories "
            f"{list(dataset.class_names)} but model.num_classes={config.model.num_classes}; "
            f"use --set model.num_classes={dataset.num_classes} model.class_names={names}"
        )
    if tuple(dataset.class_names) != tuple(config.model.class_names):
        log.warning(
            "dataset class names %s differ from model.class_names %s; ids are matched by order",
            list(dataset.class_names),
            list(config.model.class_names),
        )
    have, want = len(dataset.keypoint_names), config.model.num_keypoints
    if have and want and have != want:
        raise DatasetError(
            f"{dataset.annotation_file} has {have} keypoints per instance but "
            f"model.num_keypoints={want}; use --set model.num_keypoints={have} "
            "(or 0 to train without keypoints)"
        )


def _slices(dataset: CocoDataset, num_keypoints: int) -> dict[str, tf.Tensor]:
    """Whole-dataset tensors with one row per image (ragged where images differ).

    Keypoints are the records' when their count is `num_keypoints`, else (a dataset without
    keypoints, or a model without the head) unlabelled zeros of that count.
    """
    images = dataset.images
    per_image = [len(r.class_ids) for r in images]
    runs = [c for r in images for c in r.counts]
    flat_runs = np.concatenate(runs) if runs else np.zeros(0, np.int32)
    counts = tf.RaggedTensor.from_nested_row_lengths(
        flat_runs.astype(np.int32),
        [np.array(per_image, np.int64), np.array([len(c) for c in runs], np.int64)],
    )

    def ragged(values: list[np.ndarray], dtype: tf.DType) -> tf.RaggedTensor:
        flat = np.concatenate(values) if values else np.zeros(0)
        return tf.RaggedTensor.from_row_lengths(tf.constant(flat, dtype), per_image)

    return {
        "path": tf.constant([str(r.path) for r in images]),
        "height": tf.constant([r.height for r in images], tf.int32),
        "width": tf.constant([r.width for r in images], tf.int32),
        "image_id": tf.constant([r.image_id for r in images], tf.int64),
        "class_ids": ragged([r.class_ids for r in images], tf.int32),
        "crowd": ragged([r.crowd for r in images], tf.bool),
        "counts": counts,
        "keypoints": ragged(
            [
                r.keypoints
                if r.keypoints.shape[1] == num_keypoints
                else np.zeros((len(r.class_ids), num_keypoints, 3), np.float32)
                for r in images
            ],
            tf.float32,
        ),
    }


def _example_loader(config: Config, flip_map: np.ndarray, training: bool, shard_index: int):
    """The map function turning one image row into one fixed-shape example."""
    data = config.data
    size = data.image_size
    augment = training and data.augment
    flip_map = tf.constant(flip_map, tf.int32)

    def load(index: tf.Tensor, row: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        # 0 flip, 1 scale jitter, 2 crop, 3-4 brightness and contrast, 5.. appearance. A split's
        # first seeds stay the same when `num` grows, so new uses go at the end.
        seeds = tf.random.experimental.stateless_split(
            tf.stack([tf.cast(data.seed * 1009 + shard_index, tf.int64), index]),
            num=5 + NUM_SEEDS,
        )
        height, width = row["height"], row["width"]
        image = tf.io.decode_image(
            tf.io.read_file(row["path"]), channels=3, expand_animations=False
        )
        tf.debugging.assert_equal(
            tf.shape(image)[:2],
            tf.stack([height, width]),
            message="image size differs from its COCO width/height",
            summarize=2,
        )
        masks = decode_masks(row["counts"], height, width)
        class_ids, crowd = row["class_ids"], row["crowd"]

        flip = tf.constant(False)
        if augment:
            flip = tf.random.stateless_uniform([], seeds[0]) < data.flip_prob
            image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
            masks = tf.cond(flip, lambda: tf.reverse(masks, [2]), lambda: masks)
            class_ids = tf.where(flip, tf.gather(flip_map, class_ids), class_ids)

        scale = resize_scale(height, width, size, data.min_dim)
        if augment:
            low, high = data.scale_jitter
            scale *= tf.random.stateless_uniform([], seeds[1], low, high)
        new_size = resized_shape(height, width, scale)
        image = tf.image.resize(tf.cast(image, tf.float32), new_size)
        masks = tf.image.resize(tf.cast(masks, tf.float32)[..., None], new_size)[..., 0] >= 0.5
        image, masks, window, offset = _crop_to_square(image, masks, new_size, size, seeds[2])
        keypoints = _keypoints_in_square(
            row["keypoints"], flip, tf.stack([height, width]), new_size, offset, window[2:]
        )
        if augment:
            image = _photometric(image, data.brightness_delta, data.contrast_range, seeds[3:5])
            image = random_appearance(image, data.appearance, seeds[5:])
        image = tf.image.pad_to_bounding_box(image, 0, 0, size, size)
        masks = tf.pad(masks, [[0, 0], [0, size - window[2]], [0, size - window[3]]])
        example = _ground_truth(masks, class_ids, crowd, keypoints, config)
        example.update(
            image=tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8),
            window=window,
            scale=tf.cast(new_size, tf.float32) / tf.cast(tf.stack([height, width]), tf.float32),
            original_size=tf.stack([height, width]),
            image_id=row["image_id"],
        )
        return example

    return load


def _crop_to_square(
    image: tf.Tensor, masks: tf.Tensor, new_size: tf.Tensor, size: int, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Cut a random size x size window from an image that scale jitter made larger than that.

    Returns the image, the masks, the window in the square and the cut's [y, x] offset.
    """
    crop = tf.minimum(new_size, size)
    slack = new_size - crop
    offset = tf.cast(
        tf.floor(tf.random.stateless_uniform([2], seed) * tf.cast(slack + 1, tf.float32)), tf.int32
    )
    offset = tf.minimum(offset, slack)
    image = tf.slice(image, tf.concat([offset, [0]], 0), tf.concat([crop, [3]], 0))
    masks = tf.slice(masks, tf.concat([[0], offset], 0), tf.concat([[-1], crop], 0))
    return image, masks, tf.concat([[0, 0], crop], 0), offset


def _keypoints_in_square(
    keypoints: tf.Tensor,
    flip: tf.Tensor,
    original_size: tf.Tensor,
    new_size: tf.Tensor,
    offset: tf.Tensor,
    crop: tf.Tensor,
) -> tf.Tensor:
    """Move [n, K, 3] keypoints from original pixels into the square as box corners move.

    Flip, resize and crop act on x, y as on the masks, so a keypoint keeps its place on the hand;
    one the crop leaves outside [0, crop] (or unlabelled) becomes (0, 0, 0).
    """
    original = _x_then_y(original_size)  # width, height, like x, y
    xy = keypoints[..., :2]
    xy = tf.where(flip, tf.stack([original[0] - xy[..., 0], xy[..., 1]], axis=-1), xy)
    xy = xy * (_x_then_y(new_size) / original) - _x_then_y(offset)
    inside = tf.reduce_all((xy >= 0.0) & (xy <= _x_then_y(crop)), axis=-1)
    keep = inside & (keypoints[..., 2] > 0)
    return tf.where(keep[..., None], tf.concat([xy, keypoints[..., 2:]], axis=-1), 0.0)


def _x_then_y(height_width: tf.Tensor) -> tf.Tensor:
    """[height, width] as float32 [width, height], the order of keypoints' (x, y). A gather, not
    a reversing slice: Grappler's remapper logs an error for negative-stride slices."""
    return tf.gather(tf.cast(height_width, tf.float32), [1, 0])


def _photometric(
    image: tf.Tensor, delta: float, contrast: tuple[float, float], seeds: tf.Tensor
) -> tf.Tensor:
    """Random brightness shift and contrast stretch around the image mean, kept in 0..255.

    `mean + shift` is bracketed: Grappler reassociates an unbracketed sum or not depending on the
    rest of the map function, so adding the keypoints moved a few pixels by one grey level.
    """
    shift = tf.random.stateless_uniform([], seeds[0], -delta, delta) if delta > 0 else 0.0
    factor = tf.random.stateless_uniform([], seeds[1], contrast[0], contrast[1])
    mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
    return tf.clip_by_value((image - mean) * factor + (mean + shift), 0.0, 255.0)


def _ground_truth(
    masks: tf.Tensor, class_ids: tf.Tensor, crowd: tf.Tensor, keypoints: tf.Tensor, config: Config
) -> dict[str, tf.Tensor]:
    """Boxes from masks, non-crowd first, cut and padded to `data.max_gt_instances` slots;
    class ids, crowd flags and keypoints stay in their boxes' slots."""
    data = config.data
    limit = data.max_gt_instances
    present = tf.reduce_any(masks, axis=[1, 2])
    masks = tf.boolean_mask(masks, present)
    class_ids = tf.boolean_mask(class_ids, present)
    crowd = tf.boolean_mask(crowd, present)
    keypoints = tf.boolean_mask(keypoints, present)
    order = tf.argsort(tf.cast(crowd, tf.int32), stable=True)[:limit]
    masks, class_ids, crowd, keypoints = (
        tf.gather(t, order) for t in (masks, class_ids, crowd, keypoints)
    )
    boxes = boxes_from_masks(masks)
    if data.use_mini_mask:
        masks = mini_masks(masks, boxes, data.mini_mask_shape)
    masks = tf.cast(masks, tf.uint8)
    count = tf.shape(class_ids)[0]
    pad = limit - count
    mask_shape = data.mini_mask_shape if data.use_mini_mask else (data.image_size,) * 2
    masks = tf.pad(masks, [[0, pad], [0, 0], [0, 0]])
    masks.set_shape([limit, *mask_shape])
    return {
        "gt_boxes": tf.ensure_shape(tf.pad(boxes, [[0, pad], [0, 0]]), [limit, 4]),
        "gt_class_ids": tf.ensure_shape(tf.pad(class_ids, [[0, pad]]), [limit]),
        "gt_crowd": tf.ensure_shape(tf.pad(crowd, [[0, pad]]), [limit]),
        "gt_masks": masks,
        "gt_keypoints": tf.ensure_shape(
            tf.pad(keypoints, [[0, pad], [0, 0], [0, 0]]), [limit, config.model.num_keypoints, 3]
        ),
        "num_gt": count,
    }
