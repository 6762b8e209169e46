"""COCO evaluation: the numbers match pycocotools run by hand, per-class rows add up to the
overall AP, class-agnostic AP and handedness separate finding a hand from naming its side,
keypoint AP matches pycocotools with the hand sigmas and PCK/AUC/EPE a numpy reference, and
`handray evaluate` writes a well-formed metrics.json and overlays."""

import contextlib
import dataclasses
import io
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from handray import cli
from handray.core.detections import Detections
from handray.core.errors import HandrayError
from handray.core.hand_keypoints import KEYPOINT_NAMES, OKS_SIGMAS, SKELETON
from handray.core.images import read_image
from handray.data.coco import load_dataset
from handray.evaluation.hand_matching import handedness, merge_across_classes
from handray.evaluation.metrics import (
    KEYPOINT_STAT_NAMES,
    STAT_NAMES,
    coco_results,
    evaluate_model,
    format_metrics,
    load_ground_truth,
    write_metrics,
)
from handray.inference.thresholds import Thresholds
from tests.conftest import CATEGORIES, rectangle_mask, write_dataset

REPO = Path(__file__).resolve().parents[2]
SIZE = 64
K = len(KEYPOINT_NAMES)
EVERY_SCORE = Thresholds(min_score=0.5, evaluation_min_score=0.0, mask=0.5)  # AP sees every one


class FakePredictor:
    """Stands in for `Predictor`: `predict_batch` answers each image with detections chosen
    per image, named by its classes, at or above the score it is asked for."""

    def __init__(self, class_names, answers, thresholds=EVERY_SCORE, batch_size=4):
        self.class_names = tuple(class_names)
        self.answers = answers  # image bytes -> Detections
        self.thresholds, self.batch_size = thresholds, batch_size
        self.seen: set[bytes] = set()

    def predict_batch(self, images, min_score=None):
        self.seen.update(image.tobytes() for image in images)
        found = [self.answers.get(i.tobytes(), _detection([], *i.shape[:2])) for i in images]
        return [
            dataclasses.replace(d, class_names=self.class_names).at_least(min_score) for d in found
        ]


def _detection(instances, height=SIZE, width=SIZE, keypoints=0) -> Detections:
    """Detections from (class_id, score, mask, box) tuples, box = (y1, x1, y2, x2); with
    `keypoints` K > 0, each tuple ends with the hand's keypoints [K, 3] (x, y, score)."""
    extras = {}
    if keypoints:
        points = [i[4] for i in instances]
        extras["keypoints"] = np.array(points, np.float32).reshape(-1, keypoints, 3)
    return Detections(
        boxes=np.array([i[3] for i in instances], np.float32).reshape(-1, 4),
        class_ids=np.array([i[0] for i in instances], np.int32),
        scores=np.array([i[1] for i in instances], np.float32),
        masks=np.array([i[2] for i in instances], bool).reshape(-1, height, width),
        class_names=("left_hand", "right_hand"),
        extras=extras,
    )


def _box(mask):
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)


def _random_dataset(
    root: Path, images: int = 5, seed: int = 0, categories=None, crowd: bool = False
) -> Path:
    """1-3 random rectangular hands per image; with `crowd`, one crowd region per image too."""
    rng = np.random.default_rng(seed)
    specs = []
    for _ in range(images):
        instances = []
        for _ in range(rng.integers(1, 4)):
            y1, x1 = rng.integers(0, SIZE - 20, 2)
            h, w = rng.integers(6, 20, 2)
            mask = rectangle_mask(SIZE, SIZE, y1, x1, y1 + h, x1 + w)
            instances.append({"mask": mask, "category_id": int(rng.integers(1, 3))})
        if crowd:
            y1, x1 = rng.integers(0, SIZE - 20, 2)
            mask = rectangle_mask(SIZE, SIZE, y1, x1, y1 + 15, x1 + 15)
            instances.append({"mask": mask, "category_id": int(rng.integers(1, 3)), "iscrowd": 1})
        specs.append({"height": SIZE, "width": SIZE, "instances": instances})
    write_dataset(root, specs, split="val", categories=categories)
    return root


