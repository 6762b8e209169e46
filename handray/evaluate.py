"""COCO evaluation of detections with pycocotools: the numbers users compare models by.

Statistics pycocotools leaves undefined (-1: no ground truth in that area range or class) are
reported as None, so JSON files hold no sentinel values that could be averaged by mistake.

Beside the per-class numbers come two that separate "found the hand" from "named its side": a
class-agnostic AP (every hand one class, cross-class duplicates merged first) and the handedness
accuracy of the hands that were found.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from handray.atomic import atomic_write
from handray.config import MASK_THRESHOLD
from handray.data.coco import CocoDataset, ImageRecord
from handray.data.masks import encode_mask
from handray.errors import DatasetError, HandrayError
from handray.images import read_batches
from handray.visualize import draw_detection, save_montage, save_png

if TYPE_CHECKING:
    from handray.model.maskrcnn import MaskRCNN

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
KINDS = ("bbox", "segm")
METRICS_FILE = "metrics.json"
MONTAGE_FILE = "overlays.png"
OVERLAY_MIN_SCORE = 0.5  # detections drawn on overlays (the serving default)
MERGE_IOU = 0.7  # box IoU at which two detections of different classes are one hand
MATCH_IOU = 0.5  # box IoU at which a detection finds a ground-truth hand (COCO's AP50)
AGNOSTIC_CATEGORY = {"id": 1, "name": "hand"}

Stats = dict[str, float | None]


def coco_results(
    image_id: int, detection: dict[str, np.ndarray], category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """COCO result entries (box [x, y, w, h] and RLE mask) of one image's `detect` output.

    `category_ids[k - 1]` is the COCO category of class id k.
    """
    results = []
    for roi, class_id, score, mask in zip(
        detection["rois"],
        detection["class_ids"],
        detection["scores"],
        detection["masks"],
        strict=True,
    ):
        y1, x1, y2, x2 = (float(v) for v in roi)
        results.append(
            {
                "image_id": int(image_id),
                "category_id": int(category_ids[int(class_id) - 1]),
                "score": float(score),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "segmentation": encode_mask(mask)["segmentation"],
            }
        )
    return results


def coco_evaluate(
    ground_truth: COCO, results: list[dict[str, Any]], kind: str, image_ids: Sequence[int]
) -> Stats:
    """pycocotools' summary statistics (AP, AP50, ...) for `kind` "bbox" or "segm"."""
    return _summary(_cocoeval(ground_truth, results, kind, image_ids))


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


def agnostic_stats(
    ground_truth: COCO, results: list[dict[str, Any]], image_ids: Sequence[int]
) -> dict[str, Stats]:
    """Box and mask stats with every hand one class: how well hands are found, whatever side
    they are given. Pass `results` through `merge_across_classes` first."""
    single = _agnostic_ground_truth(ground_truth)
    entries = [{**r, "category_id": AGNOSTIC_CATEGORY["id"]} for r in results]
    return {kind: coco_evaluate(single, entries, kind, image_ids) for kind in KINDS}


def handedness(
    ground_truth: COCO, results: list[dict[str, Any]], image_ids: Sequence[int]
) -> dict[str, Any]:
    """How often a found hand is given the right side: ``{"accuracy", "matched", "hands"}``.

    Detections of any class are matched to the non-crowd hands of their image as COCO does
    (by falling score, each to the unmatched hand it overlaps most, box IoU >= 0.5); accuracy
    is the share of matched hands whose detection has the hand's class, None when none matched
    or the categories do not name a left and a right side. Pass `results` through
    `merge_across_classes` first, so a hand's low-score twin cannot claim a neighbour.
    """
    annotations = ground_truth.loadAnns(ground_truth.getAnnIds(imgIds=list(image_ids)))
    hands = _by_image([a for a in annotations if not a.get("iscrowd", 0)])
    found = _by_image(results)
    pairs = [pair for i, h in hands.items() for pair in _match(h, found.get(i, []))]
    names = [c["name"].lower() for c in ground_truth.dataset["categories"]]
    sided = any("left" in n for n in names) and any("right" in n for n in names)
    correct = sum(h["category_id"] == d["category_id"] for h, d in pairs)
    return {
        "accuracy": correct / len(pairs) if pairs and sided else None,
        "matched": len(pairs),
        "hands": sum(map(len, hands.values())),
    }


