"""`Detections`: one image's detections in its own pixels, the one contract that `detect`, the
export's reply, `handray predict`, evaluation, the HTTP server and the Python API produce or
read.

Beside boxes, classes, scores and masks, a detection carries whatever the model's ROI heads add
(keypoints today), as arrays whose first axis is the detection. Batches travel as zero-padded
rows (`num_detections [B]`, `boxes [B, N, 4]`, ..., `masks [B, N, Hmax, Wmax]`,
`image_sizes [B, 2]`, and each head's `[B, N, ...]`); `image_rows` cuts one image out of them
with plain slicing, so it serves NumPy arrays (the server) and tensors in the export's graph
alike, and needs no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The keys of a padded batch that are not per-detection head outputs.
BATCH_KEYS = ("num_detections", "boxes", "class_ids", "scores", "masks", "image_sizes")


@dataclass(frozen=True)
class Detections:
    """One image's detections, best first.

    boxes [N, 4] (y1, x1, y2, x2 in the image's pixels), class_ids [N] (1..K), scores [N],
    masks [N, H, W] bool, `class_names` the model's classes without background (class id k is
    `class_names[k - 1]`), and `extras`: each further head's output [N, ...] by name, e.g.
    `keypoints` [N, 21, 3] (x, y in the image's pixels, score).
    """

    boxes: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    class_names: tuple[str, ...]
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def image_size(self) -> tuple[int, int]:
        """The image's (height, width)."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @property
    def names(self) -> list[str]:
        """Each detection's class name."""
        return [self.class_names[int(k) - 1] for k in self.class_ids]

    @property
    def keypoints(self) -> np.ndarray | None:
        """[N, K, 3] from a model with a keypoint head, else None."""
        return self.extras.get("keypoints")

    def select(self, which: Any) -> Detections:
        """The detections a boolean mask or index array picks, in that order."""
        return Detections(
            boxes=self.boxes[which],
            class_ids=self.class_ids[which],
            scores=self.scores[which],
            masks=self.masks[which],
            class_names=self.class_names,
            extras={name: values[which] for name, values in self.extras.items()},
        )

    def at_least(self, min_score: float) -> Detections:
        """The detections scoring `min_score` or more."""
        return self.select(self.scores >= min_score)

    @classmethod
    def from_rows(cls, rows: Mapping[str, Any], class_names: tuple[str, ...]) -> Detections:
        """From one image's rows (`image_rows`), as NumPy arrays (copied only where the dtype
        changes); masks as bool."""
        arrays = {key: np.asarray(value) for key, value in rows.items()}
        return cls(
            boxes=arrays["boxes"].astype(np.float32, copy=False),
            class_ids=arrays["class_ids"].astype(np.int64, copy=False),
            scores=arrays["scores"].astype(np.float32, copy=False),
            masks=arrays["masks"].astype(bool, copy=False),
            class_names=tuple(class_names),
            extras={key: value for key, value in arrays.items() if key not in BATCH_KEYS},
        )


def image_rows(batch: Mapping[str, Any], index: int, count: Any = None) -> dict[str, Any]:
    """Image `index` of a padded batch: its first `count` detections (default: all it has) of
    every per-detection output, masks cut to its own height and width."""
    if count is None:
        count = batch["num_detections"][index]
    height, width = batch["image_sizes"][index][0], batch["image_sizes"][index][1]
    rows = {
        key: value[index, :count]
        for key, value in batch.items()
        if key not in ("num_detections", "image_sizes", "masks")
    }
    rows["masks"] = batch["masks"][index, :count, :height, :width]
    return rows
