"""handray: hand instance segmentation with Mask R-CNN on Keras 3, Ray Train, Tune and Serve."""

__version__ = "0.1.0"