def _answers(dataset, make_detection, keypoints=0):
    """Per image (keyed by its pixels), make_detection(record, ground-truth instances)."""
    ground_truth = load_ground_truth(dataset.annotation_file)
    answers = {}
    for record in dataset.images:
        annotations = ground_truth.loadAnns(ground_truth.getAnnIds(imgIds=[record.image_id]))
        pixels = read_image(record.path).tobytes()
        instances = make_detection(record, annotations, ground_truth)
        answers[pixels] = _detection(instances, record.height, record.width, keypoints)
    return answers


def _perfect(class_of_category):
    def make(record, annotations, ground_truth):
        return [
            (class_of_category[a["category_id"]], 1.0, ground_truth.annToMask(a), _box_of(a))
            for a in annotations
            if not a["iscrowd"]
        ]

    return make


def _box_of(annotation):
    x, y, w, h = annotation["bbox"]
    return (y, x, y + h, x + w)


def test_perfect_predictions_score_one_with_classes_matched_by_name(small_dataset):
    dataset = load_dataset(small_dataset, "train")
    # The model lists the classes in the other order: class 1 is right_hand (category 2).
    answers = _answers(dataset, _perfect({2: 1, 1: 2}))
    metrics = evaluate_model(
        FakePredictor(["right_hand", "left_hand"], answers), dataset, progress=False
    )
    for kind in ("bbox", "segm"):
        assert metrics[kind]["AP"] == pytest.approx(1.0)
        assert metrics[kind]["AP50"] == pytest.approx(1.0)
    perfect = {"bbox_AP": 1.0, "bbox_AP50": 1.0, "segm_AP": 1.0, "segm_AP50": 1.0}
    assert metrics["per_class"]["left_hand"] == pytest.approx({**perfect, "instances": 1})
    assert metrics["per_class"]["right_hand"] == pytest.approx({**perfect, "instances": 2})
    assert metrics["images"] == 3 and metrics["images_per_s"] > 0


def _noisy(seed):
    """Ground truth shifted, some hands missed, and confident false positives."""
    rng = np.random.default_rng(seed)

    def make(record, annotations, ground_truth):
        instances = []
        for a in annotations:
            if rng.random() < 0.2:
                continue
            mask = np.roll(ground_truth.annToMask(a), rng.integers(-3, 4, 2), axis=(0, 1))
            instances.append((a["category_id"], float(rng.random()), mask, _box(mask)))
        for _ in range(rng.integers(0, 3)):
            mask = rectangle_mask(SIZE, SIZE, *rng.integers(0, 30, 2), *rng.integers(34, 64, 2))
            instances.append((int(rng.integers(1, 3)), float(rng.random()), mask, _box(mask)))
        return instances

    return make


def _pycocotools_stats(annotation_file, answers, dataset, kind):
    """The same detections through COCO.loadRes + COCOeval by hand; for masks and keypoints
    without the box, so a result's area is its mask's as for the ground truth; keypoints as
    COCO results hold them ([x, y, 1] * K), scored with the hand sigmas."""
    results = []
    for record in dataset.images:
        d = answers[read_image(record.path).tobytes()]
        points = [None] * len(d) if d.keypoints is None else d.keypoints
        for roi, class_id, score, mask, xy in zip(
            d.boxes, d.class_ids, d.scores, d.masks, points, strict=True
        ):
            y1, x1, y2, x2 = (float(v) for v in roi)
            entry = {"image_id": record.image_id, "category_id": int(class_id), "score": score}
            if kind == "bbox":
                entry["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            else:
                entry["segmentation"] = mask_utils.encode(np.asfortranarray(mask, np.uint8))
            if kind == "keypoints":
                xy = np.asarray(xy, np.float64)[:, :2]
                entry["keypoints"] = np.column_stack([xy, np.ones(len(xy))]).ravel().tolist()
            results.append(entry)
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(annotation_file))
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), kind)
        if kind == "keypoints":
            evaluation.params.kpt_oks_sigmas = np.array(OKS_SIGMAS)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def test_metrics_agree_with_pycocotools_run_directly(tmp_path):
    dataset = load_dataset(_random_dataset(tmp_path, images=6), "val")
    answers = _answers(dataset, _noisy(seed=3))
    metrics = evaluate_model(FakePredictor(dataset.class_names, answers), dataset, progress=False)
    for kind in ("bbox", "segm"):
        expected = _pycocotools_stats(dataset.annotation_file, answers, dataset, kind)
        for name, value in zip(STAT_NAMES, expected, strict=True):
            assert metrics[kind][name] == (pytest.approx(value) if value > -1 else None), name
        assert 0.0 < metrics[kind]["AP"] < 1.0


