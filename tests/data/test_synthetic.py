"""The synthetic hand generator: deterministic, valid COCO, masks and keypoints that agree."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from handray.core.errors import DatasetError
from handray.data import scene, synthetic
from handray.data.hand_paint import SKIN, draw_hand, skin_distance, skin_tone
from handray.data.hand_shape import place, sample_pose
from handray.data.scene import render_sample, single_hand
from handray.data.synthetic import SynthSummary, generate_dataset

SIZE = 96
WRIST, THUMB_MCP, THUMB_CMC, INDEX_MCP, LITTLE_MCP = 0, 3, 4, 8, 20


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
    """v=0 exactly for keypoints outside the image; class, view and chirality agree with the
    drawing: the silhouette is mirrored for a left palm and for a right back, never otherwise."""
    size, checked, seen = 64, 0, set()
    for index in range(1, 13):
        _, label, hands = scene._compose(11, "train", index, size)
        _, annotations = render_sample(11, "train", index, size)
        remaining = iter(annotations)
        for i, (uv, is_left, view) in enumerate(hands, start=1):
            if not (label == i).any():
                continue  # hidden completely: no annotation
            annotation = next(remaining)
            assert annotation["category_id"] == (1 if is_left else 2)
            assert annotation["view"] == view
            seen.add((is_left, view))
            uv = np.array([[round(float(x), 2), round(float(y), 2)] for x, y in uv])
            outside = (uv < 0).any(1) | (uv >= size).any(1)
            v = np.array(annotation["keypoints"]).reshape(21, 3)[:, 2]
            assert np.array_equal(v == 0, outside)
            # Index then little finger base seen from the wrist turn one way on a right palm
            # and the other way on its mirror image (left palm, right back), under any rotation.
            a, b = uv[INDEX_MCP] - uv[WRIST], uv[LITTLE_MCP] - uv[WRIST]
            assert (a[0] * b[1] - a[1] * b[0] > 0) == (is_left != (view == "back"))
            checked += 1
        assert next(remaining, None) is None
    assert checked >= 10
    assert len(seen) == 4  # every side with every view


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
        assert right_uv[THUMB_CMC, 0] > right_uv[WRIST, 0] > left_uv[THUMB_CMC, 0]


@pytest.mark.parametrize(
    ("left", "view", "thumb_towards"),
    [(False, "palm", +1), (False, "back", -1), (True, "palm", -1), (True, "back", +1)],
)
def test_the_thumb_lies_where_a_real_hand_shows_it(left, view, thumb_towards):
    """Fingers up: a right palm (or a left back) shows its thumb on the viewer's right, as your
    own right hand does when you look at its palm; a right back or a left palm on the left."""
    for seed in range(6):
        _, uv = single_hand(seed, left=left, view=view)
        for joint in (THUMB_CMC, THUMB_MCP):
            assert np.sign(uv[joint, 0] - uv[WRIST, 0]) == thumb_towards


def test_a_right_back_has_the_silhouette_of_a_left_palm():
    for seed in range(6):
        back, back_uv = single_hand(seed, left=False, view="back")
        palm, palm_uv = single_hand(seed, left=True, view="palm")
        assert (back ^ palm).sum() <= 0.02 * palm.sum()
        assert np.allclose(back_uv, palm_uv)
        right_palm, _ = single_hand(seed, left=False, view="palm")
        assert (back ^ right_palm).sum() > 0.1 * palm.sum()


def _luminance(rgba: np.ndarray) -> np.ndarray:
    return rgba[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114]


def _open_hand(view: str, length: float, skin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGBA pixels and fingertips (5, 2) of an upright open right hand seen from `view`."""
    pose = dataclasses.replace(sample_pose(np.random.default_rng(1)), curl=np.zeros(5))
    shape = place(pose, view == "back", np.array([64.0, 64.0]), length, 0.0)
    image = Image.new("RGBA", (128, 128), 0)
    draw_hand(ImageDraw.Draw(image), shape, view, skin, np.random.default_rng(1))
    return np.asarray(image), shape.joints[:, 3]


