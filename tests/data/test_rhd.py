"""RHD -> COCO conversion, checked against pycocotools and numpy on small RHD-shaped folders."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from handray.core.errors import DatasetError
from handray.data.rhd import convert_rhd

# pycocotools' decode trips numpy 2's __array__ copy warning; not this module's concern.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

HEIGHT, WIDTH = 48, 64
YY, XX = np.mgrid[:HEIGHT, :WIDTH]
TINY_AREA = 5


def disk(cy: int, cx: int, r: int) -> np.ndarray:
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= r * r


def paint(mask: np.ndarray, region: np.ndarray, low: int) -> None:
    """Fill a region with the 16 values of one hand (low..low+15), as RHD's part labels do."""
    mask[region] = (low + (XX + 3 * YY) % 16)[region]


def uv_vis(left: tuple[float, float, int], right: tuple[float, float, int]) -> np.ndarray:
    rows = np.zeros((42, 3), np.float32)
    rows[:21] = left
    rows[21:] = right
    return rows


def both_hands() -> tuple[np.ndarray, np.ndarray]:
    """Left and right hands touching, a body below; left keypoints cover every visibility case."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[32:] = 1
    paint(mask, disk(20, 20, 8), 2)
    paint(mask, disk(20, 36, 8), 18)
    kps = uv_vis((20, 20, 1), (36, 20, 1))
    kps[0] = (10.25, 12.5, 1)  # inside, visible -> 2
    kps[1] = (11, 13, 0)  # inside, occluded -> 1
    kps[2] = (-3, 5, 1)  # left of the image -> 0
    kps[3] = (WIDTH, 5, 1)  # x == width is outside -> 0
    kps[4] = (5, HEIGHT + 2, 0)  # below the image -> 0
    return mask, kps


def right_only() -> tuple[np.ndarray, np.ndarray]:
    mask = np.ones((HEIGHT, WIDTH), np.uint8)
    paint(mask, disk(24, 40, 10), 18)
    return mask, uv_vis((-1, -1, 0), (40, 24, 1))


def big_left_tiny_right() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    paint(mask, (YY > 10) & (YY < 40) & (XX > 20) & (XX < 30 + YY // 2), 2)
    mask[5, 5:8] = 25  # a right hand of TINY_AREA pixels, L-shaped
    mask[6:8, 7] = 33
    return mask, uv_vis((25, 25, 1), (6, 6, 1))


def no_hands() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[10:40, 10:50] = 1
    return mask, uv_vis((30, 20, 1), (40, 20, 1))


def left_only() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    paint(mask, disk(30, 50, 12), 2)
    return mask, uv_vis((50, 30, 1), (-5, -5, 0))


# Pickle insertion order is scrambled on purpose: the converter must sort by sample id.
SPLITS = {
    "training": {5: no_hands(), 0: both_hands(), 2: big_left_tiny_right(), 1: right_only()},
    "evaluation": {3: left_only(), 0: both_hands()},
}


def write_rhd(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for folder, samples in SPLITS.items():
        (root / folder / "color").mkdir(parents=True)
        (root / folder / "mask").mkdir()
        (root / folder / "depth").mkdir()
        annotations = {}
        for sample_id, (mask, kps) in samples.items():
            color = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            Image.fromarray(color).save(root / folder / "color" / f"{sample_id:05d}.png")
            Image.fromarray(mask, mode="L").save(root / folder / "mask" / f"{sample_id:05d}.png")
            annotations[sample_id] = {
                "xyz": np.zeros((42, 3), np.float32),
                "uv_vis": kps,
                "K": np.eye(3, dtype=np.float32),
            }
        with open(root / folder / f"anno_{folder}.pickle", "wb") as handle:
            pickle.dump(annotations, handle, protocol=2)
    return root


@pytest.fixture
def rhd(tmp_path: Path) -> Path:
    return write_rhd(tmp_path / "RHD")


def convert(root: Path, **kwargs):
    kwargs.setdefault("workers", 1)
    return convert_rhd(root, progress=False, **kwargs)


def load(root: Path, split: str) -> COCO:
    return COCO(str(root / "annotations" / f"instances_{split}.json"))


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_pycocotools_loads_both_splits_with_int_ids_and_resolvable_file_names(rhd):
    summary = convert(rhd)
    assert summary.images == {"train": 4, "val": 2}
    for split, folder in (("train", "training"), ("val", "evaluation")):
        coco = load(rhd, split)
        for table in (coco.dataset["images"], coco.dataset["annotations"]):
            ids = [record["id"] for record in table]
            assert all(type(i) is int for i in ids) and len(set(ids)) == len(ids)
        assert all(type(a["image_id"]) is int for a in coco.dataset["annotations"])
        names = [image["file_name"] for image in coco.dataset["images"]]
        expected = [f"{folder}/color/{sid:05d}.png" for sid in sorted(SPLITS[folder])]
        assert names == expected
        for image in coco.dataset["images"]:
            with Image.open(rhd / image["file_name"]) as color:
                assert color.size == (image["width"], image["height"])


def test_rle_decodes_to_exactly_the_source_hand_pixels_with_area_and_bbox(rhd):
    convert(rhd)
    checked = 0
    for split in ("train", "val"):
        coco = load(rhd, split)
        for ann in coco.dataset["annotations"]:
            file_name = coco.imgs[ann["image_id"]]["file_name"].replace("/color/", "/mask/")
            labels = np.asarray(Image.open(rhd / file_name))
            low, high = (2, 17) if ann["category_id"] == 1 else (18, 33)
            expected = (labels >= low) & (labels <= high)
            decoded = mask_utils.decode(ann["segmentation"])
            np.testing.assert_array_equal(decoded, expected.astype(np.uint8))
            np.testing.assert_array_equal(coco.annToMask(ann), expected.astype(np.uint8))
            ys, xs = np.nonzero(expected)
            assert ann["area"] == expected.sum()
            bbox = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["bbox"] == [int(v) for v in bbox]
            checked += 1
    assert checked == 8


def test_left_and_right_categories_keep_right_only_images(rhd):
    summary = convert(rhd)
    coco = load(rhd, "train")
    assert [(c["id"], c["name"]) for c in coco.dataset["categories"]] == [
        (1, "left_hand"),
        (2, "right_hand"),
    ]
    by_file = {img["file_name"]: img["id"] for img in coco.dataset["images"]}

    def categories(sample_id: int) -> list[int]:
        image_id = by_file[f"training/color/{sample_id:05d}.png"]
        return sorted(coco.anns[a]["category_id"] for a in coco.getAnnIds(imgIds=[image_id]))

    assert categories(0) == [1, 2]
    assert categories(1) == [2]  # the old tool dropped this right hand
    assert categories(2) == [1, 2]
    assert categories(5) == []  # body pixels (value 1) are not a hand
    assert summary.hands_per_class == {"left_hand": 4, "right_hand": 4}


def test_hand_scheme_gives_one_category_with_both_hands(rhd):
    summary = convert(rhd, classes="hand")
    coco = load(rhd, "train")
    assert [(c["id"], c["name"]) for c in coco.dataset["categories"]] == [(1, "hand")]
    assert len(coco.dataset["categories"][0]["keypoints"]) == 21
    assert {a["category_id"] for a in coco.dataset["annotations"]} == {1}
    assert len(coco.dataset["annotations"]) == 5
    assert summary.hands_per_class == {"hand": 8}


@pytest.mark.parametrize(
    ("min_area", "tiny_crowd"), [(16, 1), (TINY_AREA + 1, 1), (TINY_AREA, 0), (0, 0)]
)
def test_crowd_threshold_follows_min_area(rhd, min_area, tiny_crowd):
    summary = convert(rhd, min_area=min_area)
    annotations = load(rhd, "train").dataset["annotations"]
    tiny = [a for a in annotations if a["area"] == TINY_AREA]
    assert len(tiny) == 1 and tiny[0]["iscrowd"] == tiny_crowd
    assert all(a["iscrowd"] == 0 for a in annotations if a["area"] != TINY_AREA)
    assert summary.crowd == tiny_crowd


def test_keypoint_visibility_and_coordinates(rhd):
    convert(rhd)
    coco = load(rhd, "train")
    image_id = coco.dataset["images"][0]["id"]  # sample 0: both hands
    left = next(coco.anns[a] for a in coco.getAnnIds(imgIds=[image_id], catIds=[1]))
    kps = left["keypoints"]
    assert len(kps) == 63
    assert kps[0:3] == [10.25, 12.5, 2]
    assert kps[3:6] == [11, 13, 1]
    assert kps[6:9] == [0, 0, 0]
    assert kps[9:12] == [0, 0, 0]
    assert kps[12:15] == [0, 0, 0]
    assert kps[15:18] == [20, 20, 2]
    assert left["num_keypoints"] == 21 - 3
    right_only = coco.dataset["images"][1]["id"]
    (right,) = coco.loadAnns(coco.getAnnIds(imgIds=[right_only]))
    assert right["keypoints"][:3] == [40, 24, 2] and right["num_keypoints"] == 21


def test_source_folders_untouched_and_output_defaults_to_root_annotations(rhd):
    before = snapshot(rhd)
    summary = convert(rhd)
    after = snapshot(rhd)
    assert summary.out == rhd / "annotations"
    new = set(after) - set(before)
    assert new == {"annotations/instances_train.json", "annotations/instances_val.json"}
    assert {k: v for k, v in after.items() if k not in new} == before


def test_out_elsewhere_writes_file_names_relative_to_its_parent(rhd, tmp_path):
    out = tmp_path / "dataset" / "annotations"
    convert(rhd, out=out)
    coco = COCO(str(out / "instances_val.json"))
    for image in coco.dataset["images"]:
        assert (out.parent / image["file_name"]).resolve().is_file()
    assert not (rhd / "annotations").exists()


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_mask_stops_with_its_name_and_writes_no_json_for_that_split(rhd, workers):
    bad = rhd / "evaluation" / "mask" / "00003.png"
    truncate(bad)
    with pytest.raises(DatasetError, match=r"00003\.png.*--skip-bad") as error:
        convert(rhd, workers=workers)
    assert str(bad) in str(error.value)
    written = sorted(p.name for p in (rhd / "annotations").iterdir())
    assert written == ["instances_train.json"]  # train finished first; no val, no temp file


def test_corrupt_training_mask_writes_nothing(rhd):
    truncate(rhd / "training" / "mask" / "00001.png")
    with pytest.raises(DatasetError, match=r"training/mask/00001\.png"):
        convert(rhd)
    assert not list((rhd / "annotations").glob("*"))


def test_skip_bad_converts_the_rest_and_lists_the_file(rhd):
    bad = rhd / "evaluation" / "mask" / "00003.png"
    truncate(bad)
    summary = convert(rhd, skip_bad=True)
    assert len(summary.skipped) == 1 and summary.skipped[0].startswith(str(bad))
    assert summary.images == {"train": 4, "val": 1}
    names = [image["file_name"] for image in load(rhd, "val").dataset["images"]]
    assert names == ["evaluation/color/00000.png"]


@pytest.mark.parametrize(
    ("problem", "reason"),
    [
        (lambda m: Image.fromarray(np.zeros((HEIGHT, WIDTH + 1), np.uint8)).save(m), "mask is"),
        (lambda m: Image.fromarray(np.full((HEIGHT, WIDTH), 34, np.uint8)).save(m), "above 33"),
    ],
    ids=["wrong-size", "value-above-33"],
)
def test_inconsistent_mask_is_a_bad_sample(rhd, problem, reason):
    bad = rhd / "training" / "mask" / "00002.png"
    problem(bad)
    with pytest.raises(DatasetError, match=reason) as error:
        convert(rhd)
    assert str(bad) in str(error.value)
    summary = convert(rhd, skip_bad=True)
    assert summary.images["train"] == 3 and str(bad) in summary.skipped[0]


def test_missing_colour_image_is_named(rhd):
    missing = rhd / "training" / "color" / "00002.png"
    missing.unlink()
    with pytest.raises(DatasetError, match="missing") as error:
        convert(rhd)
    assert str(missing) in str(error.value)


@pytest.mark.parametrize("skip_bad", [False, True])
def test_missing_pickle_is_named_and_always_fatal(rhd, skip_bad):
    missing = rhd / "evaluation" / "anno_evaluation.pickle"
    missing.unlink()
    with pytest.raises(DatasetError) as error:
        convert(rhd, skip_bad=skip_bad)
    assert str(missing) in str(error.value)
    assert not (rhd / "annotations").exists()  # checked before any split is converted


def test_corrupt_pickle_is_named(rhd):
    broken = rhd / "training" / "anno_training.pickle"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(DatasetError, match=r"anno_training\.pickle"):
        convert(rhd, skip_bad=True)


def test_missing_split_folder_is_named(rhd):
    shutil.rmtree(rhd / "evaluation")
    with pytest.raises(DatasetError, match=r"evaluation.*missing"):
        convert(rhd)
    assert not (rhd / "annotations").exists()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"classes": "fingers"}, ValueError),
        ({"min_area": -1}, ValueError),
        ({"workers": 0}, ValueError),
    ],
)
def test_bad_arguments_are_rejected(rhd, kwargs, error):
    with pytest.raises(error):
        convert(rhd, **kwargs)


def test_missing_root_and_out_inside_sources_are_rejected(rhd, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        convert(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="never written"):
        convert(rhd, out=rhd / "training" / "annotations")


def test_two_workers_write_byte_identical_output(rhd, tmp_path):
    convert(rhd, out=tmp_path / "one" / "annotations", workers=1)
    convert(rhd, out=tmp_path / "two" / "annotations", workers=2)
    for split in ("train", "val"):
        one = (tmp_path / "one" / "annotations" / f"instances_{split}.json").read_bytes()
        two = (tmp_path / "two" / "annotations" / f"instances_{split}.json").read_bytes()
        assert one == two
        assert json.loads(one)["images"]
