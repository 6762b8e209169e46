"""The mask head (`handray.model.heads.mask`): its targets, its loss and the pasting of its masks
onto each image, against NumPy references."""

import numpy as np
import tensorflow as tf

from handray.model.heads import RoiSample
from handray.model.heads.mask import mask_loss, mask_targets, paste_masks
from handray.model.targets import RoiTargets
from tests.model.test_targets import HAND, gt, roi_targets


def head_sample(targets: RoiTargets) -> RoiSample:
    """The ROIs the model's ROI heads train on: the first `mask_slots` sampled ones."""
    slots = targets.mask_slots
    return RoiSample(
        rois=targets.rois[:, :slots],
        gt_index=targets.gt_index[:, :slots],
        class_ids=targets.class_ids[:, :slots],
        positive=targets.positive[:, :slots],
    )


def sampled_mask_targets(targets: RoiTargets, boxes: tf.Tensor, masks=None) -> np.ndarray:
    """Mask targets [1, P, 4, 4] of sampled ROIs from mini-masks [1, 4, 6, 6] (all ones by
    default)."""
    if masks is None:
        masks = tf.ones([1, 4, 6, 6], tf.uint8)
    return mask_targets(head_sample(targets), boxes, masks, (4, 4), mini_mask=True).numpy()


def test_mask_loss_picks_each_rois_own_class():
    class_ids = tf.constant([[2, 0, 1]])
    positive = tf.constant([[True, False, False]])
    masks = np.full((1, 3, 2, 2, 3), 0.5, np.float32)
    masks[0, 0, :, :, 2] = [[0.9, 0.2], [0.6, 0.1]]
    target_masks = tf.constant([[[[1.0, 0.0], [1.0, 1.0]]] * 3])
    p, t = masks[0, 0, :, :, 2], target_masks.numpy()[0, 0]
    expected = np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
    np.testing.assert_allclose(
        mask_loss(class_ids, positive, target_masks, masks), expected, rtol=1e-4
    )


def test_mask_loss_is_zero_not_nan_without_positives():
    none = tf.constant([[False, False]])
    masks = tf.zeros([1, 2, 2, 2, 3])
    assert float(mask_loss(tf.constant([[0, 0]]), none, masks[..., 0], masks)) == 0.0


def test_without_ground_truth_the_mask_targets_are_empty():
    boxes, classes, crowd = gt([], [], [])
    proposals = [[0.1 * i, 0.1, 0.1 * i + 0.1, 0.2] for i in range(3)] + [[0.0] * 4] * 3
    targets = roi_targets(proposals, boxes, classes, crowd)
    assert not sampled_mask_targets(targets, boxes).any()


def test_a_ground_truth_box_gets_its_own_mask_as_target():
    mini = np.zeros((1, 4, 6, 6), np.uint8)
    mini[0, 0, :, :3] = 1  # the hand's left half
    boxes, classes, crowd = gt([HAND], [2], [False])
    targets = roi_targets([[0.0] * 4], boxes, classes, crowd)
    masks = sampled_mask_targets(targets, boxes, tf.constant(mini))
    np.testing.assert_array_equal(masks[0, 0], [[1, 1, 0, 0]] * 4)
    assert not masks[0, 1].any()  # an empty positive slot


def test_mask_targets_cover_only_the_first_mask_rois():
    boxes, classes, crowd = gt([HAND], [1], [False])
    targets = roi_targets([HAND] * 6, boxes, classes, crowd, rois=16, ratio=0.5, mask_rois=2)
    assert targets.positive_slots == 8 and targets.mask_slots == 2
    masks = sampled_mask_targets(targets, boxes)
    assert masks.shape[1] == 2
    assert masks.all()  # both hold the all-ones hand mask


def test_paste_masks_matches_resizing_each_mask_to_its_box():
    rng = np.random.default_rng(1)
    masks = rng.uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)
    boxes = np.array([[[2, 3, 18, 11], [0, 0, 30, 40], [10, 20, 14, 36]]], np.float32)
    pasted = paste_masks(masks, boxes, tf.constant(30), tf.constant(40), 0.5).numpy()
    assert pasted.shape == (1, 3, 30, 40)
    for index, (y1, x1, y2, x2) in enumerate(boxes[0].astype(int)):
        # Integer boxes: the box-sized bilinear resize (pixel centres) is the reference.
        resized = tf.image.resize(masks[0, index][..., None], (y2 - y1, x2 - x1)).numpy()[..., 0]
        expected = np.zeros((30, 40), bool)
        expected[y1:y2, x1:x2] = resized >= 0.5
        np.testing.assert_array_equal(pasted[0, index], expected)
