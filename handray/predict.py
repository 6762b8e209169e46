"""`handray predict`: a quick look at what a model finds in a few image files, as text lines,
one JSON document, or overlay PNGs."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handray.config import MASK_THRESHOLD
from handray.errors import HandrayError
from handray.evaluate import coco_results, detect_batch
from handray.images import read_batches, read_image
from handray.visualize import draw_detection, save_png

if TYPE_CHECKING:
    from handray.model.maskrcnn import MaskRCNN


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
    model: MaskRCNN,
    paths: Sequence[str | os.PathLike],
    *,
    overlay_dir: str | os.PathLike | None = None,
    batch_size: int = 4,
    min_score: float | None = None,
    mask_threshold: float = MASK_THRESHOLD,
) -> list[dict[str, Any]]:
    """Detections per image file, JSON-ready: ``{"image", "width", "height", "predictions"}``
    with each prediction's roi (y1, x1, y2, x2), bbox (x, y, w, h), class, COCO RLE mask and,
    from a model with a keypoint head, keypoints [[x, y, score], ...] in the image's pixels.

    Detections score at least `min_score` (default: the model's own), masks are cut at
    `mask_threshold`. Images are turned upright by their EXIF orientation first; with
    `overlay_dir`, each one is also drawn to ``overlay_dir/<image stem>.png``.
    """
    class_names = model.class_names
    class_ids = range(1, len(class_names) + 1)
    records = []
    batches = read_batches(paths, batch_size, exif=True)
    for offset, images in zip(range(0, len(paths), batch_size), batches, strict=True):
        batch = paths[offset : offset + len(images)]
        for path, image, detection in zip(
            batch,
            images,
            detect_batch(
                model, images, batch_size, min_score=min_score, mask_threshold=mask_threshold
            ),
            strict=True,
        ):
            entries = coco_results(0, detection, class_ids)
            predictions = [
                {
                    "roi": [float(v) for v in roi],
                    "bbox": entry["bbox"],
                    "class_id": entry["category_id"],
                    "class_name": class_names[entry["category_id"] - 1],
                    "score": entry["score"],
                    "mask": entry["segmentation"],
                    **({"keypoints": points.tolist()} if len(points) else {}),
                }
                for roi, entry, points in zip(
                    detection["rois"], entries, _keypoints(detection), strict=True
                )
            ]
            height, width = image.shape[:2]
            records.append(
                {"image": str(path), "width": width, "height": height, "predictions": predictions}
            )
            if overlay_dir is not None:
                picture = draw_detection(image, detection, class_names)
                save_png(picture, Path(overlay_dir) / f"{Path(path).stem}.png")
    return records


def _keypoints(detection: dict[str, Any]) -> Any:
    """Each detection's keypoints [K, 3] (x, y, score); K = 0 when the model has none."""
    return detection.get("keypoints", [()] * len(detection["rois"]))


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