def test_per_class_rows_add_up_to_the_overall_ap(tmp_path):
    categories = [
        {"id": 1, "name": "left_hand"},
        {"id": 2, "name": "right_hand"},
        {"id": 5, "name": "gloved_hand"},  # never annotated in these images
    ]
    dataset = load_dataset(_random_dataset(tmp_path, images=6, categories=categories), "val")
    perfect, noisy = _perfect({1: 1, 2: 2}), _noisy(seed=1)

    def left_perfect_right_noisy(record, annotations, ground_truth):
        left = [a for a in annotations if a["category_id"] == 1]
        right = [a for a in annotations if a["category_id"] == 2]
        wrong = [i for i in noisy(record, right, ground_truth) if i[0] == 2]
        return perfect(record, left, ground_truth) + wrong

    answers = _answers(dataset, left_perfect_right_noisy)
    names = ["left_hand", "right_hand", "gloved_hand"]
    metrics = evaluate_model(FakePredictor(names, answers), dataset, progress=False)
    rows = metrics["per_class"]
    assert rows["gloved_hand"]["segm_AP"] is None and rows["gloved_hand"]["instances"] == 0
    for kind in ("bbox", "segm"):
        assert rows["left_hand"][f"{kind}_AP"] == pytest.approx(1.0)
        assert rows["right_hand"][f"{kind}_AP"] < 0.9
        for stat in ("AP", "AP50"):
            defined = [
                r[f"{kind}_{stat}"] for r in rows.values() if r[f"{kind}_{stat}"] is not None
            ]
            assert np.mean(defined) == pytest.approx(metrics[kind][stat], abs=1e-12)
    json.loads(write_metrics(metrics, tmp_path / "out").read_text())
    table = format_metrics(metrics)
    assert "gloved_hand" in table and "segm" in table


def _one_category(annotation_file, out: Path) -> Path:
    """The annotation file with every hand in one category "hand" (crowd regions stay crowd):
    the ground truth class-agnostic AP is defined on."""
    coco = json.loads(Path(annotation_file).read_text())
    coco["categories"] = [{"id": 1, "name": "hand"}]
    for annotation in coco["annotations"]:
        annotation["category_id"] = 1
    out.write_text(json.dumps(coco))
    return out


def _as_one_class(answers):
    return {
        k: dataclasses.replace(d, class_ids=np.ones_like(d.class_ids)) for k, d in answers.items()
    }


def _with_twins(answers):
    """Each detection again with the other side's class at half the score, as a model that
    answers every region once per class reports it."""
    twinned = {}
    for key, d in answers.items():
        twinned[key] = dataclasses.replace(
            d,
            boxes=np.concatenate([d.boxes, d.boxes]),
            class_ids=np.concatenate([d.class_ids, 3 - d.class_ids]),
            scores=np.concatenate([d.scores, d.scores / 2]),
            masks=np.concatenate([d.masks, d.masks]),
        )
    return twinned


def _max_cross_class_iou(answers) -> float:
    """The largest box IoU between two detections of different classes in one image."""
    largest = 0.0
    for d in answers.values():
        if len(d) < 2:
            continue
        y1, x1, y2, x2 = np.asarray(d.boxes, np.float64).T
        boxes = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
        iou = np.asarray(mask_utils.iou(boxes, boxes, [0] * len(boxes)))
        other = d.class_ids[:, None] != d.class_ids[None, :]
        largest = max(largest, float(iou[other].max(initial=0.0)))
    return largest


def test_class_agnostic_ap_agrees_with_pycocotools_on_one_category(tmp_path):
    dataset = load_dataset(_random_dataset(tmp_path / "data", images=6, crowd=True), "val")
    answers = _answers(dataset, _noisy(seed=3))
    # No two of these overlap across classes, so merging removes exactly the twins.
    assert _max_cross_class_iou(answers) < 0.7
    metrics = evaluate_model(
        FakePredictor(dataset.class_names, _with_twins(answers)), dataset, progress=False
    )
    one = _one_category(dataset.annotation_file, tmp_path / "one_category.json")
    for kind in ("bbox", "segm"):
        expected = _pycocotools_stats(one, _as_one_class(answers), dataset, kind)
        for name, value in zip(STAT_NAMES, expected, strict=True):
            wanted = pytest.approx(value) if value > -1 else None
            assert metrics["agnostic"][kind][name] == wanted, (kind, name)
        assert 0.0 < metrics["agnostic"][kind]["AP"] < 1.0
        unmerged = _pycocotools_stats(one, _as_one_class(_with_twins(answers)), dataset, kind)
        assert unmerged[0] != pytest.approx(expected[0])  # the twins would count unmerged


