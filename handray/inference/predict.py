"""`handray predict`: a quick look at what a model finds in a few image files, as text lines,
one JSON document, or overlay PNGs."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handray.core.errors import HandrayError
from handray.core.images import read_batches, read_image
from handray.core.records import detection_records
from handray.core.visualize import draw_detection, save_png

if TYPE_CHECKING:
    from handray.inference.predictor import Predictor


def check_inputs(
    paths: Sequence[str | os.PathLike], overlay_dir: str | os.PathLike | None = None
) -> None:
    """Decode every image once before the model is built, so a bad file fails in seconds
    and names itself; with `overlay_dir`, refuse inputs whose overlays would share a name."""
    if not paths:
        raise HandrayError("no images given")
    for path in paths:
        read_image(path)
    if overlay_dir is not None:
        shared = [stem for stem, n in Counter(Path(p).stem for p in paths).items() if n > 1]
        if shared:
            raise HandrayError(
                f"several images are named {shared[0]!r}; their overlays in {overlay_dir} "
                "would overwrite each other, so predict them in separate runs"
            )


def predict_files(
    predictor: Predictor,
    paths: Sequence[str | os.PathLike],
    *,
    overlay_dir: str | os.PathLike | None = None,
    min_score: float | None = None,
) -> list[dict[str, Any]]:
    """Detections per image file, JSON-ready: ``{"image", "width", "height", "predictions"}``
    with each prediction's record (`handray.core.records`, masks as COCO RLE).

    Detections score at least `min_score` (default: the predictor's `thresholds.min_score`).
    Images are turned upright by their EXIF orientation first; with `overlay_dir`, each one is
    also drawn to ``overlay_dir/<image stem>.png``.
    """
    records = []
    size = predictor.batch_size
    batches = read_batches(paths, size, exif=True)
    for offset, images in zip(range(0, len(paths), size), batches, strict=True):
        found = predictor.predict_batch(images, min_score)
        batch = paths[offset : offset + len(images)]
        for path, image, detections in zip(batch, images, found, strict=True):
            height, width = image.shape[:2]
            predictions = detection_records(detections, mask_format="rle")
            records.append(
                {"image": str(path), "width": width, "height": height, "predictions": predictions}
            )
            if overlay_dir is not None:
                picture = draw_detection(image, detections)
                save_png(picture, Path(overlay_dir) / f"{Path(path).stem}.png")
    return records


def format_predictions(records: Sequence[dict[str, Any]]) -> str:
    """One line per detection (image, class, score, roi), or per image without any."""
    lines = []
    for record in records:
        if not record["predictions"]:
            lines.append(f"{record['image']}  no detections")
        for p in record["predictions"]:
            roi = ", ".join(f"{v:.0f}" for v in p["roi"])
            lines.append(f"{record['image']}  {p['class_name']:<12} {p['score']:.3f}  roi [{roi}]")
    return "\n".join(lines)
