"""`handray.load`: a predictor from whatever a user has, a checkpoint, a run or sweep folder,
`last`/`best`, an old `.h5` with its preset, or an export folder.

Both kinds of predictor take the same images (paths, arrays, PIL images, or a list of them) and
give the same `Detections`; an export runs its own graph, so it needs no handray config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from handray.core.detections import Detections, image_rows
from handray.core.exported import ExportedModel, bmp_bytes, holds_export
from handray.inference.checkpoints import DEFAULT_STORAGE, load_trained_model
from handray.inference.predictor import ImagePredictor, Predictor
from handray.inference.thresholds import Thresholds


class ExportPredictor(ImagePredictor):
    """An export folder (`handray export`) run in this process, called like `Predictor`."""

    def __init__(self, model_dir: str | os.PathLike, batch_size: int = 4):
        self.exported = ExportedModel(model_dir)
        self.batch_size = batch_size
        # An export knows the score a person is shown; evaluating it keeps every detection the
        # graph returns (at most `detection_max_instances` per image), as AP wants.
        self.thresholds = Thresholds(
            min_score=self.exported.min_score,
            evaluation_min_score=0.0,
            mask=self.exported.mask_threshold,
        )

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.exported.class_names

    def predict_batch(
        self, images: list[np.ndarray], min_score: float | None = None
    ) -> list[Detections]:
        """Detections of RGB arrays, sent to the export as lossless BMP bytes."""
        score = self.thresholds.min_score if min_score is None else min_score
        batch = self.exported.run(
            [bmp_bytes(image) for image in images], score, self.thresholds.mask
        )
        return [
            Detections.from_rows(image_rows(batch, index), self.class_names)
            for index in range(len(images))
        ]


def load(
    source: str | os.PathLike,
    *,
    preset: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    storage: str | os.PathLike = DEFAULT_STORAGE,
    batch_size: int = 4,
) -> ImagePredictor:
    """A predictor for `source`: an export folder, or anything `--weights` takes (a checkpoint,
    run or sweep folder, `last`, `best`, or an `.h5` file with `preset`, a preset name or config
    YAML, saying its architecture). `overrides` are config values (`{"serve.min_score": 0.3}`).
    """
    if holds_export(source):
        return ExportPredictor(Path(source).expanduser(), batch_size)
    model, config, _ = load_trained_model(source, preset, overrides, storage)
    return Predictor(model, Thresholds.from_config(config), batch_size)
