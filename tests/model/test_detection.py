import numpy as np
import pytest
import tensorflow as tf

from handray.model.boxes import box_iou
from handray.model.detection import refine_detections

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