def test_wrong_side_twins_are_merged_into_one_hand(small_dataset):
    dataset = load_dataset(small_dataset, "train")
    perfect = _perfect({1: 1, 2: 2})
    scores = iter([0.9, 0.7, 0.5])  # each twin (0.1 less) ranks between two hands

    def right_side_and_twin(record, annotations, ground_truth):
        instances = []
        for class_id, _, mask, box in perfect(record, annotations, ground_truth):
            score = next(scores)
            instances += [(class_id, score, mask, box), (3 - class_id, score - 0.1, mask, box)]
        return instances

    answers = _answers(dataset, right_side_and_twin)
    metrics = evaluate_model(FakePredictor(dataset.class_names, answers), dataset, progress=False)
    for kind in ("bbox", "segm"):
        assert metrics["agnostic"][kind]["AP"] == pytest.approx(1.0)
        assert metrics["agnostic"][kind]["AP50"] == pytest.approx(1.0)
    # Three hands (two in the first image, one beside a crowd region in the second).
    assert metrics["handedness"] == {"accuracy": 1.0, "matched": 3, "hands": 3}


def test_swapped_sides_lower_per_class_ap_but_not_agnostic_ap(tmp_path):
    dataset = load_dataset(_random_dataset(tmp_path, images=6, seed=3), "val")
    perfect = _perfect({1: 1, 2: 2})
    hand = itertools.count()
    swapped = []

    def swap_every_third(record, annotations, ground_truth):
        instances = []
        for class_id, score, mask, box in perfect(record, annotations, ground_truth):
            swapped.append(next(hand) % 3 == 0)
            instances.append((3 - class_id if swapped[-1] else class_id, score, mask, box))
        return instances

    answers = _answers(dataset, swap_every_third)
    assert _max_cross_class_iou(answers) < 0.7  # no two hands overlap enough to be merged
    metrics = evaluate_model(FakePredictor(dataset.class_names, answers), dataset, progress=False)
    for kind in ("bbox", "segm"):
        per_class_ap = _pycocotools_stats(dataset.annotation_file, answers, dataset, kind)[0]
        assert metrics[kind]["AP"] == pytest.approx(per_class_ap)
        assert per_class_ap < 0.9
        assert metrics["agnostic"][kind]["AP"] == pytest.approx(1.0)
    hands = len(swapped)
    accuracy = (hands - sum(swapped)) / hands
    assert 0 < sum(swapped) < hands
    assert metrics["handedness"] == {"accuracy": accuracy, "matched": hands, "hands": hands}

    written = json.loads(write_metrics(metrics, tmp_path / "out").read_text())
    assert written["agnostic"] == metrics["agnostic"]
    assert written["handedness"] == metrics["handedness"]
    table = format_metrics(metrics)
    assert "class-agnostic  box AP50 1.000  mask AP50 1.000 (AP 1.000 / 1.000)" in table
    assert f"handedness      {accuracy:.3f} of {hands} matched hands (of {hands})" in table


def test_one_class_model_has_no_handedness(small_dataset):
    _one_category(small_dataset / "annotations" / "instances_train.json", small_dataset / "x")
    (small_dataset / "x").replace(small_dataset / "annotations" / "instances_train.json")
    dataset = load_dataset(small_dataset, "train")
    answers = _answers(dataset, _perfect({1: 1}))
    metrics = evaluate_model(FakePredictor(["hand"], answers), dataset, progress=False)
    assert metrics["handedness"] == {"accuracy": None, "matched": 3, "hands": 3}
    assert metrics["agnostic"]["segm"]["AP"] == pytest.approx(1.0)
    assert "handedness      - of 3 matched hands (of 3)" in format_metrics(metrics)


def _entry(image_id, category_id, score, bbox):
    return {"image_id": image_id, "category_id": category_id, "score": score, "bbox": bbox}


