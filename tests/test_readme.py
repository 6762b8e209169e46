"""README's Python snippet runs as written: `handray.load` on a run folder at the path the
README names, called on a photo at the path it names, gives `Detections`."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippet() -> str:
    """The code block under README's "In Python" heading."""
    text = README.read_text()
    section = text[text.index("### In Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_snippet_runs_as_written(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_checkpoint, tmp_path / "runs/demo/train" / tiny_checkpoint.name)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), np.uint8)).save("photo.jpg")
    scope: dict = {}
    exec(python_snippet(), scope)
    hands = scope["hands"]
    assert type(hands).__name__ == "Detections"
    assert hands.masks.shape[1:] == (90, 120)
    assert len(hands.names) == len(hands.scores) == len(hands.boxes)
    assert all(score >= 0.5 for score in hands.scores)  # serve.min_score, the default
