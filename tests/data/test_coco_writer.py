import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from handray.core.masks import encode_mask
from handray.data.coco_writer import CocoWriter


def test_writer_assigns_integer_ids_and_pycocotools_loads_the_file(tmp_path):
    path = tmp_path / "annotations" / "instances_train.json"
    mask = np.zeros((8, 8), np.uint8)
    mask[1:4, 2:6] = 1
    with CocoWriter(path, [{"id": 1, "name": "hand"}], info={"note": "x"}) as writer:
        writer.add_image("a.png", 8, 8, [{**encode_mask(mask), "category_id": 1, "iscrowd": 0}])
        writer.add_image("b.png", 8, 8, [])
        writer.add_image("c.png", 8, 8, [{**encode_mask(mask), "category_id": 1, "iscrowd": 1}] * 2)
    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == [1, 2, 3]
    assert sorted(coco.getAnnIds()) == [1, 2, 3]
    assert [a["image_id"] for a in coco.loadAnns([1, 2, 3])] == [1, 3, 3]
    np.testing.assert_array_equal(coco.annToMask(coco.loadAnns(1)[0]), mask)
    assert writer.hands_per_category == {1: 3}
    assert writer.crowd == 2
    assert json.loads(path.read_text())["info"] == {"note": "x"}


def test_failure_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "instances_val.json"
    path.write_text("previous")
    with pytest.raises(RuntimeError), CocoWriter(path, [{"id": 1, "name": "hand"}]) as writer:
        writer.add_image("a.png", 4, 4, [])
        raise RuntimeError("conversion failed")
    assert path.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["instances_val.json"]
