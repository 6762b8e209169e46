"""COCO evaluation of detections with pycocotools: the numbers users compare models by.

Statistics pycocotools leaves undefined (-1: no ground truth in that area range or class) are
reported as None, so JSON files hold no sentinel values that could be averaged by mistake.

Beside the per-class numbers come two that separate "found the hand" from "named its side": a
class-agnostic AP (every hand one class, cross-class duplicates merged first) and the handedness
accuracy of the hands that were found. When the model and the dataset both have the hand's 21
keypoints, COCO keypoint AP (OKS with COCO-WholeBody's hand sigmas) comes too, with the
hand-pose numbers RHD results are compared by (PCK@0.2, AUC over 0-30 px, end-point error) on
the hands that were found.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from handray.core.atomic import atomic_write
from handray.core.detections import Detections
from handray.core.errors import DatasetError, HandrayError
from handray.core.hand_keypoints import KEYPOINT_NAMES, OKS_SIGMAS
from handray.core.images import read_batches
from handray.core.masks import encode_mask
from handray.core.visualize import draw_detection, save_montage, save_png
from handray.data.coco import CocoDataset, ImageRecord
from handray.evaluation.hand_matching import hand_pose, handedness, merge_across_classes

if TYPE_CHECKING:
    from handray.inference.predictor import Predictor

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
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
KINDS = ("bbox", "segm")
METRICS_FILE = "metrics.json"
MONTAGE_FILE = "overlays.png"
AGNOSTIC_CATEGORY = {"id": 1, "name": "hand"}

Stats = dict[str, float | None]


def coco_results(
    image_id: int, detections: Detections, category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """COCO result entries (box [x, y, w, h], RLE mask and, when the detections have K > 0
    keypoints, their [x, y, 1] * K) of one image's detections.

    `category_ids[k - 1]` is the COCO category of class id k.
    """
    results = []
    for roi, class_id, score, mask, points in zip(
        detections.boxes,
        detections.class_ids,
        detections.scores,
        detections.masks,
        _keypoints_of(detections),
        strict=True,
    ):
        y1, x1, y2, x2 = (float(v) for v in roi)
        entry = {
            "image_id": int(image_id),
            "category_id": int(category_ids[int(class_id) - 1]),
            "score": float(score),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "segmentation": encode_mask(mask)["segmentation"],
        }
        if len(points):
            entry["keypoints"] = [v for x, y, _ in points.tolist() for v in (x, y, 1)]
        results.append(entry)
    return results


def coco_evaluate(
    ground_truth: COCO, results: list[dict[str, Any]], kind: str, image_ids: Sequence[int]
) -> Stats:
    """pycocotools' summary statistics (AP, AP50, ...) for `kind` "bbox", "segm" or
    "keypoints" (hand keypoints, scored by OKS with `OKS_SIGMAS`)."""
    return _summary(_cocoeval(ground_truth, results, kind, image_ids))


def agnostic_stats(
    ground_truth: COCO, results: list[dict[str, Any]], image_ids: Sequence[int]
) -> dict[str, Stats]:
    """Box and mask stats with every hand one class: how well hands are found, whatever side
    they are given. Pass `results` through `merge_across_classes` first."""
    single = _agnostic_ground_truth(ground_truth)
    entries = [{**r, "category_id": AGNOSTIC_CATEGORY["id"]} for r in results]
    return {kind: coco_evaluate(single, entries, kind, image_ids) for kind in KINDS}


def load_ground_truth(path: str | os.PathLike, num_keypoints: int = 0) -> COCO:
    """A COCO instances file as pycocotools reads it, quietly.

    `area` and `iscrowd` are optional in the files handray loads but required by COCOeval, so
    missing ones are filled in: the mask's pixel area, and not crowd. With `num_keypoints` (the
    dataset's keypoint count) so are the fields COCOeval's keypoint run reads: `keypoints` (that
    many, unlabelled) and `num_keypoints` (how many are labelled).
    """
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    for annotation in coco.dataset["annotations"]:
        annotation.setdefault("iscrowd", 0)
        if "area" not in annotation:
            annotation["area"] = float(mask_utils.area(coco.annToRLE(annotation)))
        if num_keypoints:
            keypoints = annotation.setdefault("keypoints", [0] * 3 * num_keypoints)
            annotation.setdefault("num_keypoints", sum(v > 0 for v in keypoints[2::3]))
    return coco


def evaluate_model(
    predictor: Predictor,
    dataset: CocoDataset,
    *,
    limit: int | None = None,
    overlays: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """COCO box and mask metrics of a predictor's model on the first `limit` images of
    `dataset` (all by default), overall and per class. Detections are those scoring at least
    the predictor's `thresholds.evaluation_min_score`: AP needs the low-score tail that a
    picture would drown in. With `out`, the first `overlays` images are drawn there with the
    detections a person is shown (`thresholds.min_score` and up).

    Model classes are matched to dataset categories by name. Returns
    ``{"bbox": stats, "segm": stats, "per_class": {name: {...}}, "agnostic": {"bbox": stats,
    "segm": stats}, "handedness": {"accuracy": x, "matched": m, "hands": n}, "images": n,
    "images_per_s": x}``; ``metrics["segm"]["AP"]`` is the mask AP. When the detections and
    the dataset both have the hand's 21 keypoints, ``metrics["keypoints"]`` holds the COCO
    keypoint stats (AP, AP50, AP75, APm, APl, AR, ...) and `keypoint_errors`' hand-pose numbers
    on the matched hands. The speed counts decoding (overlapped with inference) and a new
    model's first-call graph building.
    """
    category_ids = _category_ids(predictor.class_names, dataset)
    records = _records(dataset, limit)
    run = _detect(predictor, records, category_ids, overlays, out, progress)
    ground_truth = load_ground_truth(dataset.annotation_file, len(dataset.keypoint_names))
    image_ids = [r.image_id for r in records]
    results = run.results
    evaluations = {kind: _cocoeval(ground_truth, results, kind, image_ids) for kind in KINDS}
    metrics: dict[str, Any] = {kind: _summary(e) for kind, e in evaluations.items()}
    metrics["per_class"] = _per_class(evaluations, dataset, records)
    merged = merge_across_classes(results)
    metrics["agnostic"] = agnostic_stats(ground_truth, merged, image_ids)
    metrics["handedness"] = handedness(ground_truth, merged, image_ids)
    hand = len(KEYPOINT_NAMES)
    if len(dataset.keypoint_names) == hand and run.keypoint_counts == {hand}:
        metrics["keypoints"] = {
            **coco_evaluate(ground_truth, results, "keypoints", image_ids),
            **hand_pose(ground_truth, merged, image_ids),
        }
    metrics["images"] = len(records)
    metrics["images_per_s"] = len(records) / run.seconds
    return metrics


def evaluate_agnostic(
    predictor: Predictor,
    dataset: CocoDataset,
    *,
    overlays: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Class-agnostic box and mask stats of `dataset`: are hands found, whatever the model's
    classes and the dataset's categories are called (a held-out set need not share them).

    Returns ``{"bbox": stats, "segm": stats, "images": n, "hands": h, "images_per_s": x}``;
    overlays as `evaluate_model` draws them.
    """
    records = _records(dataset, None)
    model_classes = list(range(1, len(predictor.class_names) + 1))
    run = _detect(predictor, records, model_classes, overlays, out, progress)
    ground_truth = load_ground_truth(dataset.annotation_file)
    image_ids = [r.image_id for r in records]
    stats = agnostic_stats(ground_truth, merge_across_classes(run.results), image_ids)
    hands = sum(int((~np.asarray(r.crowd, bool)).sum()) for r in records)
    return {
        **stats,
        "images": len(records),
        "hands": hands,
        "images_per_s": len(records) / run.seconds,
    }


