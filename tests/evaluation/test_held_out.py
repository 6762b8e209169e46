"""The held-out drawing style: class-agnostic AP whatever the classes are called (checked
against pycocotools on one category), its dataset generated once and reused, and `handray
evaluate` putting it into metrics.json beside the validation numbers."""

import json

import pytest

from handray import cli
from handray.data.coco import annotation_file, load_dataset
from handray.evaluation.held_out import STYLE, held_out_dataset
from handray.evaluation.metrics import STAT_NAMES, evaluate_agnostic
from tests.evaluation.test_metrics import (
    FakePredictor,
    _answers,
    _as_one_class,
    _noisy,
    _one_category,
    _pycocotools_stats,
    _random_dataset,
    _with_twins,
)


def test_agnostic_ap_agrees_with_pycocotools_whatever_the_classes_are_called(tmp_path):
    dataset = load_dataset(_random_dataset(tmp_path / "data", images=6, crowd=True), "val")
    answers = _answers(dataset, _noisy(seed=5))
    # The model's classes share no name with the dataset's categories: only "is it a hand" counts.
    predictor = FakePredictor(("palm_up", "palm_down"), _with_twins(answers))
    metrics = evaluate_agnostic(predictor, dataset, progress=False)
    one = _one_category(dataset.annotation_file, tmp_path / "one_category.json")
    for kind in ("bbox", "segm"):
        expected = _pycocotools_stats(one, _as_one_class(answers), dataset, kind)
        for name, value in zip(STAT_NAMES, expected, strict=True):
            wanted = pytest.approx(value) if value > -1 else None
            assert metrics[kind][name] == wanted, (kind, name)
        assert 0.0 < metrics[kind]["AP50"] < 1.0
    truth = json.loads(dataset.annotation_file.read_text())["annotations"]
    assert metrics["hands"] == sum(not a.get("iscrowd") for a in truth)
    assert metrics["images"] == 6 and metrics["images_per_s"] > 0


def test_held_out_set_is_generated_once_per_size_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("HANDRAY_CACHE", str(tmp_path / "cache"))
    folder = held_out_dataset(64, images=3, progress=False)
    assert folder.parent == tmp_path / "cache" and "64px" in folder.name
    coco = annotation_file(folder, "val")
    info = json.loads(coco.read_text())["info"]
    assert info["style"] == STYLE and info["size"] == 64 and info["images"] == 3
    assert len(load_dataset(folder, "val")) == 3
    written = coco.stat().st_mtime_ns
    assert held_out_dataset(64, images=3, progress=False) == folder
    assert coco.stat().st_mtime_ns == written  # reused, not made again
    other = held_out_dataset(96, images=3, progress=False)
    assert (
        other != folder
        and json.loads(annotation_file(other, "val").read_text())["info"]["size"] == 96
    )


def test_evaluate_command_reports_the_held_out_style(
    tiny_checkpoint, tmp_path, monkeypatch, no_xla, capsys
):
    monkeypatch.setenv("HANDRAY_CACHE", str(tmp_path / "cache"))
    data = _random_dataset(tmp_path / "data", images=2)
    args = ["evaluate", "--dataset", str(data), "--weights", str(tiny_checkpoint)]
    out = tmp_path / "eval"
    settings = ["--out", str(out), "--overlays", "1", "--set", "model.detection_min_confidence=0"]
    assert cli.main([*args, *settings, "--held-out", "2"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    held_out = json.loads((out / "metrics.json").read_text())["held_out"]
    assert held_out["style"] == STYLE and held_out["images"] == 2
    assert held_out["hands"] == sum(
        len(r.class_ids) for r in load_dataset(held_out["dataset"], "val").images
    )
    assert {"AP", "AP50"} <= set(held_out["segm"]) and {"AP", "AP50"} <= set(held_out["bbox"])
    assert "held-out style" in printed and held_out["dataset"] in printed
    assert (out / "held_out" / "overlays.png").is_file()

    # Any dataset folder can stand in for the generated style; 0 images leaves it out.
    other = _random_dataset(tmp_path / "other", images=1)
    assert cli.main([*args, *settings, "--held-out-dataset", str(other)]) == 0
    held_out = json.loads((out / "metrics.json").read_text())["held_out"]
    assert held_out["dataset"] == str(other.resolve()) and held_out["images"] == 1
    assert cli.main([*args, *settings, "--held-out", "0"]) == 0
    assert "held_out" not in json.loads((out / "metrics.json").read_text())
    capsys.readouterr()

    # A held-out folder that is not there fails before anything is evaluated or written.
    (out / "metrics.json").unlink()
    missing = tmp_path / "nowhere"
    assert cli.main([*args, *settings, "--held-out-dataset", str(missing)]) == 2
    assert f"{missing} does not exist" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()


def test_evaluate_command_rejects_a_negative_held_out_count(tmp_path, capsys):
    args = ["evaluate", "--dataset", str(tmp_path), "--weights", str(tmp_path)]
    with pytest.raises(SystemExit):
        cli.main([*args, "--held-out", "-1"])
    assert "--held-out: must be 0 or more, got -1" in capsys.readouterr().err
