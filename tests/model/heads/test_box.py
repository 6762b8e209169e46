"""The box head (`handray.model.heads.box`): its losses and box targets, and the detections it
refines, against NumPy references."""

import numpy as np
import pytest
import tensorflow as tf

from handray.config import load_config
from handray.model.boxes import box_iou, encode_boxes
from handray.model.heads.box import BoxHead, box_loss, class_loss, refine_detections
from handray.model.norm import Norm
from handray.model.targets import RoiTargets
from tests.model.test_losses import huber, softmax_ce
from tests.model.test_targets import HAND, gt, roi_targets

STD = tf.constant([0.1, 0.1, 0.2, 0.2])


def numpy_nms(boxes, scores, threshold):
    order = list(np.argsort(-scores))
    keep = []
    while order:
        best = order.pop(0)
        keep.append(best)
        iou = box_iou(boxes[best][None], boxes[order]).numpy()[0] if order else []
        order = [o for o, v in zip(order, iou, strict=True) if v <= threshold]
    return keep


@pytest.mark.parametrize("per_class", [True, False])
def test_refine_detections_matches_a_per_class_numpy_reference(per_class):
    rng = np.random.default_rng(0)
    rois_n, classes = 40, 3
    centres = rng.uniform(0.2, 0.8, (rois_n, 2))
    sizes = rng.uniform(0.05, 0.2, (rois_n, 2))
    rois = np.concatenate([centres - sizes / 2, centres + sizes / 2], 1).astype(np.float32)
    probs = rng.dirichlet(np.ones(classes), rois_n).astype(np.float32)
    deltas = rng.normal(0, 0.5, (rois_n, classes, 4)).astype(np.float32)
    valid = np.ones(rois_n, bool)
    valid[-5:] = False
    window = np.array([0.1, 0.0, 0.9, 1.0], np.float32)
    out = refine_detections(
        rois[None],
        valid[None],
        probs[None],
        deltas[None],
        window[None],
        std_dev=STD,
        min_confidence=0.4,
        nms_threshold=0.3,
        max_instances=10,
        per_class=per_class,
    )
    # Reference: every (ROI, hand class) pair (per_class) or each ROI's best non-background
    # class; decode with numpy, clip, filter, NMS per class, best 10 by score.
    if per_class:
        roi_index = np.repeat(np.arange(rois_n), classes - 1)
        class_ids = np.tile(np.arange(1, classes), rois_n)
    else:
        roi_index = np.arange(rois_n)
        class_ids = probs[:, 1:].argmax(1) + 1
    scores = probs[roi_index, class_ids]
    d = deltas[roi_index, class_ids] * STD.numpy()
    rois, valid = rois[roi_index], valid[roi_index]
    h, w = rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]
    cy, cx = rois[:, 0] + h / 2 + d[:, 0] * h, rois[:, 1] + w / 2 + d[:, 1] * w
    h, w = h * np.exp(d[:, 2]), w * np.exp(d[:, 3])
    boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 1)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(window[0], window[2])
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(window[1], window[3])
    keep = np.flatnonzero(valid & (scores >= 0.4))
    survivors = []
    for c in np.unique(class_ids[keep]):
        members = keep[class_ids[keep] == c]
        survivors += [members[i] for i in numpy_nms(boxes[members], scores[members], 0.3)]
    survivors = sorted(survivors, key=lambda i: -scores[i])[:10]
    count = int(out["valid"].numpy().sum())
    assert count == len(survivors) > 0
    np.testing.assert_allclose(out["scores"][0, :count], scores[survivors], rtol=1e-6)
    np.testing.assert_array_equal(out["class_ids"][0, :count], class_ids[survivors])
    np.testing.assert_allclose(out["boxes"][0, :count], boxes[survivors], atol=1e-5)
    assert not out["boxes"][0, count:].numpy().any()


@pytest.fixture(scope="module", params=[False, True], ids=["with-sides", "hand-only"])
def head(request) -> BoxHead:
    """The box head deciding the side (the old files' presets), and in hand-or-background
    mode (with a side head, `tiny`'s), where every hand regresses with class 1's deltas."""
    return BoxHead(load_config("tiny", {"model.side_head": request.param}).model, Norm())


def numpy_class_loss(head: BoxHead, class_ids, valid, logits) -> float:
    """Softmax cross-entropy of the valid ROIs; in hand-only mode over (background, any hand)."""
    logits, class_ids = np.asarray(logits, np.float64), np.asarray(class_ids)
    if head.hand_only:
        hands = np.log(np.exp(logits[..., 1:]).sum(-1))
        logits, class_ids = np.stack([logits[..., 0], hands], -1), np.minimum(class_ids, 1)
    losses = [
        softmax_ce(row, target)
        for row, target, used in zip(logits[0], class_ids[0], np.asarray(valid)[0], strict=True)
        if used
    ]
    return float(np.mean(losses))


