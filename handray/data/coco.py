"""Read any COCO instance-segmentation file into checked, contiguous-class image records.

Category ids are mapped to class ids 1..K in category-id order (0 is background). Every
segmentation flavour (polygons, compressed and uncompressed RLE) is reduced to run lengths once,
here, so the tf.data pipeline can expand masks with plain TF ops. Keypoints (COCO's flat
[x, y, v] lists) take their names and skeleton from the categories, which must agree on them.
Problems are reported with the file, image or annotation they concern, before any training starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from handray.core.errors import DatasetError
from handray.core.masks import segmentation_counts


@dataclass(frozen=True)
class ImageRecord:
    """One image and its instances, in contiguous class ids."""

    image_id: int
    path: Path
    width: int
    height: int
    class_ids: np.ndarray  # int32 [n], 1..K
    crowd: np.ndarray  # bool [n]
    counts: tuple[np.ndarray, ...]  # per instance: run lengths, column-major, starting with 0s
    keypoints: np.ndarray  # float32 [n, K, 3]: x, y (original pixels), v (0 unlabelled, 1, 2)


@dataclass(frozen=True)
class CocoDataset:
    """A checked COCO split: class names for ids 1..K, the keypoint layout and the image records."""

    annotation_file: Path
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]  # COCO category id of class id i+1
    keypoint_names: tuple[str, ...]  # empty when no category declares keypoints
    skeleton: tuple[tuple[int, int], ...]  # 1-based keypoint index pairs
    images: tuple[ImageRecord, ...]

    @property
    def num_classes(self) -> int:
        """Class count with background, as `model.num_classes` counts it."""
        return len(self.class_names) + 1

    def __len__(self) -> int:
        return len(self.images)


def annotation_file(root: str | Path, split: str) -> Path:
    """Where a handray dataset folder keeps the COCO file of a split."""
    return Path(root) / "annotations" / f"instances_{split}.json"


def load_dataset(root: str | Path, split: str = "train", check_files: bool = True) -> CocoDataset:
    """Load split `split` of dataset folder `root` (``root/annotations/instances_<split>.json``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    path = annotation_file(root, split)
    if not path.is_file():
        present = sorted(p.name for p in (root / "annotations").glob("instances_*.json"))
        raise DatasetError(
            f"{path} is missing; a dataset folder holds annotations/instances_<split>.json "
            f"(found: {present or 'none'}). Make one with `handray synth` or `handray convert-rhd`."
        )
    return load_coco_file(path, image_root=root, check_files=check_files)


def load_coco_file(
    path: str | Path, image_root: str | Path, check_files: bool = True
) -> CocoDataset:
    """Load any COCO instances file whose image `file_name`s are relative to `image_root`."""
    path, image_root = Path(path), Path(image_root)
    coco = _read_json(path)
    categories = _categories(coco["categories"], path)
    keypoint_names, skeleton = _keypoint_layout(coco["categories"], path)
    class_of = {cat_id: index + 1 for index, cat_id in enumerate(sorted(categories))}
    images = _images(coco["images"], path)
    per_image: dict[int, list[dict]] = {image_id: [] for image_id in images}
    seen_annotations: set[int] = set()
    for ann in coco["annotations"]:
        ann_id = _int_id(ann, "id", f"{path}: annotation")
        if ann_id in seen_annotations:
            raise DatasetError(f"{path}: annotation id {ann_id} appears twice")
        seen_annotations.add(ann_id)
        image_id, cat_id = ann.get("image_id"), ann.get("category_id")
        if image_id not in per_image:
            raise DatasetError(f"{path}: annotation {ann_id} points at unknown image {image_id!r}")
        if cat_id not in class_of:
            raise DatasetError(f"{path}: annotation {ann_id} has unknown category {cat_id!r}")
        per_image[image_id].append(ann)
    records = tuple(
        _record(images[image_id], anns, class_of, len(keypoint_names), image_root, path)
        for image_id, anns in per_image.items()
    )
    if check_files:
        _check_files(records, path, image_root)
    ordered = sorted(categories)
    return CocoDataset(
        annotation_file=path,
        class_names=tuple(categories[c] for c in ordered),
        category_ids=tuple(ordered),
        keypoint_names=keypoint_names,
        skeleton=skeleton,
        images=records,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as handle:
            coco = json.load(handle)
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path} is not valid JSON ({err}); the file may be truncated, re-create it"
        ) from None
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err}") from None
    if not isinstance(coco, dict):
        raise DatasetError(f"{path}: expected a COCO object with images/annotations/categories")
    missing = [key for key in ("images", "annotations", "categories") if key not in coco]
    if missing:
        raise DatasetError(f"{path}: missing COCO section(s) {missing}")
    return coco


def _int_id(entry: Any, key: str, where: str) -> int:
    value = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise DatasetError(f"{where} {key} {value!r} is not an integer (COCO ids are integers)")
    return value


def _categories(entries: Iterable[Any], path: Path) -> dict[int, str]:
    categories: dict[int, str] = {}
    for entry in entries:
        cat_id = _int_id(entry, "id", f"{path}: category")
        if cat_id in categories:
            raise DatasetError(f"{path}: category id {cat_id} appears twice")
        if cat_id <= 0:
            raise DatasetError(f"{path}: category id {cat_id} must be positive (0 is background)")
        categories[cat_id] = str(entry.get("name", f"class_{cat_id}"))
    if not categories:
        raise DatasetError(f"{path}: the category list is empty; nothing to train")
    return categories


