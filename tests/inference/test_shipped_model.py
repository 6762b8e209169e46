"""The reference model the repository ships (models/reference, `make reference --ship`): small
enough to ship, described by its model card, and as good on the card's own validation images as
the card says, run as a user runs it (`handray evaluate --weights models/reference`)."""

import json
from pathlib import Path

import pytest

from handray import cli
from handray.core.exported import read_model_card
from handray.data.synthetic import generate_dataset

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "reference"
MAX_BYTES = 20_000_000  # issue 21: reference weights ship in the repository up to 20 MB
IMAGES = 60  # the first images of the card's validation split


def test_the_shipped_model_is_small_and_carries_its_card():
    size = sum(path.stat().st_size for path in SHIPPED.rglob("*") if path.is_file())
    assert 0 < size <= MAX_BYTES, size
    card = read_model_card(SHIPPED)
    assert card["made_by"] == "make reference" and card["summary"].startswith("tiny, trained")
    assert card["steps"] > 0 and card["trained_on"]["train"] > 0
    assert (SHIPPED / "saved_model.pb").is_file() and (SHIPPED / "handray.yaml").is_file()


@pytest.mark.slow
def test_the_shipped_model_finds_hands_as_its_card_says(tmp_path, capsys):
    """`handray evaluate --weights models/reference`, as a user checks the model."""
    card = read_model_card(SHIPPED)
    data = card["trained_on"]
    generate_dataset(
        tmp_path / "data",
        train=0,
        val=IMAGES,
        size=data["size"],
        seed=data["seed"],
        style=data["style"],
        progress=False,
    )
    args = ["evaluate", "--weights", str(SHIPPED), "--dataset", str(tmp_path / "data")]
    code = cli.main([*args, "--out", str(tmp_path / "eval"), "--held-out", "0"])
    assert code == 0, capsys.readouterr().err
    assert "config:  the export's config (preset tiny" in capsys.readouterr().out
    measured = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert measured["images"] == IMAGES
    # The card measured all of its validation split; these are its first images.
    wanted = card["measured"]["any side mask AP50"] - 0.1
    assert measured["agnostic"]["segm"]["AP50"] >= wanted


def test_an_export_takes_no_other_config(tmp_path, capsys):
    generate_dataset(tmp_path, train=0, val=1, progress=False)
    args = ["evaluate", "--weights", str(SHIPPED), "--dataset", str(tmp_path)]
    assert cli.main([*args, "--set", "serve.min_score=0.2"]) == 2
    assert "is an export, which runs with its own config" in capsys.readouterr().err
