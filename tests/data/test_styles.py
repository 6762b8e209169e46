"""The generator's styles: "classic" pinned to the old bytes, "varied" drawing each paint family,
"held-out" a different drawing of hands; all deterministic with masks that are the label map."""

from __future__ import annotations

import collections
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from handray.core.errors import DatasetError
from handray.data import held_out_style, paint_variety, scene, synthetic
from handray.data.canvas import Canvas, contour
from handray.data.scene import STYLES, render_sample
from handray.data.synthetic import generate_dataset

HANDRAY = str(Path(sys.executable).with_name("handray"))

# Regression pin of "classic": sha256 of the image bytes plus the annotations' sorted JSON of
# `render_sample(seed, split, index, 128)`, computed with generator version 2 (commit 0efb0ef)
# before styles existed, by hashing `image.tobytes() + json.dumps(annotations, sort_keys=True)`.
CLASSIC_PIN = {
    (0, "train", 1): "d1304fc370c899af834c52950adf59b0fe43f564b645442d4a26f268be8bc314",
    (0, "train", 2): "dc2a7182d2a6a31196de3f9e630c2c3832cd8df6540f197de6597575b1dd1db6",
    (3, "val", 7): "65775320913510b211d7a9ab55c50961f6195ddb4d5b3d99b974166ec2875148",
    (11, "train", 40): "5eeb35939b80f207638fe814e9381e58068527ba59c60b6a36e944e2ca37f266",
}
# And of the PNG files of `generate_dataset(train=3, val=2, size=64, seed=5, workers=1)`, sorted by
# path and hashed in a row, from the same commit.
CLASSIC_PNG_PIN = "8be21a34cb76fe585e71ba25e1daa509b868439649354eec411a6214b61c2262"


