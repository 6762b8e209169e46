"""Hands drawn in a style training never sees: the check that a model learned hands, not the
look of the generator it was trained on.

Validation images come from the same generator as the training images, so a model that learned
that generator's skin tones, shading and clutter scores well there and still misses hands drawn
another way. The held-out style (`generate_dataset(style="held-out")`: other palm and finger
geometry, other shading, another background family) is generated for evaluation only;
`handray evaluate` and the demo put its class-agnostic AP beside the validation numbers, under
"held_out" in metrics.json, so a loss of generality shows the day it happens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handray.data.coco import annotation_file, load_dataset
from handray.data.synthetic import GENERATOR, generate_dataset
from handray.evaluation.metrics import evaluate_agnostic

if TYPE_CHECKING:
    from handray.inference.predictor import Predictor

STYLE = "held-out"
IMAGES = 100  # enough hands (about 150) for AP50 to move by less than a few hundredths
SEED = 1


def cache_folder() -> Path:
    """Where generated evaluation sets are kept between runs: $HANDRAY_CACHE, else
    ~/.cache/handray."""
    return Path(os.environ.get("HANDRAY_CACHE") or Path.home() / ".cache" / "handray")


def held_out_dataset(
    size: int,
    *,
    images: int = IMAGES,
    seed: int = SEED,
    folder: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """The folder of the held-out style's `images` validation images of `size` pixels,
    generated on first use and reused after (the generator's version is in the default
    folder's name, so a changed generator makes a new set)."""
    version = GENERATOR.rsplit("/", 1)[-1]
    folder = Path(folder or cache_folder() / f"{STYLE}-v{version}-{size}px-{images}-seed{seed}")
    if not annotation_file(folder, "val").is_file():
        generate_dataset(
            folder,
            train=0,
            val=images,
            size=size,
            seed=seed,
            style=STYLE,
            overwrite=True,
            progress=progress,
        )
    return folder


def evaluate_held_out(
    predictor: Predictor,
    folder: str | os.PathLike,
    *,
    overlays: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Class-agnostic box and mask AP on the held-out style's validation split in `folder`:
    ``{"style", "dataset", "bbox", "segm", "images", "hands", "images_per_s"}``."""
    dataset = load_dataset(folder, "val")
    metrics = evaluate_agnostic(predictor, dataset, overlays=overlays, out=out, progress=progress)
    return {"style": STYLE, "dataset": str(Path(folder).resolve()), **metrics}