def test_handedness_matches_each_hand_once_by_falling_score(small_dataset):
    ground_truth = load_ground_truth(small_dataset / "annotations" / "instances_train.json")
    left, right = [10, 5, 30, 25], [60, 20, 35, 30]  # image 1's hands; image 2: a right hand
    results = [
        _entry(2, 1, 0.5, [2, 2, 3, 3]),  # on image 2's crowd region: ignored
        _entry(1, 2, 0.7, [64, 20, 35, 30]),  # right hand, IoU 0.8: right side
        _entry(1, 1, 0.8, left),  # left hand again, lower: the hand is taken
        _entry(1, 2, 0.9, left),  # left hand first: wrong side
    ]
    assert [a["bbox"] for a in ground_truth.loadAnns([1, 2])] == [left, right]
    # Two of three hands found (image 2's hand is missed), one with the right side.
    expected = {"accuracy": 0.5, "matched": 2, "hands": 3}
    assert handedness(ground_truth, results, [1, 2, 3]) == expected


@pytest.mark.parametrize(
    ("low", "kept"),
    [
        (_entry(1, 2, 0.3, [0, 0, 10, 9]), [0.9]),  # other side, IoU 0.9: one hand
        (_entry(1, 2, 0.3, [0, 0, 10, 7]), [0.9]),  # other side, IoU exactly 0.7
        (_entry(1, 2, 0.3, [0, 0, 10, 6]), [0.3, 0.9]),  # other side, IoU 0.6: two hands
        (_entry(1, 1, 0.3, [0, 0, 10, 9]), [0.3, 0.9]),  # same side: the model's NMS decided
        (_entry(1, 2, 0.3, [40, 40, 10, 10]), [0.3, 0.9]),  # other side, far apart
        (_entry(2, 2, 0.3, [0, 0, 10, 10]), [0.3, 0.9]),  # same place in another image
    ],
)
def test_merge_across_classes_drops_only_lower_other_side_twins(low, kept):
    high = _entry(1, 1, 0.9, [0, 0, 10, 10])
    merged = merge_across_classes([low, high])  # listed low first: order is by score
    assert sorted(r["score"] for r in merged) == kept


def test_limit_evaluates_only_the_first_images(tmp_path):
    dataset = load_dataset(_random_dataset(tmp_path, images=5), "val")
    perfect = _perfect({1: 1, 2: 2})
    first_two = {r.image_id for r in dataset.images[:2]}
    answers = _answers(dataset, lambda r, a, g: perfect(r, a, g) if r.image_id in first_two else [])
    predictor = FakePredictor(dataset.class_names, answers)
    assert evaluate_model(predictor, dataset, progress=False)["segm"]["AP"] < 1.0
    predictor.seen.clear()
    metrics = evaluate_model(predictor, dataset, limit=2, progress=False)
    assert metrics["images"] == 2
    assert metrics["segm"]["AP"] == pytest.approx(1.0)
    assert len(predictor.seen) == 2
    assert sum(row["instances"] for row in metrics["per_class"].values()) == sum(
        len(r.class_ids) for r in dataset.images[:2]
    )


def test_no_detections_score_zero(tmp_path):
    dataset = load_dataset(_random_dataset(tmp_path, images=3), "val")
    metrics = evaluate_model(FakePredictor(dataset.class_names, {}), dataset, progress=False)
    assert metrics["segm"]["AP"] == 0.0 and metrics["bbox"]["AP50"] == 0.0
    assert all(row["segm_AP"] == 0.0 for row in metrics["per_class"].values())


def test_detections_count_down_to_the_evaluation_min_score_not_the_shown_one(small_dataset):
    dataset = load_dataset(small_dataset, "train")
    answers = _answers(dataset, _perfect({1: 1, 2: 2}))
    answers = {k: dataclasses.replace(d, scores=d.scores * 0.4) for k, d in answers.items()}
    for evaluation_min_score, ap in ((0.3, 1.0), (0.5, 0.0)):
        thresholds = Thresholds(0.9, evaluation_min_score, mask=0.5)
        predictor = FakePredictor(dataset.class_names, answers, thresholds)
        metrics = evaluate_model(predictor, dataset, progress=False)
        assert metrics["segm"]["AP"] == pytest.approx(ap)