@dataclass
class _Run:
    """What one pass of a predictor over a dataset's images gave."""

    results: list[dict[str, Any]]  # COCO result entries
    keypoint_counts: set[int]  # K of every detection, 0 where a detection has no keypoints
    seconds: float


def _records(dataset: CocoDataset, limit: int | None) -> list[ImageRecord]:
    if limit is not None and limit < 1:
        raise HandrayError(f"limit must be at least 1, got {limit}")
    records = dataset.images[:limit]
    if not records:
        raise DatasetError(f"{dataset.annotation_file} lists no images to evaluate")
    return records


def _detect(
    predictor: Predictor,
    records: Sequence[ImageRecord],
    category_ids: Sequence[int],
    overlays: int,
    out: str | os.PathLike | None,
    progress: bool,
) -> _Run:
    """Detections down to the evaluation threshold as COCO results (class id k as
    `category_ids[k - 1]`); the first `overlays` images drawn into `out` with what a person is
    shown."""
    thresholds, batch_size = predictor.thresholds, predictor.batch_size
    results: list[dict[str, Any]] = []
    keypoint_counts = set()
    pictures = []
    start = time.perf_counter()
    batches = read_batches([r.path for r in records], batch_size)
    with tqdm(total=len(records), desc="evaluate", unit="img", disable=not progress) as bar:
        for offset, images in zip(range(0, len(records), batch_size), batches, strict=True):
            batch = records[offset : offset + len(images)]
            for record, image in zip(batch, images, strict=True):
                _check_size(record, image)
            found = predictor.predict_batch(images, thresholds.evaluation_min_score)
            for record, image, detections in zip(batch, images, found, strict=True):
                results += coco_results(record.image_id, detections, category_ids)
                keypoint_counts.add(_keypoints_of(detections).shape[1])
                if out is not None and len(pictures) < overlays:
                    shown = detections.at_least(thresholds.min_score)
                    pictures.append(draw_detection(image, shown))
            bar.update(len(images))
    seconds = time.perf_counter() - start
    if pictures:
        write_overlays(pictures, out)
    return _Run(results, keypoint_counts, seconds)


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
    """The metrics as a text table: overall box, mask (and keypoint) rows, one row per class,
    then the class-agnostic AP, the handedness accuracy and the hand-pose numbers."""
    shown = STAT_NAMES[:6]
    lines = [f"{'':<16}" + "".join(f"{name:>8}" for name in shown)]
    for kind in (*KINDS, "keypoints"):
        if metrics.get(kind) is not None:  # keypoint AP has no APs: its cell shows "-"
            row = "".join(_cell(metrics[kind].get(name)) for name in shown)
            lines.append(f"{kind:<16}{row}")
    columns = ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")
    lines.append("")
    lines.append(f"{'class':<16}{'hands':>8}" + "".join(f"{c:>11}" for c in columns))
    for name, row in metrics["per_class"].items():
        cells = "".join(_cell(row[c], 11) for c in columns)
        lines.append(f"{name:<16}{row['instances']:>8}{cells}")
    lines += _hand_lines(metrics)
    lines += _held_out_lines(metrics)
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
        *_pose_lines(metrics),
    ]


