"""handray: hand instance segmentation with Mask R-CNN on Keras 3, Ray Train, Tune and Serve.

import handray
predictor = handray.load("runs/demo/train")   # a checkpoint, run, sweep, .h5 or export
hands = predictor("photo.jpg")                 # Detections: boxes, names, scores, masks, ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from handray.core.version import VERSION

if TYPE_CHECKING:
    from handray.inference.predictor import ImagePredictor

__version__ = VERSION


def load(source: Any, **options: Any) -> ImagePredictor:
    """A predictor for a checkpoint, run or sweep folder, `last`, `best`, an `.h5` file (with
    `preset=`) or an export folder; see `handray.inference.load.load`. TensorFlow loads here,
    not at `import handray` (and XLA's compilation cache is named before it does)."""
    from handray.core.xla_cache import use_xla_cache
    from handray.inference.load import load as load_predictor

    use_xla_cache()

    return load_predictor(source, **options)