def test_class_and_box_losses_pick_each_rois_own_class():
    class_ids = tf.constant([[2, 0, 1]])
    valid = tf.constant([[True, True, False]])
    logits = tf.constant([[[0.0, 1.0, 3.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    expected = np.mean([softmax_ce([0, 1, 3], 2), softmax_ce([2, 0, 0], 0)])
    np.testing.assert_allclose(class_loss(class_ids, valid, logits), expected, rtol=1e-6)

    positive = tf.constant([[True, False, False]])
    deltas = np.zeros((1, 3, 3, 4), np.float32)
    deltas[0, 0, 2] = [1.0, 0.0, 0.0, 3.0]  # class 2's prediction; other classes are ignored
    deltas[0, 0, 1] = [50.0, 50.0, 50.0, 50.0]
    target = tf.constant([[[0.0, 0.0, 0.0, 0.0]] * 3])
    expected = np.mean(huber(np.array([1.0, 0.0, 0.0, 3.0])))
    np.testing.assert_allclose(box_loss(class_ids, positive, target, deltas), expected, rtol=1e-6)


def test_box_loss_is_zero_not_nan_without_positives():
    zeros = tf.zeros([1, 2, 3, 4])
    none = tf.constant([[False, False]])
    assert float(box_loss(tf.constant([[0, 0]]), none, zeros[:, :, 0], zeros)) == 0.0


def test_box_targets_are_each_positive_rois_deltas_to_its_hand(head):
    """Predicting exactly the deltas from each positive ROI to its hand costs nothing,
    predicting none costs their smooth-L1; negatives' deltas add nothing."""
    rois = tf.constant([[HAND, [0.12, 0.10, 0.30, 0.34], [0.60, 0.00, 0.70, 0.10]]])
    matched = tf.constant([[HAND, HAND, [0.0] * 4]])
    valid = tf.constant([[True, True, True]])
    positive = tf.constant([[True, True, False]])
    class_ids = tf.constant([[2, 1, 0]])
    logits = tf.constant([[[0.0, 1.0, -1.0], [2.0, 0.5, 0.0], [0.0, 0.0, 3.0]]])
    targets = encode_boxes(rois, matched, head.std_dev).numpy()[0]
    exact = np.zeros((1, 3, 3, 4), np.float32)
    channel = 1 if head.hand_only else 2  # the first ROI's hand is class 2
    exact[0, 0, channel], exact[0, 1, 1] = targets[0], targets[1]
    exact[0, 2] = 50.0
    args = (rois, valid, positive, class_ids, matched, logits)
    classes, loss = head.losses(*args, tf.constant(exact))
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    expected = numpy_class_loss(head, class_ids, valid, logits)
    np.testing.assert_allclose(classes, expected, rtol=1e-6)
    _, loss = head.losses(*args, tf.zeros([1, 3, 3, 4]))
    np.testing.assert_allclose(loss, np.mean(huber(targets[:2])), rtol=1e-5)


def sampled_box_loss(
    head: BoxHead, targets: RoiTargets, gt_boxes: tf.Tensor, deltas: np.ndarray
) -> float:
    """The box loss of `detection_targets`' ROIs, as the model computes it."""
    _, loss = head.losses(
        targets.rois,
        targets.valid,
        targets.positive,
        targets.class_ids,
        tf.gather(gt_boxes, targets.gt_index, batch_dims=1),
        tf.zeros(deltas.shape[:3]),
        tf.constant(deltas),
    )
    return float(loss)


def test_a_ground_truth_box_sampled_as_a_roi_has_zero_box_targets(head):
    """The ground-truth box is its own positive with nothing to regress, so the loss is the
    prediction's alone; an image without hands has no box loss whatever is predicted."""
    deltas = np.random.default_rng(0).normal(0, 1, (1, 8, 3, 4)).astype(np.float32)
    boxes, classes, crowd = gt([HAND], [2], [False])
    targets = roi_targets([[0.0] * 4], boxes, classes, crowd)
    expected = np.mean(huber(deltas[0, 0, 1 if head.hand_only else 2]))
    assert sampled_box_loss(head, targets, boxes, deltas) == pytest.approx(expected, rel=1e-5)
    boxes, classes, crowd = gt([], [], [])
    targets = roi_targets([[0.1, 0.1, 0.2, 0.2]], boxes, classes, crowd)
    assert sampled_box_loss(head, targets, boxes, deltas) == 0.0