def _digest(image: np.ndarray, annotations: list[dict]) -> str:
    payload = image.tobytes() + json.dumps(annotations, sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize(("seed", "split", "index"), sorted(CLASSIC_PIN))
def test_classic_reproduces_the_version_2_bytes(seed, split, index):
    image, annotations = render_sample(seed, split, index, 128, "classic")
    assert _digest(image, annotations) == CLASSIC_PIN[seed, split, index]


def test_a_classic_dataset_writes_the_version_2_pngs(tmp_path):
    kwargs = dict(train=3, val=2, size=64, seed=5, workers=1, progress=False)
    generate_dataset(tmp_path / "d", style="classic", **kwargs)
    digest = hashlib.sha256()
    for path in sorted((tmp_path / "d" / "images").rglob("*.png")):
        digest.update(path.read_bytes())
    assert digest.hexdigest() == CLASSIC_PNG_PIN
    info = json.loads((tmp_path / "d" / "annotations" / "instances_train.json").read_text())
    assert info["info"]["style"] == "classic" and info["info"]["images_per_family"] == {}


@pytest.mark.parametrize("style", STYLES)
def test_each_style_is_deterministic_whatever_the_worker_count(tmp_path, style):
    kwargs = dict(train=4, val=2, size=64, seed=3, progress=False, style=style)
    generate_dataset(tmp_path / "a", workers=1, **kwargs)
    generate_dataset(tmp_path / "b", workers=2, **kwargs)
    files = [
        {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        for root in (tmp_path / "a", tmp_path / "b")
    ]
    assert len(files[0]) == 8 and files[0] == files[1]
    info = json.loads(files[0]["annotations/instances_val.json"])["info"]
    assert info["style"] == style and info["generator"] == "handray.data.synthetic/3"


@pytest.mark.parametrize("style", STYLES)
def test_masks_are_the_label_map_and_visible_keypoints_lie_on_them(style):
    size, hands = 96, 0
    for index in range(1, 16):
        _, label, drawn = scene._compose(4, "train", index, size, style)
        image, annotations = render_sample(4, "train", index, size, style)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        shown = [i for i in range(1, len(drawn) + 1) if (label == i).any()]
        assert len(annotations) == len(shown)
        for i, annotation in zip(shown, annotations, strict=True):
            mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
            assert np.array_equal(mask, label == i)
            keypoints = np.array(annotation["keypoints"], np.float64).reshape(21, 3)
            visible = keypoints[:, 2] == 2
            assert ((keypoints[visible, :2] >= 0) & (keypoints[visible, :2] < size)).all()
            px = np.floor(keypoints[visible, :2]).astype(int)
            assert mask[px[:, 1], px[:, 0]].all()
            hands += 1
    assert hands >= 10


def test_styles_draw_different_images_of_one_scene():
    """Varied repaints classic's scene (same masks and keypoints) and differs from it wherever
    it draws a family; held-out draws another scene altogether."""
    repainted = 0
    for index in range(1, 13):
        classic = render_sample(9, "val", index, 64, "classic")
        varied = render_sample(9, "val", index, 64, "varied")
        held_out = render_sample(9, "val", index, 64, "held-out")
        assert classic[1] == varied[1]
        assert not np.array_equal(held_out[0], classic[0])
        assert not np.array_equal(held_out[0], varied[0])
        if scene.families(9, "val", index, "varied"):
            assert not np.array_equal(classic[0], varied[0])
            repainted += 1
        else:
            assert np.array_equal(classic[0], varied[0])
    assert repainted >= 6


def test_every_family_appears_in_a_varied_dataset_and_none_in_classic(tmp_path):
    summaries = {
        style: generate_dataset(
            tmp_path / style,
            train=60,
            val=0,
            size=32,
            seed=2,
            workers=2,
            progress=False,
            style=style,
        )
        for style in ("classic", "varied")
    }
    assert summaries["classic"].images_per_family == {}
    drawn = summaries["varied"].images_per_family
    assert set(drawn) == set(paint_variety.FAMILIES)
    for family, chance in paint_variety.FAMILIES.items():
        assert abs(drawn[family] / 60 - chance) < 0.17, (family, drawn[family])
    info = json.loads((tmp_path / "varied/annotations/instances_train.json").read_text())["info"]
    assert info["images_per_family"] == drawn and info["family_chances"] == paint_variety.FAMILIES


def test_families_change_the_pixels_they_claim():
    """Flat shading leaves each skin distractor one tone (before noise); an outline paints a
    layer's contour in its colour and leaves the labels alone; textures vary skin."""
    layer = np.zeros((20, 20), np.uint8)
    layer[5:15, 4:12] = 200
    ring = contour(layer, 1)
    assert ring.sum() == 2 * (10 + 8) - 4 and not ring[6:14, 5:11].any()
    assert not contour(np.full((8, 8), 200, np.uint8), 2).any()  # the border is no edge
    canvas = Canvas(np.zeros((20, 20, 3)), np.random.default_rng(0), outline=((1, 2, 3), 1))
    canvas.paint(Image.fromarray(layer), (200, 100, 50), label=3)
    assert (canvas.rgb[ring] == (1, 2, 3)).all() and (canvas.label[layer > 0] == 3).all()
    assert (canvas.rgb[(layer > 0) & ~ring] != (1, 2, 3)).any()
    rng = np.random.default_rng(0)
    for family in ("texture-pores", "texture-blotches"):
        texture = paint_variety.skin_texture(family, rng, 64)
        assert texture.std() > 0.02 and 0.5 < texture.mean() < 1.2
    flat = paint_variety.Paint(paint_variety.Variety(("flat-shading",)))
    assert flat.flat and flat.shade(lambda xs, ys: xs) is None
    assert paint_variety.Paint().shade(len) is len  # classic: the light as it was


def _colours(image: np.ndarray) -> int:
    return len(np.unique(image.reshape(-1, 3), axis=0))


def test_held_out_backgrounds_are_patterns_no_other_style_paints():
    """Patterns are a handful of flat colours repeating across the image; the other styles'
    backgrounds are one colour (plain) or many (gradient, noise, photo-like)."""
    assert not set(held_out_style.PATTERNS) & set(paint_variety.FAMILIES)
    rng = np.random.default_rng(1)
    for family in held_out_style.PATTERNS:
        image = held_out_style.pattern_background(rng, 96, family)
        assert 2 <= _colours(image) <= 4, family
        rows = [len(np.unique(image[y].reshape(-1, 3), axis=0)) for y in range(0, 96, 8)]
        assert max(rows) >= 2  # a pattern, not one band per row
    for family in ("background-noise", "background-photo"):
        assert _colours(paint_variety.background(family, rng, 96)) > 20
    assert _colours(paint_variety.background("background-plain", rng, 96)) == 1
    assert _colours(scene._background(rng, 96)) > 20
    with pytest.raises(ValueError, match="choose one of"):
        held_out_style.pattern_background(rng, 32, "pattern-plaid")


def test_held_out_hands_are_annotated_with_both_sides_and_cartoon_geometry(tmp_path):
    summary = generate_dataset(
        tmp_path / "h",
        train=0,
        val=40,
        size=64,
        seed=0,
        workers=2,
        progress=False,
        style="held-out",
    )
    assert min(summary.hands_per_class.values()) >= 5  # left and right both present
    assert set(summary.hands_per_view) == {"palm", "back"} and min(summary.hands_per_view.values())
    assert set(summary.images_per_family) <= set(held_out_style.PATTERNS)
    assert sum(summary.images_per_family.values()) == 40
    coco = json.loads((tmp_path / "h/annotations/instances_val.json").read_text())
    assert all(a["num_keypoints"] > 0 for a in coco["annotations"] if not a["iscrowd"])


def test_cartoon_fingers_are_shorter_thicker_and_keep_the_keypoint_order():
    from handray.data.hand_shape import keypoints, place, sample_pose

    shape = place(sample_pose(np.random.default_rng(3)), False, np.array([64.0, 64.0]), 60.0, 0.0)
    cartoon = held_out_style.cartoon_shape(shape)
    assert np.allclose(cartoon.joints[:, 0], shape.joints[:, 0])  # the same finger bases
    reach = np.linalg.norm(shape.joints[:, 3] - shape.joints[:, 0], axis=-1)
    cartoon_reach = np.linalg.norm(cartoon.joints[:, 3] - cartoon.joints[:, 0], axis=-1)
    assert (cartoon_reach < reach).all()
    assert (cartoon.radii == cartoon.radii[:, :1]).all()  # one width along each finger
    assert (cartoon.radii[:, 0] > shape.radii[:, 0]).all()
    assert np.allclose(keypoints(cartoon)[0], keypoints(shape)[0])


def test_unknown_style_is_refused_naming_the_choices(tmp_path):
    with pytest.raises(DatasetError, match="classic, varied, held-out"):
        generate_dataset(tmp_path / "d", train=1, val=1, progress=False, style="sketch")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="unknown style"):
        render_sample(0, "train", 1, 32, "sketch")


def test_the_cli_writes_a_held_out_dataset_and_refuses_an_unknown_style(tmp_path):
    out = tmp_path / "held"
    args = ["synth", str(out), "--style", "held-out", "--train", "0", "--val", "20"]
    result = subprocess.run(
        [HANDRAY, *args, "--size", "64", "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "annotations" / "instances_val.json").read_text())["info"]
    assert (info["style"], info["images"]) == ("held-out", 20)
    bad = subprocess.run(
        [HANDRAY, "synth", str(tmp_path / "x"), "--style", "sketch"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert all(name in bad.stderr for name in STYLES)
    assert not (tmp_path / "x").exists()


def test_varied_is_the_default_and_families_are_counted_per_image():
    assert synthetic.DEFAULT_STYLE == "varied"
    counts = collections.Counter(
        f for i in range(1, 201) for f in scene.families(0, "train", i, "varied")
    )
    for family, chance in paint_variety.FAMILIES.items():
        assert abs(counts[family] / 200 - chance) < 0.08, family
    assert all(scene.families(0, "train", i, "classic") == () for i in range(1, 5))