@pytest.mark.parametrize("length", [19.0, 35.0, 77.0])
@pytest.mark.parametrize("skin", list(SKIN[[0, 2, 4]]))
def test_backs_show_light_nails_at_the_fingertips_and_palms_do_not(length, skin):
    """From the smallest hand up, each fingertip of a back view holds a patch clearly lighter
    than the hand; a palm view has none, and is lighter overall than the back of the hand."""
    ys, xs = np.mgrid[0:128, 0:128] + 0.5
    medians = {}
    for view in ("back", "palm"):
        rgba, tips = _open_hand(view, length, skin)
        luminance, hand = _luminance(rgba), rgba[..., 3] > 0
        medians[view] = np.median(luminance[hand])
        for x, y in tips:
            near = hand & ((xs - x) ** 2 + (ys - y) ** 2 <= 4.0)
            lift = luminance[near].max() - medians[view]
            assert lift > 25.0 if view == "back" else lift < 15.0, (view, lift)
    assert medians["palm"] > medians["back"] + 15.0


def test_palms_have_dark_creases_and_backs_dark_knuckles():
    """The lines inside the hand sit where each view has them: creases in the palm's middle,
    knuckle lines across the finger bases (the palm's far edge), so their rows differ."""
    rows = {}
    for view in ("palm", "back"):
        rgba, _ = _open_hand(view, 77.0, SKIN[1])
        luminance, hand = _luminance(rgba), rgba[..., 3] > 0
        dark = hand & (luminance < 0.66 * np.median(luminance[hand]))
        palm_rows = slice(64 - 12, 64 + 18)  # the palm's middle, below the finger bases
        rows[view] = dark[palm_rows].sum(), dark[: 64 - 17].sum()
    assert rows["palm"][0] > 3 * max(rows["back"][0], 1)
    assert rows["back"][1] > rows["palm"][1]


def test_skin_tones_stay_human():
    """Tones stay near the light-to-dark polyline, brighter or darker but never tinted: the
    hue (direction in RGB) of every tone is within 0.02 rad of a tone on the polyline."""
    rng = np.random.default_rng(0)
    tones = np.array([skin_tone(rng) for _ in range(2000)])
    assert max(skin_distance(tone) for tone in tones) < 25.0
    t = np.linspace(0.0, 1.0, 200)[:, None]
    line = np.concatenate([a + t * (b - a) for a, b in itertools.pairwise(SKIN)])
    cosines = (tones / np.linalg.norm(tones, axis=1, keepdims=True)) @ (
        line / np.linalg.norm(line, axis=1, keepdims=True)
    ).T
    assert np.arccos(np.clip(cosines.max(1), -1.0, 1.0)).max() < 0.02
    assert tones[:, 0].max() - tones[:, 0].min() > 150  # still light to dark


def test_bodies_are_background_drawn_before_any_hand(monkeypatch):
    """A torso paints pixels with label 0 and goes down while no hand is on the canvas, so it
    never enters a hand mask and never hides a hand."""
    drawn, arms = [], 0
    original = scene._draw_body

    def checked(canvas, hand, paint):
        before = canvas.rgb.copy()
        assert not canvas.label.any()
        original(canvas, hand, paint)
        assert not canvas.label.any()
        drawn.append(int((canvas.rgb != before).any(-1).sum()))

    monkeypatch.setattr(scene, "_draw_body", checked)
    for index in range(40):
        _, _, hands = scene._compose(3, "train", index, 64)
        arms += len(hands)
    assert 0.4 * arms < len(drawn) < 0.8 * arms
    assert sum(count > 0 for count in drawn) > 0.5 * len(drawn)


def test_the_view_mix_is_recorded(dataset, cocos):
    _, summary = dataset
    counts = collections.Counter()
    for coco in cocos.values():
        views = collections.Counter(a["view"] for a in coco.dataset["annotations"])
        info = coco.dataset["info"]
        assert info["view_mix"] == {
            "palm": 1.0 - synthetic.BACK_CHANCE,
            "back": synthetic.BACK_CHANCE,
        }
        assert info["hands_per_view"] == {"palm": views["palm"], "back": views["back"]}
        counts += views
    assert summary.hands_per_view == dict(counts)
    assert set(counts) == {"palm", "back"}
    assert abs(counts["back"] / counts.total() - synthetic.BACK_CHANCE) < 0.15


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
    assert set(info) == {
        "description",
        "generator",
        "seed",
        "size",
        "split",
        "images",
        "view_mix",
        "hands_per_view",
        "style",
        "family_chances",
        "images_per_family",
    }
