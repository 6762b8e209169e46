"""How every normalisation layer of the model behaves, decided once from the config."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from keras import layers


@dataclass(frozen=True)
class Norm:
    """Batch norm, frozen (inference mode, the old model's default) unless `trainable`, with
    `momentum` setting how fast its moving statistics follow training; or group norm, which
    normalises each example on its own and so trains from scratch with tiny per-worker batches
    (and needs no statistics synchronised across workers)."""

    kind: Literal["batch", "group"] = "batch"
    trainable: bool = False
    momentum: float = 0.99
    groups: int = 16

    def __call__(self, x, name: str):
        if self.kind == "group":
            groups = math.gcd(self.groups, int(x.shape[-1]))
            return layers.GroupNormalization(groups=groups, epsilon=1e-3, name=name)(x)
        if self.trainable:
            return layers.BatchNormalization(momentum=self.momentum, name=name)(x)
        return FrozenBatchNormalization(momentum=self.momentum, name=name)(x)


class FrozenBatchNormalization(layers.BatchNormalization):
    """Batch norm that always normalises with its moving statistics and never moves them
    (matterport's `BatchNorm(training=False)`), while gamma and beta still learn.

    Passing `training=False` when the layer is wired in is not enough in Keras 3: calling the
    model with `training=True` overrides it, and the layer would use batch statistics.
    """

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)