def _keypoint_layout(
    entries: Iterable[dict[str, Any]], path: Path
) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    """Keypoint names and skeleton shared by every category that declares keypoints."""
    layouts: dict[int, tuple[tuple[str, ...], tuple[tuple[int, int], ...]]] = {}
    for entry in entries:
        if "keypoints" not in entry:
            continue
        if not isinstance(entry["keypoints"], list):
            raise DatasetError(f"{path}: category {entry['id']} keypoints must be a list of names")
        names = tuple(str(name) for name in entry["keypoints"])
        layouts[entry["id"]] = (names, _skeleton(entry, len(names), path))
    if not layouts:
        return (), ()
    (first_id, first), *others = layouts.items()
    for cat_id, layout in others:
        for what, expected, found in zip(
            ("keypoint names", "skeletons"), first, layout, strict=True
        ):
            if found != expected:
                raise DatasetError(
                    f"{path}: categories {first_id} and {cat_id} declare different {what} "
                    f"({list(expected)} and {list(found)}); handray needs one keypoint layout "
                    "for all categories"
                )
    return first


def _skeleton(entry: dict[str, Any], count: int, path: Path) -> tuple[tuple[int, int], ...]:
    """The category's 1-based keypoint pairs, checked so drawing a skeleton cannot fail later."""
    pairs = entry.get("skeleton", [])
    try:
        skeleton = tuple((int(a), int(b)) for a, b in pairs)
    except (ValueError, TypeError):
        skeleton = None
    if skeleton is None or any(not 1 <= index <= count for pair in skeleton for index in pair):
        raise DatasetError(
            f"{path}: category {entry['id']} skeleton {pairs!r} is not a list of pairs of "
            f"keypoint numbers 1..{count}"
        )
    return skeleton


def _images(entries: Iterable[Any], path: Path) -> dict[int, dict[str, Any]]:
    images: dict[int, dict[str, Any]] = {}
    for entry in entries:
        image_id = _int_id(entry, "id", f"{path}: image")
        if image_id in images:
            raise DatasetError(f"{path}: image id {image_id} appears twice")
        for key in ("width", "height"):
            value = entry.get(key)
            if not isinstance(value, int) or value <= 0:
                raise DatasetError(f"{path}: image {image_id} has no valid {key} ({value!r})")
        if not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
            raise DatasetError(f"{path}: image {image_id} has no file_name")
        images[image_id] = entry
    return images


def _record(
    image: dict[str, Any],
    annotations: list[dict[str, Any]],
    class_of: dict[int, int],
    num_keypoints: int,
    image_root: Path,
    path: Path,
) -> ImageRecord:
    height, width = image["height"], image["width"]
    counts = []
    for ann in annotations:
        if "segmentation" not in ann:
            raise DatasetError(
                f"{path}: annotation {ann['id']} has no segmentation; handray learns masks"
            )
        try:
            counts.append(segmentation_counts(ann["segmentation"], height, width))
        except (ValueError, TypeError) as err:
            raise DatasetError(
                f"{path}: annotation {ann['id']} (image {image['id']}) "
                f"has a bad segmentation: {err}"
            ) from None
    return ImageRecord(
        image_id=image["id"],
        path=image_root / image["file_name"],
        width=width,
        height=height,
        class_ids=np.array([class_of[a["category_id"]] for a in annotations], np.int32),
        crowd=np.array([bool(a.get("iscrowd", 0)) for a in annotations], bool),
        counts=tuple(counts),
        keypoints=np.array(
            [_keypoints(ann, num_keypoints, path) for ann in annotations], np.float32
        ).reshape(len(annotations), num_keypoints, 3),
    )


def _keypoints(annotation: dict[str, Any], num_keypoints: int, path: Path) -> np.ndarray:
    """One annotation's [K, 3] keypoints; none given means all unlabelled (v=0)."""
    values = annotation.get("keypoints", [0] * 3 * num_keypoints)
    where = f"{path}: annotation {annotation['id']}"
    if not isinstance(values, list) or len(values) != 3 * num_keypoints:
        found = f"{len(values)} values" if isinstance(values, list) else repr(values)
        raise DatasetError(
            f"{where} has keypoints {found} but the categories declare {num_keypoints} "
            f"keypoints: {3 * num_keypoints} values (x, y, v each)"
        )
    try:
        keypoints = np.array(values, np.float32).reshape(num_keypoints, 3)
    except (ValueError, TypeError):
        raise DatasetError(f"{where} has keypoint values that are not numbers") from None
    if not np.isin(keypoints[:, 2], (0, 1, 2)).all():
        raise DatasetError(f"{where} has keypoint visibility flags outside 0, 1, 2")
    return keypoints


def _check_files(records: Iterable[ImageRecord], path: Path, image_root: Path) -> None:
    missing = [str(r.path) for r in records if not r.path.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise DatasetError(
            f"{path}: {len(missing)} image file(s) not found under {image_root}: {shown}. "
            "file_name must be relative to the dataset folder."
        )
