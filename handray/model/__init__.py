"""The Mask R-CNN model: one concept per module, assembled in `maskrcnn.py`."""

from handray.model.maskrcnn import MaskRCNN, build_model

__all__ = ["MaskRCNN", "build_model"]
