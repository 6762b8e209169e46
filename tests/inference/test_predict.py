"""`handray predict` and the image reading under it: any image file becomes upright RGB, bad
files are named before the model loads, and the JSON output has the documented keys."""

import functools
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from handray import cli
from handray.core.detections import Detections
from handray.core.errors import HandrayError
from handray.core.images import read_batches, read_image
from handray.core.visualize import draw_detection
from handray.inference import checkpoints as checkpoint
from handray.inference.predict import check_inputs, format_predictions

EXIF_ORIENTATION = 0x0112


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 200, 200),
        ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
        ("P", 7, None),
        ("I;16", 65535, 255),
        ("I;16", 257 * 100, 100),
    ],
)
def test_any_image_mode_becomes_uint8_rgb(tmp_path, mode, value, expected):
    path = tmp_path / "image.png"
    Image.new(mode, (5, 3), value).save(path)
    pixels = read_image(path)
    assert pixels.shape == (3, 5, 3) and pixels.dtype == np.uint8
    if expected is not None:
        np.testing.assert_array_equal(pixels[1, 2], np.broadcast_to(expected, 3))


def test_exif_orientation_is_applied_only_when_asked(tmp_path):
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored sideways: turn 90 degrees clockwise to view
    Image.new("RGB", (40, 20), (255, 0, 0)).save(path, exif=exif)
    assert read_image(path, exif=True).shape == (40, 20, 3)
    assert read_image(path).shape == (20, 40, 3)


def test_batches_come_in_order(tmp_path):
    paths = []
    for value in range(5):
        paths.append(tmp_path / f"{value}.png")
        Image.new("L", (4, 4), value).save(paths[-1])
    batches = list(read_batches(paths, batch_size=2))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [int(image[0, 0, 0]) for batch in batches for image in batch] == [0, 1, 2, 3, 4]


def test_bad_inputs_are_named(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4)).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    for bad, reason in [
        (tmp_path / "missing.png", "no such image file"),
        (corrupt, "cannot read it as an image"),
        (truncated, "cannot read it as an image"),
        (tmp_path, "is a folder"),
    ]:
        with pytest.raises(HandrayError, match=reason) as caught:
            check_inputs([good, bad])
        assert str(bad) in str(caught.value)
    (tmp_path / "other").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "other" / "good.jpg")
    check_inputs([good, tmp_path / "other" / "good.jpg"])
    with pytest.raises(HandrayError, match="several images are named 'good'"):
        check_inputs([good, tmp_path / "other" / "good.jpg"], overlay_dir=tmp_path / "out")


def test_overlays_draw_boxes_thinner_than_a_pixel():
    detections = Detections(
        boxes=np.array([[3.0011568, 27.668386, 3.0011568, 27.668386], [0, 0, 8, 8]], np.float32),
        class_ids=np.array([1, 2]),
        scores=np.array([0.9, 0.8], np.float32),
        masks=np.zeros((2, 16, 16), bool),
        class_names=("left", "right"),
    )
    picture = draw_detection(np.zeros((16, 16, 3), np.uint8), detections)
    assert picture.size == (16, 16)


def test_text_output_has_a_line_per_detection():
    records = [
        {"image": "a.png", "predictions": []},
        {
            "image": "b.png",
            "predictions": [
                {"class_name": "left_hand", "score": 0.91, "roi": [1.2, 2.0, 30.7, 40.0]},
                {"class_name": "right_hand", "score": 0.5, "roi": [0, 0, 5, 5]},
            ],
        },
    ]
    assert format_predictions(records).splitlines() == [
        "a.png  no detections",
        "b.png  left_hand    0.910  roi [1, 2, 31, 40]",
        "b.png  right_hand   0.500  roi [0, 0, 5, 5]",
    ]


def test_predict_json_and_overlays(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    # Plain graphs: compiling the heads with XLA takes longer than this check.
    plain = functools.partial(checkpoint.load_trained_model, jit_compile=False)
    monkeypatch.setattr(checkpoint, "load_trained_model", plain)
    rng = np.random.default_rng(0)
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(rng.integers(0, 65535, (48, 80), dtype=np.uint16)).save(gray16)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(rng.integers(0, 255, (70, 50, 4), dtype=np.uint8), "RGBA").save(rgba)
    out = tmp_path / "overlays"
    code = cli.main(
        [
            "predict",
            str(gray16),
            str(rgba),
            "--weights",
            str(tiny_checkpoint),
            "--json",
            "--min-score",
            "0",
            "--overlay",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    records = json.loads(captured.out)
    assert [(r["image"], r["width"], r["height"]) for r in records] == [
        (str(gray16), 80, 48),
        (str(rgba), 50, 70),
    ]
    predictions = [p for r in records for p in r["predictions"]]
    assert predictions, "an untrained model at min score 0 still reports boxes"
    for record in records:
        for p in record["predictions"]:
            old = {"roi", "bbox", "class_id", "class_name", "score", "mask"}
            assert set(p) == old | {"keypoints", "side_score"}
            assert p["class_name"] == ("left_hand", "right_hand")[p["class_id"] - 1]
            # The side's own probability: at least a coin toss; the score is p(hand) x p(side),
            # so never above it.
            assert 0.5 <= p["side_score"] <= 1.0 and p["score"] <= p["side_score"] + 1e-5
            y1, x1, y2, x2 = p["roi"]
            assert p["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
            assert mask_utils.decode(p["mask"]).shape == (record["height"], record["width"])
            points = np.array(p["keypoints"])  # 21 x (x, y, score) in the image's pixels
            assert points.shape == (21, 3)
            # Each keypoint lies in its detection's box (its roi rounded to 2 decimals), with a
            # score in [0, 1].
            assert (points[:, :2] >= np.array([x1, y1]) - 0.006).all()
            assert (points[:, :2] <= np.array([x2, y2]) + 0.006).all()
            assert ((points[:, 2] >= 0) & (points[:, 2] <= 1)).all()
    assert sorted(p.name for p in out.iterdir()) == ["gray16.png", "rgba.png"]


def test_predict_names_a_corrupt_file_before_loading_the_model(tmp_path, monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(checkpoint, "load_trained_model", never)
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_text("this is text")
    assert cli.main(["predict", str(good), str(corrupt), "--weights", "last"]) == 2
    assert f"error: {corrupt}: cannot read it as an image" in capsys.readouterr().err
