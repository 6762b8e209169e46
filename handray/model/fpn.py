"""Feature pyramid (P2..P6) over the backbone stages, with matterport's layer names."""

from __future__ import annotations

from keras import layers


def build_fpn(stages: list, channels: int) -> list:
    """P2..P5 from C2..C5 by a top-down path with lateral 1x1 convolutions; P6 by subsampling P5.

    P6 only feeds the RPN (for the largest anchors), as in the old model.
    """
    c2, c3, c4, c5 = stages
    p5 = layers.Conv2D(channels, 1, name="fpn_c5p5")(c5)
    p4 = _merge(p5, c4, channels, 4)
    p3 = _merge(p4, c3, channels, 3)
    p2 = _merge(p3, c2, channels, 2)
    outputs = [
        layers.Conv2D(channels, 3, padding="same", name=f"fpn_p{level}")(p)
        for level, p in zip((2, 3, 4, 5), (p2, p3, p4, p5), strict=True)
    ]
    p6 = layers.MaxPooling2D(pool_size=1, strides=2, name="fpn_p6")(outputs[-1])
    return [*outputs, p6]


def _merge(coarser, lateral, channels: int, level: int):
    upsampled = layers.UpSampling2D(2, name=f"fpn_p{level + 1}upsampled")(coarser)
    projected = layers.Conv2D(channels, 1, name=f"fpn_c{level}p{level}")(lateral)
    return layers.Add(name=f"fpn_p{level}add")([upsampled, projected])
