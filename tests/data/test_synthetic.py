"""The synthetic hand generator: deterministic, valid COCO, masks and keypoints that agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from handray.data import synthetic
from handray.data.synthetic import (
    SynthSummary,
    generate_dataset,
    render_sample,
    single_hand,
)
from handray.errors import DatasetError

SIZE = 96
WRIST, INDEX_MCP, LITTLE_MCP = 0, 8, 20


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, SynthSummary]:
    out = tmp_path_factory.mktemp("synth") / "hands"
    summary = generate_dataset(out, train=48, val=12, size=SIZE, seed=7, workers=2, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def cocos(dataset) -> dict[str, COCO]:
    out, _ = dataset
    return {s: COCO(str(out / "annotations" / f"instances_{s}.json")) for s in ("train", "val")}


def _all_annotations(cocos):
    for coco in cocos.values():
        for image in coco.dataset["images"]:
            yield image, coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tmp_path):
    kwargs = dict(train=4, val=2, size=64, progress=False)
    generate_dataset(tmp_path / "a", seed=3, workers=1, **kwargs)
    generate_dataset(tmp_path / "b", seed=3, workers=2, **kwargs)
    generate_dataset(tmp_path / "c", seed=4, workers=2, **kwargs)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert len(a) == 8 and a.keys() == b.keys() == c.keys()
    assert a == b
    pngs = [name for name in a if name.endswith(".png")]
    assert all(a[name] != c[name] for name in pngs)


def test_render_sample_is_deterministic_and_typed():
    image, annotations = render_sample(5, "val", 3, 64)
    again, annotations_again = render_sample(5, "val", 3, 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(image, again) and annotations == annotations_again
    assert all("id" not in a and "image_id" not in a for a in annotations)
    with pytest.raises(ValueError, match="unknown split"):
        render_sample(5, "test", 3, 64)


def test_coco_files_load_with_integer_ids_and_relative_files(dataset, cocos):
    out, summary = dataset
    assert summary.images == {"train": 48, "val": 12}
    for split, coco in cocos.items():
        assert [c["name"] for c in coco.dataset["categories"]] == ["left_hand", "right_hand"]
        assert all(len(c["keypoints"]) == 21 for c in coco.dataset["categories"])
        info = coco.dataset["info"]
        assert (info["seed"], info["size"], info["generator"]) == (7, SIZE, synthetic.GENERATOR)
        for image in coco.dataset["images"]:
            assert isinstance(image["id"], int)
            assert image["file_name"].startswith(f"images/{split}/")
            assert (out / image["file_name"]).is_file()
            assert (image["width"], image["height"]) == (SIZE, SIZE)
        for annotation in coco.dataset["annotations"]:
            assert isinstance(annotation["id"], int) and isinstance(annotation["image_id"], int)
    hands = sum(len(c.dataset["annotations"]) for c in cocos.values())
    assert sum(summary.hands_per_class.values()) == hands
    crowd = sum(a["iscrowd"] for c in cocos.values() for a in c.dataset["annotations"])
    assert summary.crowd == crowd


def test_masks_match_area_and_bbox_and_are_disjoint(cocos):
    for image, anns in _all_annotations(cocos):
        union = np.zeros((image["height"], image["width"]), np.int32)
        for annotation in anns:
            mask = mask_utils.decode(annotation["segmentation"])
            assert mask.sum() == annotation["area"] > 0
            assert annotation["iscrowd"] == int(annotation["area"] < 16)
            ys, xs = np.nonzero(mask)
            extent = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert annotation["bbox"] == [int(v) for v in extent]
            union += mask
        assert union.max() <= 1, f"hands overlap in image {image['file_name']}"


def test_keypoint_visibility_agrees_with_the_mask(cocos):
    flags = set()
    for image, anns in _all_annotations(cocos):
        for annotation in anns:
            mask = mask_utils.decode(annotation["segmentation"])
            keypoints = np.array(annotation["keypoints"], np.float64).reshape(21, 3)
            # Pixel i spans [i, i + 1), as PIL draws and COCO boxes count.
            px = np.clip(np.floor(keypoints[:, :2]).astype(int), 0, image["width"] - 1)
            on_hand = mask[px[:, 1], px[:, 0]] == 1
            v = keypoints[:, 2]
            assert on_hand[v == 2].all() and not on_hand[v == 1].any()
            assert (keypoints[v == 0, :2] == 0).all()
            assert annotation["num_keypoints"] == int((v > 0).sum())
            flags |= set(v.tolist())
    assert flags == {0, 1, 2}


def test_annotations_follow_the_scene_geometry_and_chirality():
    """v=0 exactly for keypoints outside the image; class and handedness agree with the drawing."""
    size, checked = 64, 0
    for index in range(1, 13):
        _, label, hands = synthetic._compose(11, "train", index, size)
        _, annotations = render_sample(11, "train", index, size)
        remaining = iter(annotations)
        for i, (uv, is_left) in enumerate(hands, start=1):
            if not (label == i).any():
                continue  # hidden completely: no annotation
            annotation = next(remaining)
            assert annotation["category_id"] == (1 if is_left else 2)
            uv = np.array([[round(float(x), 2), round(float(y), 2)] for x, y in uv])
            outside = (uv < 0).any(1) | (uv >= size).any(1)
            v = np.array(annotation["keypoints"]).reshape(21, 3)[:, 2]
            assert np.array_equal(v == 0, outside)
            # Index then little finger base seen from the wrist turn one way on a right hand
            # and the other way on its mirror image, the left hand, under any rotation.
            a, b = uv[INDEX_MCP] - uv[WRIST], uv[LITTLE_MCP] - uv[WRIST]
            assert (a[0] * b[1] - a[1] * b[0] > 0) == is_left
            checked += 1
        assert next(remaining, None) is None
    assert checked >= 10


def test_dataset_has_both_classes_empty_images_and_cut_hands(cocos):
    categories, empty, on_border = set(), 0, 0
    for image, anns in _all_annotations(cocos):
        empty += not anns
        for annotation in anns:
            categories.add(annotation["category_id"])
            x, y, w, h = annotation["bbox"]
            on_border += x == 0 or y == 0 or x + w == image["width"] or y + h == image["height"]
    assert categories == {1, 2}
    assert empty > 0
    assert on_border > 0


def test_left_hand_is_the_mirror_image_of_the_right_hand():
    for seed in range(6):
        right, right_uv = single_hand(seed, left=False, size=128)
        left, left_uv = single_hand(seed, left=True, size=128)
        mirrored = np.fliplr(left)
        assert (mirrored ^ right).sum() <= 0.01 * right.sum()
        assert (left ^ right).sum() > 0.1 * right.sum()  # a hand is not its own mirror image
        assert np.allclose(left_uv[:, 0], 128 - right_uv[:, 0])
        assert np.allclose(left_uv[:, 1], right_uv[:, 1])
        thumb_cmc = 4
        assert right_uv[thumb_cmc, 0] > right_uv[WRIST, 0] > left_uv[thumb_cmc, 0]


def test_refuses_a_non_empty_folder_and_overwrite_replaces_it(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DatasetError, match=r"already holds files.*--overwrite"):
        generate_dataset(out, train=2, val=1, size=32, workers=1, progress=False)
    assert _files(out) == {"keep.txt": b"precious"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    summary = generate_dataset(
        out, train=2, val=1, size=32, workers=1, overwrite=True, progress=False
    )
    assert summary.out == out
    assert not (out / "keep.txt").exists()
    assert (out / "annotations" / "instances_val.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_failed_run_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def failing(task):
        calls.append(task)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return synthetic.render_sample(*task[:4])[1]

    monkeypatch.setattr(synthetic, "_render_task", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_dataset(tmp_path / "data", train=4, val=2, size=32, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"size": 16}, "size"),
        ({"size": 64.0}, "size"),
        ({"train": -1}, "train"),
        ({"val": 1.5}, "val"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
        ({"train": 0, "val": 0}, "nothing to generate"),
    ],
)
def test_rejects_bad_arguments_before_creating_anything(tmp_path, kwargs, name):
    with pytest.raises(DatasetError, match=name):
        generate_dataset(tmp_path / "data", **{"train": 1, "val": 1, "progress": False, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_info_has_no_timestamps(dataset):
    out, _ = dataset
    info = json.loads((out / "annotations" / "instances_train.json").read_text())["info"]
    assert set(info) == {"description", "generator", "seed", "size", "split", "images"}
