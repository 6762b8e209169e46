"""Feature pyramid: P2..P6 sizes and names, and the top-down path against numpy."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from handray.config import PRESETS, load_config
from handray.model.anchors import pyramid_feature_shapes
from handray.model.backbone import build_backbone
from handray.model.fpn import build_fpn
from handray.model.norm import Norm

LEVEL_STRIDES = (4, 8, 16, 32, 64)
# matterport's names, which its weight files and the `heads`/`4+` layer selections use.
FPN_CONVOLUTIONS = {f"fpn_c{level}p{level}" for level in (2, 3, 4, 5)} | {
    f"fpn_p{level}" for level in (2, 3, 4, 5)
}
# The presets' distinct (backbone, FPN width) pairs.
SETTINGS = sorted(
    {(load_config(p).model.backbone, load_config(p).model.fpn_channels) for p in PRESETS}
)


def pyramid_model(stage_shapes: list[tuple[int, int, int]], channels: int) -> keras.Model:
    stages = [keras.Input(shape) for shape in stage_shapes]
    return keras.Model(stages, build_fpn(stages, channels))


@pytest.mark.parametrize(("architecture", "channels"), SETTINGS)
def test_levels_p2_to_p6_have_strides_4_to_64_and_fpn_channels(architecture, channels):
    """Each preset's backbone and width, on a 128 px input to keep the ResNets quick."""
    image = keras.Input((128, 128, 3))
    pyramid = build_fpn(build_backbone(image, architecture, Norm()), channels)
    assert [tuple(p.shape[1:]) for p in pyramid] == [
        (*shape, channels) for shape in pyramid_feature_shapes(128, LEVEL_STRIDES)
    ]
    assert [128 // p.shape[1] for p in pyramid] == list(LEVEL_STRIDES)


def test_layer_names_and_kernel_shapes_follow_the_weight_files():
    stage_channels = (8, 12, 16, 20)
    sizes = (16, 8, 4, 2)
    model = pyramid_model([(s, s, c) for s, c in zip(sizes, stage_channels, strict=True)], 6)
    convolutions = {layer.name: layer for layer in model.layers if isinstance(layer, layers.Conv2D)}
    assert set(convolutions) == FPN_CONVOLUTIONS
    for level, width in zip((2, 3, 4, 5), stage_channels, strict=True):
        assert tuple(convolutions[f"fpn_c{level}p{level}"].kernel.shape) == (1, 1, width, 6)
        assert tuple(convolutions[f"fpn_p{level}"].kernel.shape) == (3, 3, 6, 6)
    names = {layer.name for layer in model.layers}
    assert {"fpn_p6", "fpn_p5upsampled", "fpn_p4upsampled", "fpn_p3upsampled"} <= names
    assert {"fpn_p4add", "fpn_p3add", "fpn_p2add"} <= names


def test_top_down_path_matches_numpy():
    """With the 3x3 output convolutions made identities, each level is its lateral 1x1
    projection plus the coarser level upsampled by repetition; P6 takes every second pixel
    of P5."""
    rng = np.random.default_rng(0)
    shapes = [(16, 16, 3), (8, 8, 5), (4, 4, 7), (2, 2, 9)]
    channels = 4
    model = pyramid_model(shapes, channels)
    identity = np.zeros((3, 3, channels, channels), np.float32)
    identity[1, 1] = np.eye(channels)
    for level in (2, 3, 4, 5):
        model.get_layer(f"fpn_p{level}").set_weights([identity, np.zeros(channels, np.float32)])
    stages = [rng.normal(size=(2, *shape)).astype(np.float32) for shape in shapes]
    got = [p.numpy() for p in model(stages)]

    def lateral(level: int, c: np.ndarray) -> np.ndarray:
        kernel, bias = model.get_layer(f"fpn_c{level}p{level}").get_weights()
        return c @ kernel[0, 0] + bias

    def upsample(p: np.ndarray) -> np.ndarray:
        return p.repeat(2, axis=1).repeat(2, axis=2)

    p5 = lateral(5, stages[3])
    p4 = upsample(p5) + lateral(4, stages[2])
    p3 = upsample(p4) + lateral(3, stages[1])
    p2 = upsample(p3) + lateral(2, stages[0])
    for actual, expected in zip(got, [p2, p3, p4, p5, p5[:, ::2, ::2]], strict=True):
        np.testing.assert_allclose(actual, expected, atol=1e-5)
