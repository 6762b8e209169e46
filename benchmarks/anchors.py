"""How well a config's anchors fit a dataset's hands: the RPN's supervision before training.

For every non-crowd hand of a COCO split, resized as the pipeline resizes it, it counts the
anchors that the RPN's matching rule makes positive (IoU >= the positive IoU, or the hand's best
anchor) and the hand's best anchor IoU. One anchor per hand means the RPN barely learns to
propose it; the hand presets' defaults were chosen from this table.

    .venv/bin/python benchmarks/anchors.py --dataset runs/demo/data [--preset tiny]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from handray.config import load_config, parse_overrides
from handray.data.coco import annotation_file
from handray.model.anchors import generate_anchors

SQRT2 = 2**0.5
# (label, overrides) compared for every preset: the old rule and the hand rule.
SETTINGS = (
    (
        "1 size/level, IoU 0.7 (matterport)",
        {"model.rpn_anchor_octaves": [1.0], "model.rpn_positive_iou": 0.7},
    ),
    ("1 size/level, IoU 0.5", {"model.rpn_anchor_octaves": [1.0], "model.rpn_positive_iou": 0.5}),
    (
        "2 sizes/level, IoU 0.7",
        {"model.rpn_anchor_octaves": [1.0, SQRT2], "model.rpn_positive_iou": 0.7},
    ),
    (
        "2 sizes/level, IoU 0.5",
        {"model.rpn_anchor_octaves": [1.0, SQRT2], "model.rpn_positive_iou": 0.5},
    ),
    (
        "3 sizes/level, IoU 0.5",
        {
            "model.rpn_anchor_octaves": [1.0, 2 ** (1 / 3), 2 ** (2 / 3)],
            "model.rpn_positive_iou": 0.5,
        },
    ),
)


def hand_boxes(dataset: Path, split: str, image_size: int, limit: int) -> list[np.ndarray]:
    """Per image, its non-crowd hand boxes [n, 4] (y1, x1, y2, x2) in the padded square's
    pixels (images without hands left out)."""
    coco = json.loads(annotation_file(dataset, split).read_text())
    images = {image["id"]: image for image in coco["images"][:limit]}
    boxes: dict[int, list] = {}
    for annotation in coco["annotations"]:
        image = images.get(annotation["image_id"])
        if image is None or annotation.get("iscrowd", 0):
            continue
        scale = image_size / max(image["height"], image["width"])
        x, y, w, h = (v * scale for v in annotation["bbox"])
        boxes.setdefault(image["id"], []).append([y, x, y + h, x + w])
    return [np.array(b, np.float64) for b in boxes.values()]


def iou(anchors: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[A, N] IoU of anchors with boxes."""
    top = np.maximum(anchors[:, None, :2], boxes[None, :, :2])
    bottom = np.minimum(anchors[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(bottom - top, 0, None), axis=-1)
    area_a = np.prod(anchors[:, 2:] - anchors[:, :2], axis=-1)
    area_b = np.prod(boxes[:, 2:] - boxes[:, :2], axis=-1)
    return inter / (area_a[:, None] + area_b[None] - inter)


def matches(boxes: np.ndarray, anchors: np.ndarray, positive_iou: float):
    """One image's hands: (best anchor IoU [n], positive anchors [n]) under the RPN's rule
    (`handray.model.targets.rpn_targets`)."""
    overlaps = iou(anchors, boxes)
    best = overlaps.max(axis=0)
    owner = overlaps.argmax(axis=1)
    positive = (overlaps.max(axis=1) >= positive_iou) | (
        (overlaps >= best[None]) & (overlaps > 0)
    ).any(axis=1)
    return best, np.bincount(owner[positive], minlength=len(boxes))


def statistics(images: list[np.ndarray], anchors: np.ndarray, positive_iou: float) -> dict:
    pairs = [matches(boxes, anchors, positive_iou) for boxes in images]
    best = np.concatenate([p[0] for p in pairs])
    per_hand = np.concatenate([p[1] for p in pairs])
    return {
        "median best IoU": float(np.median(best)),
        "hands >= 0.7": float((best >= 0.7).mean()),
        "hands >= 0.5": float((best >= 0.5).mean()),
        "positives/hand": float(per_hand.mean()),
        "hands with 1": float((per_hand <= 1).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--split", default="train")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--images", type=int, default=500, help="images to read (first N)")
    parser.add_argument("--set", nargs="*", default=[], help="extra KEY=VALUE overrides")
    args = parser.parse_args()
    base = parse_overrides(args.set)
    image_size = load_config(args.preset, base).data.image_size
    images = hand_boxes(args.dataset, args.split, image_size, args.images)
    boxes = np.concatenate(images)
    sides = np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1))
    print(
        f"{len(boxes)} hands from {args.dataset} ({args.split}) at {image_size} px: box side "
        f"median {np.median(sides):.0f} px (10-90 %: {np.percentile(sides, 10):.0f}-"
        f"{np.percentile(sides, 90):.0f})\n"
    )
    header = None
    for label, overrides in SETTINGS:
        model = load_config(args.preset, {**base, **overrides}).model
        anchors = (
            generate_anchors(
                image_size,
                model.rpn_anchor_scales,
                model.rpn_anchor_ratios,
                model.backbone_strides,
                model.rpn_anchor_stride,
                model.rpn_anchor_octaves,
            ).astype(np.float64)
            * image_size
        )
        row = statistics(images, anchors, model.rpn_positive_iou)
        if header is None:
            header = f"| {args.preset} anchors | " + " | ".join(row) + " |"
            print(header + "\n|" + "---|" * (len(row) + 1))
        print(f"| {label} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |")


if __name__ == "__main__":
    main()
