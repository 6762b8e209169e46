"""What per-class AP cannot tell apart: detections matched to hands whatever side they name.

COCO matches a detection to a hand of its own class only, so a hand found with the wrong side
counts as both a miss and a false positive. Here detections of any class are matched to the
hands (after cross-class duplicates are merged), and what the matched pairs say is measured on
its own: whether the side was right (handedness) and how close the keypoints are (hand pose).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from handray.core.hand_keypoints import KEYPOINT_NAMES

MERGE_IOU = 0.7  # box IoU at which two detections of different classes are one hand
MATCH_IOU = 0.5  # box IoU at which a detection finds a ground-truth hand (COCO's AP50)
PCK_FRACTION = 0.2  # of the ground-truth box's longer side
AUC_MAX_PX = 30.0  # the PCK curve's pixel thresholds: AUC_STEPS of them, evenly up to this
AUC_STEPS = 20


def merge_across_classes(
    results: Sequence[dict[str, Any]], iou: float = MERGE_IOU
) -> list[dict[str, Any]]:
    """`results` without cross-class duplicates: per image, by falling score, a detection whose
    box IoU with a kept detection of another class is >= `iou` is dropped.

    A model that answers every region once per class reports one hand as, say, left 0.9 and
    right 0.1; class-agnostic numbers must count that hand once, not once plus a false positive.
    Same-class pairs were already suppressed by the model's own NMS and are left alone.
    """
    merged = []
    for entries in _by_image(results).values():
        classes = np.array([e["category_id"] for e in entries])
        overlaps = _box_iou(entries, entries)
        keep = np.zeros(len(entries), bool)
        for i in range(len(entries)):
            clash = keep & (overlaps[i] >= iou) & (classes != classes[i])
            keep[i] = not clash.any()
        merged += [e for e, k in zip(entries, keep, strict=True) if k]
    return merged


def handedness(
    ground_truth: COCO, results: list[dict[str, Any]], image_ids: Sequence[int]
) -> dict[str, Any]:
    """How often a found hand is given the right side: ``{"accuracy", "matched", "hands"}``.

    Detections of any class are matched to the non-crowd hands (`matched_hands`); accuracy is
    the share of matched hands whose detection has the hand's class, None when none matched or
    the categories do not name a left and a right side. Pass `results` through
    `merge_across_classes` first, so a hand's low-score twin cannot claim a neighbour.
    """
    pairs, hands = matched_hands(ground_truth, results, image_ids)
    names = [c["name"].lower() for c in ground_truth.dataset["categories"]]
    sided = any("left" in n for n in names) and any("right" in n for n in names)
    correct = sum(h["category_id"] == d["category_id"] for h, d in pairs)
    return {
        "accuracy": correct / len(pairs) if pairs and sided else None,
        "matched": len(pairs),
        "hands": hands,
    }


def matched_hands(
    ground_truth: COCO, results: list[dict[str, Any]], image_ids: Sequence[int]
) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], int]:
    """(ground-truth hand, detection) pairs of `image_ids` and the number of non-crowd hands.

    Detections of any class are matched to the non-crowd hands of their image as COCO does: by
    falling score, each to the unmatched hand it overlaps most, box IoU >= 0.5.
    """
    annotations = ground_truth.loadAnns(ground_truth.getAnnIds(imgIds=list(image_ids)))
    hands = _by_image([a for a in annotations if not a.get("iscrowd", 0)])
    found = _by_image(results)
    pairs = [pair for i, h in hands.items() for pair in _match(h, found.get(i, []))]
    return pairs, sum(map(len, hands.values()))


def hand_pose(
    ground_truth: COCO, results: list[dict[str, Any]], image_ids: Sequence[int]
) -> dict[str, Any]:
    """`keypoint_errors` of the detections' keypoints on the hands they were matched to (as in
    `matched_hands`). Pass `results` through `merge_across_classes` first."""
    pairs, _ = matched_hands(ground_truth, results, image_ids)
    count = len(KEYPOINT_NAMES)
    truth = np.array([h["keypoints"] for h, _ in pairs], np.float64).reshape(-1, count, 3)
    found = np.array([d["keypoints"] for _, d in pairs], np.float64).reshape(-1, count, 3)
    sides = np.array([max(h["bbox"][2:]) for h, _ in pairs], np.float64)
    return keypoint_errors(found[..., :2], truth, sides)


def keypoint_errors(
    predicted: np.ndarray, truth: np.ndarray, box_sides: np.ndarray
) -> dict[str, Any]:
    """RHD's hand-pose numbers over the visible (v > 0) keypoints of N hands: predicted [N, K, 2]
    (x, y) against truth [N, K, 3] (x, y, v), in pixels; box_sides [N] are each hand's
    ground-truth box's longer side. Returns ``{"pck@0.2", "auc_0_30px", "epe_px", "hands",
    "visible"}``, the first three None without a visible keypoint:

    - pck@0.2: the share of visible keypoints at most 0.2 x their hand's box side from the truth;
    - auc_0_30px: the area under the PCK curve (the share at most t px from the truth) for t
      from 0 to 30 px, normalised to 1: the curve's mean at t = 1.5, 3, ..., 30 (30 i / 20, i =
      1..20),
      so a hand within 1.5 px scores 1.0 (MMPose samples t = 0, ..., 28.5 with a strict <: its
      best is 0.95, and with no distance exactly on a threshold it is this less PCK@30px / 20);
    - epe_px: the mean distance (end-point error) in pixels.

    Every visible keypoint weighs the same (pooled over keypoints, not averaged per joint).
    """
    visible = truth[..., 2] > 0
    distance = np.linalg.norm(predicted - truth[..., :2], axis=-1)[visible]
    scale = np.broadcast_to(np.asarray(box_sides)[:, None], visible.shape)[visible]
    thresholds = AUC_MAX_PX * np.arange(1, AUC_STEPS + 1) / AUC_STEPS
    found = distance.size > 0
    return {
        "pck@0.2": float(np.mean(distance <= PCK_FRACTION * scale)) if found else None,
        "auc_0_30px": float(np.mean(distance[:, None] <= thresholds)) if found else None,
        "epe_px": float(distance.mean()) if found else None,
        "hands": len(truth),
        "visible": int(distance.size),
    }


def _box_iou(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> np.ndarray:
    """[len(a), len(b)] box IoU of COCO entries (`bbox` [x, y, w, h]), none counted as crowd."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    boxes = [np.array([e["bbox"] for e in entries], np.float64) for entries in (a, b)]
    return np.asarray(mask_utils.iou(boxes[0], boxes[1], [0] * len(b)))


def _by_image(entries: Iterable[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """COCO entries grouped by `image_id`, each group by falling score (where scored)."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for entry in sorted(entries, key=lambda e: -e.get("score", 0.0)):
        groups.setdefault(entry["image_id"], []).append(entry)
    return groups


def _match(
    hands: Sequence[dict[str, Any]], found: Sequence[dict[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(hand, detection) pairs of one image as COCO matches them: detections by falling score,
    each to the unmatched hand it overlaps most."""
    overlaps = _box_iou(found, hands)
    free = np.ones(len(hands), bool)
    pairs = []
    for d, detection in enumerate(found):
        allowed = free & (overlaps[d] >= MATCH_IOU)
        if allowed.any():
            h = int(np.where(allowed, overlaps[d], -1.0).argmax())
            free[h] = False
            pairs.append((hands[h], detection))
    return pairs