def test_ground_truth_without_area_or_iscrowd_is_completed(small_dataset):
    path = small_dataset / "annotations" / "instances_train.json"
    coco = json.loads(path.read_text())
    for annotation in coco["annotations"]:
        del annotation["area"]
        annotation.pop("iscrowd")
    path.write_text(json.dumps(coco))
    dataset = load_dataset(small_dataset, "train")
    answers = _answers(dataset, _perfect({1: 1, 2: 2}))
    metrics = evaluate_model(FakePredictor(dataset.class_names, answers), dataset, progress=False)
    assert metrics["segm"]["AP"] == pytest.approx(1.0)


def test_class_name_mismatch_names_both_lists(small_dataset):
    dataset = load_dataset(small_dataset, "train")
    with pytest.raises(HandrayError, match=r"\['hand'\].*\['left_hand', 'right_hand'\]"):
        evaluate_model(FakePredictor(["hand"], {}), dataset, progress=False)


def test_overlays_are_drawn_for_the_first_images(small_dataset, tmp_path):
    dataset = load_dataset(small_dataset, "train")
    answers = _answers(dataset, _perfect({1: 1, 2: 2}))
    out = tmp_path / "eval"
    evaluate_model(
        FakePredictor(dataset.class_names, answers), dataset, overlays=2, out=out, progress=False
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "overlay_0001.png",
        "overlay_0002.png",
        "overlays.png",
    ]


KEYPOINT_CATEGORIES = [
    {**c, "keypoints": list(KEYPOINT_NAMES), "skeleton": [list(pair) for pair in SKELETON]}
    for c in CATEGORIES
]


def _keypoint_dataset(root: Path, images: int = 6, seed: int = 0) -> Path:
    """`_random_dataset` (with crowd regions) whose hands have 21 keypoints inside their box:
    about a fifth unlabelled (v=0 at 0, 0), the rest v=1 or 2; the first hand has none
    labelled, and crowd regions none either."""
    _random_dataset(root, images, seed, categories=KEYPOINT_CATEGORIES, crowd=True)
    path = root / "annotations" / "instances_val.json"
    coco = json.loads(path.read_text())
    rng = np.random.default_rng(seed)
    for index, annotation in enumerate(coco["annotations"]):
        x, y, w, h = annotation["bbox"]
        flags = rng.choice([0, 1, 2], K, p=[0.2, 0.3, 0.5])
        if index == 0 or annotation["iscrowd"]:
            flags[:] = 0
        points = np.column_stack([x + rng.random(K) * w, y + rng.random(K) * h, flags])
        points[flags == 0] = 0
        annotation["keypoints"] = points.round(2).ravel().tolist()
        annotation["num_keypoints"] = int((flags > 0).sum())
    path.write_text(json.dumps(coco))
    return root


def _truth_points(annotation):
    return np.array(annotation["keypoints"], np.float64).reshape(K, 3)


def _with_keypoints(make_instance_points):
    """`_perfect` hands, each with make_instance_points(annotation) as its keypoints."""
    perfect = _perfect({1: 1, 2: 2})

    def make(record, annotations, ground_truth):
        hands = [a for a in annotations if not a["iscrowd"]]
        instances = perfect(record, annotations, ground_truth)
        return [(*i, make_instance_points(a)) for i, a in zip(instances, hands, strict=True)]

    return make


def _at(xy):
    """Predicted keypoints [K, 3] at xy [K, 2], every score 0.9."""
    return np.column_stack([xy, np.full(K, 0.9)])


def _unlabelled_far_away(annotation, xy):
    """xy, with the unlabelled keypoints moved 500 px off: they must not count. A hand with
    none labelled gets all at its box centre, where COCO looks for them then."""
    truth = _truth_points(annotation)
    if not truth[:, 2].any():
        x, y, w, h = annotation["bbox"]
        return np.tile([x + w / 2, y + h / 2], (K, 1))
    return np.where(truth[:, 2:] > 0, xy, xy + 500)


def _noisy_keypoints(seed):
    """`_noisy`'s shifted, missed and invented hands, with keypoints scattered around the truth
    (a spread of 0-3 px, drawn per hand; the invented hands' anywhere in their box)."""
    rng = np.random.default_rng(seed)

    def make(record, annotations, ground_truth):
        instances = []
        for a in annotations:
            if a["iscrowd"] or rng.random() < 0.2:
                continue
            mask = np.roll(ground_truth.annToMask(a), rng.integers(-2, 3, 2), axis=(0, 1))
            xy = _truth_points(a)[:, :2] + rng.normal(0, rng.uniform(0, 3), (K, 2))
            instances.append((a["category_id"], float(rng.random()), mask, _box(mask), _at(xy)))
        for _ in range(rng.integers(0, 3)):
            mask = rectangle_mask(SIZE, SIZE, *rng.integers(0, 30, 2), *rng.integers(34, 64, 2))
            y1, x1, y2, x2 = _box(mask)
            xy = rng.uniform((x1, y1), (x2, y2), (K, 2))
            instances.append(
                (int(rng.integers(1, 3)), float(rng.random()), mask, _box(mask), _at(xy))
            )
        return instances

    return make


