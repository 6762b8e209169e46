"""`handray.load`: a checkpoint or an export folder becomes a predictor that takes paths,
arrays, PIL images or lists of them and gives `Detections`; bad images are named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import handray
from handray.core.detections import Detections
from handray.core.errors import HandrayError
from handray.inference.load import ExportPredictor
from handray.inference.predictor import Predictor

pytestmark = pytest.mark.slow  # builds and loads models


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return handray.load(tiny_checkpoint, overrides={"serve.min_score": 0.0})


def test_a_path_an_array_and_a_pil_image_give_the_same_detections(predictor, photo_files):
    path = photo_files[0]
    pixels = np.asarray(Image.open(path).convert("RGB"))
    by_path, by_array, by_pil = (predictor(x) for x in (path, pixels, Image.open(path)))
    assert isinstance(by_path, Detections) and len(by_path) > 0
    for other in (by_array, by_pil):
        np.testing.assert_array_equal(other.boxes, by_path.boxes)
        np.testing.assert_array_equal(other.masks, by_path.masks)
    assert by_path.image_size == pixels.shape[:2]
    assert set(by_path.names) <= {"left_hand", "right_hand"}


def test_a_list_gives_one_detections_per_image_in_order(predictor, photo_files):
    found = predictor(photo_files)  # three images: a full batch of four is not needed
    assert [d.image_size for d in found] == [
        np.asarray(Image.open(p)).shape[:2] for p in photo_files
    ]
    for path, detections in zip(photo_files, found, strict=True):
        np.testing.assert_array_equal(predictor(path).boxes, detections.boxes)


def test_min_score_per_call_keeps_the_best_first_prefix(predictor, photo_files):
    everything = predictor(photo_files[1])
    cut = float(np.median(everything.scores))
    kept = predictor(photo_files[1], min_score=cut)
    assert len(kept) == int((everything.scores >= cut).sum())
    np.testing.assert_array_equal(kept.scores, everything.scores[: len(kept)])


def test_an_export_folder_loads_without_a_config(tiny_export, predictor, photo_files):
    exported = handray.load(tiny_export)
    assert isinstance(exported, ExportPredictor)
    assert exported.class_names == predictor.class_names
    from_export, from_checkpoint = exported(photo_files[2]), predictor(photo_files[2])
    assert from_export.image_size == from_checkpoint.image_size
    top = min(5, len(from_checkpoint))
    np.testing.assert_allclose(from_export.boxes[:top], from_checkpoint.boxes[:top], atol=0.05)
    np.testing.assert_allclose(from_export.scores[:top], from_checkpoint.scores[:top], atol=1e-4)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((10, 10, 2), np.uint8), r"shape \(10, 10, 2\)"),
        (np.zeros((10, 10, 3), np.float32), "dtype float32"),
        ("no/such/photo.jpg", "no/such/photo.jpg: no such image file"),
    ],
)
def test_a_bad_image_is_named(predictor, image, message):
    with pytest.raises(HandrayError, match=message):
        predictor(image)


def test_a_missing_source_says_what_load_takes(tmp_path):
    with pytest.raises(HandrayError, match="not found"):
        handray.load(tmp_path / "nothing")
