"""The demo reuses its dataset only when today's generator made it as the demo asks, and its
model card (shared with the reference run) says what the model saw and measured."""

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
    assert not demo._made_as_asked(tmp_path / "nothing", demo.DEMO_DATA)
    _write_info(tmp_path / "same")
    assert demo._made_as_asked(tmp_path / "same", demo.DEMO_DATA)
    for name, change in {
        "old": {"generator": "handray.data.synthetic/2", "style": None},
        "classic": {"style": "classic"},
        "fewer": {"images": 10},
    }.items():
        _write_info(tmp_path / name, **change)
        assert not demo._made_as_asked(tmp_path / name, demo.DEMO_DATA), name
    assert "made by another generator or style" in capsys.readouterr().out


def test_the_model_card_says_what_the_model_saw_and_measured(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    history = [{"epoch": 1, "epoch_seconds": 90.0}, {"epoch": 2, "epoch_seconds": 150.0}]
    (checkpoint / "state.json").write_text(
        json.dumps({"epoch": 2, "step": 400, "history": history})
    )
    steps, minutes = demo.trained_for(checkpoint)
    assert (steps, minutes) == (400, 4.0)
    metrics = {
        "segm": {"AP50": 0.61},
        "agnostic": {"segm": {"AP50": 0.72}},
        "handedness": {"accuracy": 0.83},
        "keypoints": {"pck@0.2": None},
        "held_out": {"segm": {"AP50": 0.44}},
    }
    summary, details = demo.model_card(
        "make demo", demo.DEMO_DATA, demo.DEMO_TRAINING, steps, minutes, metrics
    )
    assert summary == (
        "tiny, trained 4 min (400 steps) on 4,000 synthetic 128 px images (varied style) by "
        "make demo; validation mask AP50 0.61 with sides, 0.72 any side, side right for 0.83 "
        "of the hands found, PCK@0.2 -; held-out drawing style mask AP50 0.44"
    )
    assert details["trained_on"] == {"generator": GENERATOR, **demo.DEMO_DATA}
    assert details["recipe"]["train.steps_per_epoch"] == demo.DEMO_TRAINING["train.steps_per_epoch"]
    assert details["measured"]["held-out style mask AP50"] == 0.44