def _held_out_lines(metrics: dict[str, Any]) -> list[str]:
    """The held-out style's class-agnostic AP, when it was measured."""
    if "held_out" not in metrics:
        return []
    held = metrics["held_out"]
    box, mask = held["bbox"], held["segm"]
    return [
        f"{'held-out style':<16}box AP50 {_cell(box['AP50'], 0)}  mask AP50 "
        f"{_cell(mask['AP50'], 0)} (AP {_cell(box['AP'], 0)} / {_cell(mask['AP'], 0)}), "
        f"any side, {held['hands']} hands in {held['images']} images",
    ]


def _pose_lines(metrics: dict[str, Any]) -> list[str]:
    """The hand-pose line, when keypoints were evaluated."""
    if metrics.get("keypoints") is None:
        return []
    pose = metrics["keypoints"]
    epe = "-" if pose["epe_px"] is None else f"{pose['epe_px']:.2f}"
    return [
        f"{'hand pose':<16}PCK@0.2 {_cell(pose['pck@0.2'], 0)}  AUC 0-30px "
        f"{_cell(pose['auc_0_30px'], 0)}  EPE {epe} px ({pose['visible']} visible keypoints "
        f"of {pose['hands']} matched hands)"
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
    # truth, so mask (and keypoint) APs/APm/APl compare like with like.
    drop = {"bbox"} if kind in ("segm", "keypoints") else set()
    entries = [{k: v for k, v in r.items() if k not in drop} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        detections = ground_truth.loadRes(entries) if entries else _no_results(ground_truth)
        evaluation = COCOeval(ground_truth, detections, kind)
        evaluation.params.imgIds = list(image_ids)
        if kind == "keypoints":
            evaluation.params.kpt_oks_sigmas = np.array(OKS_SIGMAS)
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


def _keypoints_of(detections: Detections) -> np.ndarray:
    """Detections' keypoints [N, K, 3]; K = 0 when they have none (a model without the head)."""
    points = detections.keypoints
    return np.zeros((len(detections), 0, 3), np.float32) if points is None else points


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
    keypoints = evaluation.params.iouType == "keypoints"
    names = KEYPOINT_STAT_NAMES if keypoints else STAT_NAMES
    return {name: _defined(v) for name, v in zip(names, evaluation.stats, strict=True)}


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
