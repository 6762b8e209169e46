"""Detections into JSON records (`handray.core.records`): the old reply's keys, masks that decode
back to themselves in every format, and each extra head output under its name."""

import base64
import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from handray.core.detections import Detections
from handray.core.records import detection_records


def one_hand(**extras) -> Detections:
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:35] = True
    return Detections(
        boxes=np.array([[5.0, 10.0, 20.0, 35.0]], np.float32),
        class_ids=np.array([2]),
        scores=np.array([0.875], np.float32),
        masks=mask[None],
        class_names=("left_hand", "right_hand"),
        extras=extras,
    )


def test_records_keep_the_old_keys_and_masks_decode_back():
    detections = one_hand()
    mask = detections.masks[0]
    (png,) = detection_records(detections, "png")
    assert png == {
        "roi": [5.0, 10.0, 20.0, 35.0],
        "class_id": 2,
        "class_name": "right_hand",
        "score": 0.875,
        "mask": png["mask"],
        "bbox": [10.0, 5.0, 25.0, 15.0],
    }
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(png["mask"]))))
    assert decoded.shape == mask.shape and set(np.unique(decoded)) == {0, 255}
    np.testing.assert_array_equal(decoded == 255, mask)
    (rle,) = detection_records(detections, "rle")
    np.testing.assert_array_equal(mask_utils.decode(rle["mask"]).astype(bool), mask)
    assert len(rle["mask"]["counts"]) < len(png["mask"])
    (none,) = detection_records(detections, "none")
    assert none["mask"] is None
    with pytest.raises(ValueError, match="mask_format 'svg'"):
        detection_records(detections, "svg")


def test_extra_outputs_are_named_rounded_and_can_be_left_out():
    points = np.array([[[12.3456789, 7.5, 0.123456789]] * 21], np.float32)
    (record,) = detection_records(one_hand(keypoints=points), "none")
    assert record["keypoints"] == [pytest.approx([12.34568, 7.5, 0.12346], abs=1e-9)] * 21
    (left_out,) = detection_records(one_hand(keypoints=points), "none", leave_out=("keypoints",))
    assert "keypoints" not in left_out
    (no_head,) = detection_records(one_hand(keypoints=np.zeros((1, 0, 3), np.float32)), "none")
    assert "keypoints" not in no_head
