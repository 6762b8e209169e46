"""The demo reuses its dataset only when today's generator made it as the demo asks."""

import json

from handray import demo
from handray.data.coco import annotation_file
from handray.data.synthetic import GENERATOR


def _write_info(folder, **changes):
    for split in ("train", "val"):
        info = {
            "generator": GENERATOR,
            "style": demo.DEMO_DATA["style"],
            "seed": demo.DEMO_DATA["seed"],
            "size": demo.DEMO_DATA["size"],
            "images": demo.DEMO_DATA[split],
            **changes,
        }
        path = annotation_file(folder, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"info": info, "images": [], "annotations": []}))


def test_data_is_reused_only_when_made_as_the_demo_asks(tmp_path, capsys):
    assert not demo._made_as_asked(tmp_path / "nothing")
    _write_info(tmp_path / "same")
    assert demo._made_as_asked(tmp_path / "same")
    for name, change in {
        "old": {"generator": "handray.data.synthetic/2", "style": None},
        "classic": {"style": "classic"},
        "fewer": {"images": 10},
    }.items():
        _write_info(tmp_path / name, **change)
        assert not demo._made_as_asked(tmp_path / name), name
    assert "made by another generator or style" in capsys.readouterr().out