def test_keypoint_ap_agrees_with_pycocotools_run_directly_with_the_hand_sigmas(tmp_path):
    dataset = load_dataset(_keypoint_dataset(tmp_path, images=8, seed=2), "val")
    answers = _answers(dataset, _noisy_keypoints(seed=5), keypoints=K)
    metrics = evaluate_model(FakePredictor(dataset.class_names, answers), dataset, progress=False)
    expected = _pycocotools_stats(dataset.annotation_file, answers, dataset, "keypoints")
    for name, value in zip(KEYPOINT_STAT_NAMES, expected, strict=True):
        assert metrics["keypoints"][name] == (pytest.approx(value) if value > -1 else None), name
    assert 0.0 < metrics["keypoints"]["AP"] < 1.0
    for kind in ("bbox", "segm"):  # box and mask numbers are untouched by the keypoints
        box_or_mask = _pycocotools_stats(dataset.annotation_file, answers, dataset, kind)
        assert metrics[kind]["AP"] == pytest.approx(box_or_mask[0])


def test_perfect_keypoints_score_one_and_unlabelled_ones_are_ignored(tmp_path):
    dataset = load_dataset(_keypoint_dataset(tmp_path), "val")
    make = _with_keypoints(lambda a: _at(_unlabelled_far_away(a, _truth_points(a)[:, :2])))
    answers = _answers(dataset, make, keypoints=K)
    metrics = evaluate_model(FakePredictor(dataset.class_names, answers), dataset, progress=False)
    annotations = load_ground_truth(dataset.annotation_file).dataset["annotations"]
    hands = [a for a in annotations if not a["iscrowd"]]
    visible = sum(int((_truth_points(a)[:, 2] > 0).sum()) for a in hands)
    pose = metrics["keypoints"]
    assert pose["AP"] == pytest.approx(1.0) and pose["AP50"] == pytest.approx(1.0)
    assert pose["AR"] == pytest.approx(1.0)
    assert pose["APm"] is None  # every hand here is small: no medium or large ones
    assert (pose["pck@0.2"], pose["auc_0_30px"]) == (1.0, 1.0)
    assert pose["epe_px"] == pytest.approx(0.0, abs=1e-5)  # float32 detections, float64 truth
    assert (pose["hands"], pose["visible"]) == (len(hands), visible)
    assert metrics["segm"]["AP"] == pytest.approx(1.0)

    assert json.loads(write_metrics(metrics, tmp_path / "out").read_text())["keypoints"] == pose
    table = format_metrics(metrics)
    assert "keypoints          1.000   1.000   1.000       -       -       -" in table
    assert (
        f"hand pose       PCK@0.2 1.000  AUC 0-30px 1.000  EPE 0.00 px ({visible} visible "
        f"keypoints of {len(hands)} matched hands)"
    ) in table


def test_pck_auc_and_epe_of_a_known_offset_match_a_numpy_reference(tmp_path):
    dataset = load_dataset(_keypoint_dataset(tmp_path, seed=4), "val")
    rng = np.random.default_rng(7)
    distances, sides = [], []

    def offset(annotation):
        truth = _truth_points(annotation)
        shift = rng.uniform(-6, 6, (K, 2))
        distances.append(np.hypot(*shift.T)[truth[:, 2] > 0])
        sides.append(np.full(distances[-1].size, max(annotation["bbox"][2:])))
        return _at(_unlabelled_far_away(annotation, truth[:, :2] + shift))

    answers = _answers(dataset, _with_keypoints(offset), keypoints=K)
    pose = evaluate_model(FakePredictor(dataset.class_names, answers), dataset, progress=False)[
        "keypoints"
    ]
    distance, side = np.concatenate(distances), np.concatenate(sides)
    pck = np.mean(distance <= 0.2 * side)
    auc = np.mean([np.mean(distance <= t) for t in np.linspace(1.5, 30, 20)])
    assert 0 < pck < 1 and 0 < auc < 1
    assert pose["pck@0.2"] == pytest.approx(pck)
    assert pose["auc_0_30px"] == pytest.approx(auc)
    assert pose["epe_px"] == pytest.approx(distance.mean())
    assert (pose["hands"], pose["visible"]) == (len(distances), distance.size)


