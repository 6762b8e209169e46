"""ResNet backbones (C2..C5) with matterport's layer names, so old `.h5` files load by name.

Caffe-style bottleneck blocks as in the old model: the stride sits on the first 1x1 convolution,
every convolution has a bias, and batch norm is frozen (inference mode) unless `train.train_bn`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import keras
from keras import layers

from handray.model.norm import Norm


@dataclass(frozen=True)
class ResNetSpec:
    """Stem width, blocks per stage (2..5) and each stage's (1x1, 3x3, 1x1) filter counts."""

    stem: int
    blocks: tuple[int, int, int, int]
    filters: tuple[tuple[int, int, int], ...]


_WIDE = ((64, 64, 256), (128, 128, 512), (256, 256, 1024), (512, 512, 2048))
ARCHITECTURES = {
    "resnet50": ResNetSpec(64, (3, 4, 6, 3), _WIDE),
    "resnet101": ResNetSpec(64, (3, 4, 23, 3), _WIDE),
    # Small enough for CPU tests and demos at 128 px, same naming and structure.
    "tiny": ResNetSpec(
        32, (1, 2, 2, 1), ((16, 16, 64), (32, 32, 128), (48, 48, 192), (64, 64, 256))
    ),
}


def build_backbone(image: keras.KerasTensor, architecture: str, norm: Norm) -> list:
    """Stages C2..C5 of a ResNet applied to `image` (already mean-subtracted)."""
    spec = ARCHITECTURES[architecture]
    x = layers.ZeroPadding2D((3, 3), name="conv1_pad")(image)
    x = layers.Conv2D(spec.stem, 7, strides=2, name="conv1")(x)
    x = norm(x, "bn_conv1")
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    stages = []
    for stage, (blocks, filters) in enumerate(zip(spec.blocks, spec.filters, strict=True), start=2):
        for index in range(blocks):
            block = string.ascii_lowercase[index]  # a, b, c ...; ResNet-101 stage 4 runs a..w
            strides = 1 if stage == 2 or index > 0 else 2
            x = _bottleneck(x, filters, stage, block, strides, index == 0, norm)
        stages.append(x)
    return stages


def _bottleneck(
    x,
    filters: tuple[int, int, int],
    stage: int,
    block: str,
    strides: int,
    project: bool,
    norm: Norm,
):
    """One residual block; the first of a stage projects the shortcut (`..._branch1`)."""
    f1, f2, f3 = filters
    prefix = f"{stage}{block}"

    def conv_bn(y, filters_out: int, kernel: int, branch: str, stride: int = 1, relu: bool = True):
        y = layers.Conv2D(
            filters_out, kernel, strides=stride, padding="same", name=f"res{prefix}_branch{branch}"
        )(y)
        y = norm(y, f"bn{prefix}_branch{branch}")
        return layers.Activation("relu")(y) if relu else y

    y = conv_bn(x, f1, 1, "2a", stride=strides)
    y = conv_bn(y, f2, 3, "2b")
    y = conv_bn(y, f3, 1, "2c", relu=False)
    shortcut = conv_bn(x, f3, 1, "1", stride=strides, relu=False) if project else x
    y = layers.Add(name=f"res{prefix}_add")([y, shortcut])
    return layers.Activation("relu", name=f"res{prefix}_out")(y)
