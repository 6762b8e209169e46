"""What the export's readers share (`handray.core.exported`): lossless pixels for its decoder
and a clear refusal of a folder without an export."""

import io

import numpy as np
import pytest
from PIL import Image

from handray.core.errors import HandrayError
from handray.core.exported import bmp_bytes, export_path


def test_bmp_bytes_are_lossless():
    pixels = np.random.default_rng(1).integers(0, 256, (9, 13, 3), np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(bmp_bytes(pixels)))), pixels)


def test_a_folder_without_a_saved_model_is_refused(tmp_path):
    with pytest.raises(HandrayError, match="no SavedModel there"):
        export_path(tmp_path)
    (tmp_path / "saved_model.pb").write_bytes(b"")
    assert export_path(tmp_path) == tmp_path.resolve()