def load_ground_truth(path: str | os.PathLike) -> COCO:
    """A COCO instances file as pycocotools reads it, quietly.

    `area` and `iscrowd` are optional in the files handray loads but required by COCOeval, so
    missing ones are filled in: the mask's pixel area, and not crowd.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    for annotation in coco.dataset["annotations"]:
        annotation.setdefault("iscrowd", 0)
        if "area" not in annotation:
            annotation["area"] = float(mask_utils.area(coco.annToRLE(annotation)))
    return coco


def evaluate_model(
    model: MaskRCNN,
    dataset: CocoDataset,
    *,
    limit: int | None = None,
    batch_size: int = 4,
    overlays: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    overlay_min_score: float = OVERLAY_MIN_SCORE,
    mask_threshold: float = MASK_THRESHOLD,
) -> dict[str, Any]:
    """COCO box and mask metrics of `model` on the first `limit` images of `dataset` (all by
    default), overall and per class; with `out`, the first `overlays` images are drawn there,
    with the detections scoring at least `overlay_min_score` (AP counts every detection: it
    needs the low-score tail that a picture would drown in). Detections are those `model.detect`
    keeps by default, with masks cut at `mask_threshold`.

    Model classes are matched to dataset categories by name. Returns
    ``{"bbox": stats, "segm": stats, "per_class": {name: {...}}, "agnostic": {"bbox": stats,
    "segm": stats}, "handedness": {"accuracy": x, "matched": m, "hands": n}, "images": n,
    "images_per_s": x}``; ``metrics["segm"]["AP"]`` is the mask AP. The speed counts decoding
    (overlapped with inference) and a new model's first-call graph building.
    """
    class_names = model.class_names
    category_ids = _category_ids(class_names, dataset)
    if limit is not None and limit < 1:
        raise HandrayError(f"limit must be at least 1, got {limit}")
    records = dataset.images[:limit]
    if not records:
        raise DatasetError(f"{dataset.annotation_file} lists no images to evaluate")
    results: list[dict[str, Any]] = []
    pictures = []
    start = time.perf_counter()
    batches = read_batches([r.path for r in records], batch_size)
    with tqdm(total=len(records), desc="evaluate", unit="img", disable=not progress) as bar:
        for offset, images in zip(range(0, len(records), batch_size), batches, strict=True):
            batch = records[offset : offset + len(images)]
            for record, image in zip(batch, images, strict=True):
                _check_size(record, image)
            detections = detect_batch(model, images, batch_size, mask_threshold=mask_threshold)
            for record, image, detection in zip(batch, images, detections, strict=True):
                results += coco_results(record.image_id, detection, category_ids)
                if out is not None and len(pictures) < overlays:
                    shown = {
                        k: v[detection["scores"] >= overlay_min_score] for k, v in detection.items()
                    }
                    pictures.append(draw_detection(image, shown, class_names))
            bar.update(len(images))
    seconds = time.perf_counter() - start
    if pictures:
        write_overlays(pictures, out)

    ground_truth = load_ground_truth(dataset.annotation_file)
    image_ids = [r.image_id for r in records]
    evaluations = {kind: _cocoeval(ground_truth, results, kind, image_ids) for kind in KINDS}
    metrics: dict[str, Any] = {kind: _summary(e) for kind, e in evaluations.items()}
    metrics["per_class"] = _per_class(evaluations, dataset, records)
    merged = merge_across_classes(results)
    metrics["agnostic"] = agnostic_stats(ground_truth, merged, image_ids)
    metrics["handedness"] = handedness(ground_truth, merged, image_ids)
    metrics["images"] = len(records)
    metrics["images_per_s"] = len(records) / seconds
    return metrics


def detect_batch(
    model: MaskRCNN,
    images: list[np.ndarray],
    batch_size: int,
    *,
    min_score: float | None = None,
    mask_threshold: float = MASK_THRESHOLD,
) -> list[dict[str, np.ndarray]]:
    """`model.detect` on a batch, a short last batch padded with copies of its last image:
    every call then has the same shape and reuses the compiled graph instead of tracing anew."""
    padding = [images[-1]] * (batch_size - len(images))
    detections = model.detect(images + padding, min_score=min_score, mask_threshold=mask_threshold)
    return detections[: len(images)]


def write_metrics(metrics: dict[str, Any], out: str | os.PathLike) -> Path:
    """Write `metrics.json` into folder `out` (created if needed); returns its path."""
    path = Path(out) / METRICS_FILE
    with atomic_write(path) as handle:
        json.dump(metrics, handle, indent=2, allow_nan=False)
        handle.write("\n")
    return path


def write_overlays(pictures: Sequence, out: str | os.PathLike) -> list[Path]:
    """`overlay_0001.png`, ... and a montage of them all (`overlays.png`) in folder `out`."""
    out = Path(out)
    paths = [save_png(p, out / f"overlay_{i:04d}.png") for i, p in enumerate(pictures, 1)]
    save_montage(pictures, out / MONTAGE_FILE)
    return paths


def format_metrics(metrics: dict[str, Any]) -> str:
    """The metrics as a text table: overall box and mask rows, one row per class, then the
    class-agnostic AP and the handedness accuracy."""
    shown = STAT_NAMES[:6]
    lines = [f"{'':<16}" + "".join(f"{name:>8}" for name in shown)]
    for kind in KINDS:
        lines.append(f"{kind:<16}" + "".join(_cell(metrics[kind][name]) for name in shown))
    columns = ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")
    lines.append("")
    lines.append(f"{'class':<16}{'hands':>8}" + "".join(f"{c:>11}" for c in columns))
    for name, row in metrics["per_class"].items():
        cells = "".join(_cell(row[c], 11) for c in columns)
        lines.append(f"{name:<16}{row['instances']:>8}{cells}")
    lines += _hand_lines(metrics)
    lines.append("")
    lines.append(f"{metrics['images']} images, {metrics['images_per_s']:.1f} images/s")
    return "\n".join(lines)


def _hand_lines(metrics: dict[str, Any]) -> list[str]:
    """The class-agnostic and handedness lines (none for metrics written before they existed)."""
    if "agnostic" not in metrics:
        return []
    box, mask = metrics["agnostic"]["bbox"], metrics["agnostic"]["segm"]
    sides = metrics["handedness"]
    return [
        "",
        f"{'class-agnostic':<16}box AP50 {_cell(box['AP50'], 0)}  mask AP50 "
        f"{_cell(mask['AP50'], 0)} (AP {_cell(box['AP'], 0)} / {_cell(mask['AP'], 0)})",
        f"{'handedness':<16}{_cell(sides['accuracy'], 0)} of {sides['matched']} matched hands "
        f"(of {sides['hands']})",
    ]


def _cell(value: float | None, width: int = 8) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def _category_ids(class_names: Sequence[str], dataset: CocoDataset) -> list[int]:
    """COCO category id of each model class id 1..K, matched by class name."""
    if sorted(class_names) != sorted(dataset.class_names):
        raise HandrayError(
            f"the model's classes {list(class_names)} differ from the classes of "
            f"{dataset.annotation_file} {list(dataset.class_names)}; evaluate with a model "
            "trained on these classes (model.class_names)"
        )
    return [dataset.category_ids[dataset.class_names.index(name)] for name in class_names]


def _check_size(record: ImageRecord, image: np.ndarray) -> None:
    if image.shape[:2] != (record.height, record.width):
        raise DatasetError(
            f"{record.path} is {image.shape[1]}x{image.shape[0]} pixels but its annotation "
            f"(image {record.image_id}) says {record.width}x{record.height}"
        )


def _cocoeval(
    ground_truth: COCO, results: list[dict[str, Any]], kind: str, image_ids: Sequence[int]
) -> COCOeval:
    """A finished COCOeval run (evaluate, accumulate, summarize) on exactly `image_ids`."""
    # Without a box, pycocotools takes a result's area from its mask as it does for the ground
    # truth, so mask APs/APm/APl compare like with like.
    drop = {"bbox"} if kind == "segm" else set()
    entries = [{k: v for k, v in r.items() if k not in drop} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        detections = ground_truth.loadRes(entries) if entries else _no_results(ground_truth)
        evaluation = COCOeval(ground_truth, detections, kind)
        evaluation.params.imgIds = list(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def _agnostic_ground_truth(ground_truth: COCO) -> COCO:
    """`ground_truth` with every annotation in one category; crowd regions stay crowd."""
    single = COCO()
    single.dataset = {
        "images": list(ground_truth.dataset["images"]),
        "categories": [dict(AGNOSTIC_CATEGORY)],
        "annotations": [
            {**a, "category_id": AGNOSTIC_CATEGORY["id"]}
            for a in ground_truth.dataset["annotations"]
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        single.createIndex()
    return single


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


def _no_results(ground_truth: COCO) -> COCO:
    """An empty result set (`loadRes` cannot take one), so no detections score zeros."""
    empty = COCO()
    empty.dataset = {
        "images": list(ground_truth.dataset["images"]),
        "categories": list(ground_truth.dataset["categories"]),
        "annotations": [],
    }
    empty.createIndex()
    return empty


def _summary(evaluation: COCOeval) -> Stats:
    return {name: _defined(v) for name, v in zip(STAT_NAMES, evaluation.stats, strict=True)}


def _defined(value: float) -> float | None:
    return float(value) if value > -1 else None


def _per_class(
    evaluations: dict[str, COCOeval], dataset: CocoDataset, records: Sequence[ImageRecord]
) -> dict[str, dict[str, Any]]:
    """AP and AP50 per class from the same runs as the overall numbers (all areas, 100
    detections), so the mean over classes with ground truth is the overall AP."""
    instances = Counter(
        int(c) for r in records for c, crowd in zip(r.class_ids, r.crowd, strict=True) if not crowd
    )
    table = {}
    for class_id, (name, category_id) in enumerate(
        zip(dataset.class_names, dataset.category_ids, strict=True), start=1
    ):
        row: dict[str, Any] = {}
        for kind, evaluation in evaluations.items():
            row[f"{kind}_AP"], row[f"{kind}_AP50"] = _class_ap(evaluation, category_id)
        row["instances"] = instances[class_id]
        table[name] = row
    return table


def _class_ap(evaluation: COCOeval, category_id: int) -> tuple[float | None, float | None]:
    params = evaluation.params
    precision = evaluation.eval["precision"][
        :,
        :,
        params.catIds.index(category_id),
        params.areaRngLbl.index("all"),
        params.maxDets.index(100),
    ]  # [IoU thresholds, recall thresholds]; -1 where the class has no ground truth
    at_50 = precision[np.flatnonzero(np.isclose(params.iouThrs, 0.5))]
    return _mean_defined(precision), _mean_defined(at_50)


def _mean_defined(precision: np.ndarray) -> float | None:
    defined = precision[precision > -1]
    return float(defined.mean()) if defined.size else None