def test_keypoints_are_left_out_unless_the_dataset_and_the_model_both_have_them(tmp_path):
    plain = load_dataset(_random_dataset(tmp_path / "plain"), "val")
    hands = load_dataset(_keypoint_dataset(tmp_path / "hands"), "val")
    anywhere = _with_keypoints(lambda a: _at(np.full((K, 2), 5.0)))
    for dataset, keypoints in ((plain, K), (hands, 0)):
        make = anywhere if keypoints else _perfect({1: 1, 2: 2})
        answers = _answers(dataset, make, keypoints=keypoints)
        metrics = evaluate_model(
            FakePredictor(dataset.class_names, answers), dataset, progress=False
        )
        assert "keypoints" not in metrics
        assert metrics["segm"]["AP"] == pytest.approx(1.0)
        assert "hand pose" not in format_metrics(metrics)


def test_a_keypoint_model_that_finds_nothing_scores_zero_ap_and_no_pose(tmp_path):
    dataset = load_dataset(_keypoint_dataset(tmp_path), "val")
    answers = _answers(dataset, lambda r, a, g: [], keypoints=K)
    metrics = evaluate_model(FakePredictor(dataset.class_names, answers), dataset, progress=False)
    pose = metrics["keypoints"]
    assert pose["AP"] == 0.0
    assert pose["pck@0.2"] is pose["auc_0_30px"] is pose["epe_px"] is None
    assert (pose["hands"], pose["visible"]) == (0, 0)
    assert "hand pose       PCK@0.2 -  AUC 0-30px -  EPE - px (0 visible" in format_metrics(metrics)


def test_coco_results_carry_keypoints_only_when_the_detection_has_them():
    instance = (1, 0.8, rectangle_mask(SIZE, SIZE, 2, 3, 10, 12), (2, 3, 10, 12))
    points = _at(np.arange(2 * K, dtype=np.float64).reshape(K, 2))
    (entry,) = coco_results(7, _detection([(*instance, points)], keypoints=K), [1])
    assert entry["keypoints"] == [v for x, y in points[:, :2].tolist() for v in (x, y, 1)]
    assert entry["bbox"] == [3.0, 2.0, 9.0, 8.0]
    no_head = dataclasses.replace(
        _detection([instance]), extras={"keypoints": np.zeros((1, 0, 3), np.float32)}
    )
    for detection in (_detection([instance]), no_head):
        assert "keypoints" not in coco_results(7, detection, [1])[0]


def test_evaluate_command_writes_metrics_and_overlays(tiny_checkpoint, tmp_path, no_xla, capsys):
    data = _random_dataset(tmp_path / "data", images=3)
    args = ["evaluate", "--dataset", str(data), "--weights", str(tiny_checkpoint)]
    code = cli.main(
        [
            *args,
            *("--limit", "2", "--overlays", "2", "--held-out", "0"),
            *("--set", "model.detection_min_confidence=0"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    out = tiny_checkpoint / "eval_val"
    printed = capsys.readouterr().out
    assert str(out / "metrics.json") in printed and "left_hand" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {
        "bbox",
        "segm",
        "per_class",
        "agnostic",
        "handedness",
        "images",
        "images_per_s",
    }
    assert metrics["images"] == 2
    assert set(metrics["per_class"]) == {"left_hand", "right_hand"}
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(metrics["segm"])
    assert (out / "overlay_0002.png").is_file() and not (out / "overlay_0003.png").exists()


def test_evaluate_command_reports_missing_inputs(tiny_checkpoint, tmp_path, capsys):
    args = ["evaluate", "--weights", str(tiny_checkpoint), "--dataset"]
    assert cli.main([*args, str(tmp_path / "nowhere")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    data = _random_dataset(tmp_path / "data", images=1)
    assert cli.main(["evaluate", "--dataset", str(data), "--weights", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err


def test_ray_job_entry_point_runs_the_evaluate_command(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "evaluate.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--dataset" in result.stdout and "--weights" in result.stdout
