"""How every batch-norm layer of the model behaves, decided once from the config."""

from __future__ import annotations

from dataclasses import dataclass

from keras import layers


@dataclass(frozen=True)
class BatchNorm:
    """Frozen (inference mode, the old model's default) unless `trainable`; `momentum` sets
    how fast the moving statistics follow training, which matters for short CPU runs."""

    trainable: bool = False
    momentum: float = 0.99

    def __call__(self, x, name: str):
        norm = layers.BatchNormalization(momentum=self.momentum, name=name)
        return norm(x, training=None if self.trainable else False)
