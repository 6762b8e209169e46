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
        norm = layers.BatchNormalization(momentum=self.momentum, name=name)
        return norm(x, training=None if self.trainable else False)
