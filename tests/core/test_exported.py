"""What the export's readers share (`handray.core.exported`): lossless pixels for its decoder
a clear refusal of a folder without an export, the choice among several folders and the model
card."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from handray.core.errors import HandrayError
from handray.core.exported import (
    MODEL_CARD,
    bmp_bytes,
    export_path,
    first_export,
    read_model_card,
)


def test_bmp_bytes_are_lossless():
    pixels = np.random.default_rng(1).integers(0, 256, (9, 13, 3), np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(bmp_bytes(pixels)))), pixels)


def test_a_folder_without_a_saved_model_is_refused(tmp_path):
    with pytest.raises(HandrayError, match="no SavedModel there"):
        export_path(tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(b"")
    assert export_path(tmp_path) == tmp_path.resolve()


def _fake_export(folder):
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"")
    return folder.resolve()


def test_the_first_folder_holding_an_export_is_chosen(tmp_path):
    demo, shipped = tmp_path / "runs" / "demo" / "model", tmp_path / "models" / "reference"
    assert first_export([demo, _fake_export(shipped)]) == shipped
    assert first_export([_fake_export(demo), shipped]) == demo
    assert first_export(str(demo)) == demo  # one folder, as before


def test_no_export_in_any_folder_names_every_folder_tried(tmp_path):
    with pytest.raises(HandrayError, match="none of .*first, .*second holds a SavedModel"):
        first_export([tmp_path / "first", tmp_path / "second"])
    with pytest.raises(HandrayError, match="empty list"):
        first_export([])


def test_the_model_card_is_read_and_a_broken_one_is_ignored(tmp_path):
    assert read_model_card(tmp_path) == {}
    (tmp_path / MODEL_CARD).write_text(json.dumps({"summary": "tiny, 90 min", "steps": 3}))
    assert read_model_card(tmp_path) == {"summary": "tiny, 90 min", "steps": 3}
    for broken in ("{not json", "[1, 2]"):
        (tmp_path / MODEL_CARD).write_text(broken)
        assert read_model_card(tmp_path) == {}
