"""ResNet backbones: stage shapes and strides, and the layer names old weight files load by."""

from __future__ import annotations

import math
import string

import keras
import pytest
from keras import layers

from handray.model.anchors import pyramid_feature_shapes
from handray.model.backbone import ARCHITECTURES, build_backbone
from handray.model.norm import Norm

STAGE_STRIDES = (4, 8, 16, 32)
# Small inputs keep the ResNets quick to build; the tiny one is run at its preset's size.
SIZES = {"tiny": 128, "resnet50": 64, "resnet101": 64}


def backbone(architecture: str, size: int) -> tuple[keras.Model, list]:
    image = keras.Input((size, size, 3))
    stages = build_backbone(image, architecture, Norm())
    return keras.Model(image, stages), stages


def expected_convolutions(architecture: str) -> set[str]:
    """matterport's names: conv1, then res{stage}{block}_branch{2a,2b,2c}, plus _branch1 on
    each stage's first block."""
    names = {"conv1"}
    for stage, blocks in zip((2, 3, 4, 5), ARCHITECTURES[architecture].blocks, strict=True):
        for block in string.ascii_lowercase[:blocks]:
            names |= {f"res{stage}{block}_branch{b}" for b in ("2a", "2b", "2c")}
        names.add(f"res{stage}a_branch1")
    return names


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_stages_have_the_strides_and_widths_of_their_spec(architecture):
    size = SIZES[architecture]
    _, stages = backbone(architecture, size)
    widths = [filters[-1] for filters in ARCHITECTURES[architecture].filters]
    assert [tuple(s.shape[1:]) for s in stages] == [
        (size // stride, size // stride, width)
        for stride, width in zip(STAGE_STRIDES, widths, strict=True)
    ]


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_layer_names_follow_matterports_weight_files(architecture):
    model, _ = backbone(architecture, SIZES[architecture])
    convolutions = {layer.name for layer in model.layers if isinstance(layer, layers.Conv2D)}
    assert convolutions == expected_convolutions(architecture)
    norms = {layer.name for layer in model.layers if isinstance(layer, layers.BatchNormalization)}
    assert norms == {
        "bn_conv1" if name == "conv1" else "bn" + name.removeprefix("res") for name in convolutions
    }


def test_resnet101_stage_4_runs_blocks_a_to_w():
    assert expected_convolutions("resnet101") >= {"res4w_branch2c", "res4a_branch1"}
    assert "res4x_branch2a" not in expected_convolutions("resnet101")
    model, _ = backbone("resnet101", SIZES["resnet101"])
    assert model.get_layer("res4w_branch2c").filters == 1024


def test_stride_sits_on_the_first_1x1_convolution_and_every_convolution_has_a_bias():
    model, _ = backbone("tiny", SIZES["tiny"])
    for layer in model.layers:
        if not isinstance(layer, layers.Conv2D) or layer.name == "conv1":
            continue
        stage, block, branch = layer.name[3], layer.name[4], layer.name.split("branch")[1]
        downsamples = stage != "2" and block == "a" and branch in ("2a", "1")
        assert layer.strides == ((2, 2) if downsamples else (1, 1)), layer.name
        assert layer.use_bias, layer.name
    assert model.get_layer("conv1").strides == (2, 2)


@pytest.mark.parametrize("size", [100, 72])
def test_stage_sizes_round_up_as_the_anchors_assume(size):
    """Anchor grids are computed from ceil(size / stride); the network must agree."""
    _, stages = backbone("tiny", size)
    shapes = [tuple(s.shape[1:3]) for s in stages]
    assert shapes == [(math.ceil(size / stride),) * 2 for stride in STAGE_STRIDES]
    assert shapes == pyramid_feature_shapes(size, STAGE_STRIDES)
