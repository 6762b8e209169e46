import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from handray.core.errors import DatasetError
from handray.core.hand_keypoints import KEYPOINT_NAMES, SKELETON
from handray.core.masks import decode_counts
from handray.data.coco import load_dataset
from handray.data.hands import hand_categories
from tests.conftest import random_keypoints, rectangle_mask, write_dataset


def test_reader_decodes_polygons_rle_uncompressed_and_crowd_like_pycocotools(small_dataset):
    dataset = load_dataset(small_dataset, "train")
    reference = COCO(str(small_dataset / "annotations" / "instances_train.json"))
    assert dataset.class_names == ("left_hand", "right_hand")
    assert dataset.num_classes == 3
    assert len(dataset) == 3
    for record in dataset.images:
        anns = reference.loadAnns(reference.getAnnIds(imgIds=[record.image_id]))
        assert [a["category_id"] for a in anns] == record.class_ids.tolist()
        assert [bool(a["iscrowd"]) for a in anns] == record.crowd.tolist()
        for ann, runs in zip(anns, record.counts, strict=True):
            expected = reference.annToMask(ann)
            np.testing.assert_array_equal(
                decode_counts(runs, record.height, record.width), expected
            )
        assert record.path.is_file()


def test_category_ids_map_to_contiguous_class_ids(tmp_path):
    categories = [{"id": 7, "name": "right_hand"}, {"id": 3, "name": "left_hand"}]
    mask = rectangle_mask(20, 20, 2, 2, 10, 10)
    write_dataset(
        tmp_path,
        [
            {
                "height": 20,
                "width": 20,
                "instances": [{"mask": mask, "category_id": 7}, {"mask": mask, "category_id": 3}],
            }
        ],
        categories=categories,
    )
    dataset = load_dataset(tmp_path)
    assert dataset.class_names == ("left_hand", "right_hand")
    assert dataset.category_ids == (3, 7)
    assert dataset.images[0].class_ids.tolist() == [2, 1]


def _rewrite(path, change):
    coco = json.loads(path.read_text())
    change(coco)
    path.write_text(json.dumps(coco))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["annotations"][0].update(image_id=99), "unknown image 99"),
        (lambda c: c["annotations"][0].update(category_id=5), "unknown category 5"),
        (lambda c: c.update(categories=[]), "category list is empty"),
        (lambda c: c["images"][0].update(id="a1"), "is not an integer"),
        (lambda c: c["annotations"][1].update(id=1), "annotation id 1 appears twice"),
        (lambda c: c["images"][0].pop("width"), "has no valid width"),
        (lambda c: c["annotations"][0].pop("segmentation"), "has no segmentation"),
        (lambda c: c.pop("annotations"), "missing COCO section"),
    ],
)
def test_inconsistent_annotations_are_named(small_dataset, change, message):
    _rewrite(small_dataset / "annotations" / "instances_train.json", change)
    with pytest.raises(DatasetError, match=message):
        load_dataset(small_dataset)


def test_missing_image_file_is_named(small_dataset):
    (small_dataset / "images" / "train_002.png").unlink()
    with pytest.raises(DatasetError, match="train_002.png"):
        load_dataset(small_dataset)


def test_truncated_json_and_missing_split_have_clear_errors(small_dataset):
    path = small_dataset / "annotations" / "instances_train.json"
    path.write_text(path.read_text()[:-40])
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(small_dataset)
    with pytest.raises(DatasetError, match="instances_val.json is missing"):
        load_dataset(small_dataset, "val")


@pytest.fixture
def hands_with_keypoints(tmp_path) -> tuple:
    """A dataset with hand categories: two hands with keypoints around one without, and an
    image without hands. Returns the folder and the keypoints written."""
    rng = np.random.default_rng(0)
    first, second = random_keypoints(rng, 40, 50), random_keypoints(rng, 40, 50)
    mask = rectangle_mask(40, 50, 5, 5, 20, 20)
    instances = [
        {"mask": mask, "category_id": 2, "keypoints": first},
        {"mask": mask, "category_id": 1},
        {"mask": mask, "category_id": 1, "keypoints": second},
    ]
    images = [{"height": 40, "width": 50, "instances": instances}, {"height": 30, "width": 30}]
    write_dataset(tmp_path, images, categories=hand_categories("left-right"))
    return tmp_path, np.stack([first, np.zeros((21, 3)), second])


def test_keypoints_names_and_skeleton_come_from_the_file(hands_with_keypoints):
    root, written = hands_with_keypoints
    dataset = load_dataset(root)
    assert dataset.keypoint_names == KEYPOINT_NAMES
    assert dataset.skeleton == SKELETON
    hands, empty = dataset.images
    assert hands.keypoints.dtype == np.float32
    # In annotation order, like class_ids; the hand without keypoints is unlabelled (v = 0).
    np.testing.assert_array_equal(hands.keypoints, written.astype(np.float32))
    assert hands.class_ids.tolist() == [2, 1, 1]
    assert empty.keypoints.shape == (0, 21, 3)


def test_dataset_without_keypoints_has_none(small_dataset):
    dataset = load_dataset(small_dataset)
    assert dataset.keypoint_names == () and dataset.skeleton == ()
    for record in dataset.images:
        assert record.keypoints.shape == (len(record.class_ids), 0, 3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["categories"][1]["keypoints"].__setitem__(0, "palm"),
            r"categories 1 and 2 declare different keypoint names \(\['wrist', .*\['palm', ",
        ),
        (
            lambda c: c["categories"][1]["skeleton"].pop(),
            r"categories 1 and 2 declare different skeletons",
        ),
        (lambda c: c["categories"][0].update(skeleton=[[1, 22]]), r"category 1 skeleton"),
        (
            lambda c: c["annotations"][2].update(keypoints=[1, 2, 2]),
            r"annotation 3 has keypoints 3 values but the categories declare 21 keypoints: 63",
        ),
        (
            lambda c: [cat.pop("keypoints") for cat in c["categories"]],
            r"annotation 1 has keypoints 63 values but the categories declare 0 keypoints",
        ),
        (lambda c: c["annotations"][0]["keypoints"].__setitem__(5, 3), "annotation 1 .*visib"),
        (lambda c: c["annotations"][0]["keypoints"].__setitem__(0, "a"), "not numbers"),
    ],
)
def test_inconsistent_keypoints_are_named(hands_with_keypoints, change, message):
    path = hands_with_keypoints[0] / "annotations" / "instances_train.json"
    _rewrite(path, change)
    with pytest.raises(DatasetError, match=message) as error:
        load_dataset(hands_with_keypoints[0])
    assert str(error.value).startswith(f"{path}: ")
