"""The ROI heads: the box head every model has, and the heads that run on its detections.

`ROI_HEADS` is the registration: a model builds each one whose `enabled(settings)` holds, in
this order, and loops over them in training and inference.
"""

from __future__ import annotations

from handray.config import ModelConfig
from handray.model.heads.base import GroundTruth, PixelFrame, RoiHead, RoiSample
from handray.model.heads.box import BoxHead
from handray.model.heads.keypoint import KeypointHead
from handray.model.heads.mask import MaskHead
from handray.model.heads.side import SideHead
from handray.model.norm import Norm

# The side head comes first: it labels each detection's class, which the mask head decodes.
ROI_HEADS: tuple[type[RoiHead], ...] = (SideHead, MaskHead, KeypointHead)


def build_roi_heads(settings: ModelConfig, norm: Norm) -> list[RoiHead]:
    """The heads a model with `settings` has, built."""
    return [head(settings, norm) for head in ROI_HEADS if head.enabled(settings)]


__all__ = [
    "ROI_HEADS",
    "BoxHead",
    "GroundTruth",
    "KeypointHead",
    "MaskHead",
    "PixelFrame",
    "RoiHead",
    "RoiSample",
    "SideHead",
    "build_roi_heads",
]
