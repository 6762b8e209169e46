"""Exponential moving averages of the trained weights (`train.ema_decay`).

The last step's weights carry that step's noise; their average over the last few hundred steps
usually validates and predicts better (Polyak averaging). Training itself goes on from the raw
weights: the averages are shadows beside the model, swapped in for validation and for the
checkpoint's weights.h5, which evaluation, prediction and export read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import keras
import tensorflow as tf


class WeightAverages:
    """One shadow per trained variable, moved towards it after every optimizer update:

        shadow <- shadow - (1 - d) * (shadow - weight),  d = min(decay, (1 + n) / (10 + n))

    with n the optimizer's step count (this update included). The shadows start at the
    variables' values when created (a new run's start weights; on resume, the averages of
    weights.h5). Without the warm-up of d, an average over ~1/(1 - decay) steps would long be
    dominated by those, random ones in a run from scratch. Written as a difference, an update
    leaves the shadow of a frozen variable exactly equal to it.

    Only trained variables have shadows: batch norm's moving statistics are averages already.
    Create it inside the strategy's scope; under `MultiWorkerMirroredStrategy` every replica
    updates its own copy from its own (identical) weights, with no communication.
    """

    def __init__(self, variables: Sequence[keras.Variable], decay: float, steps: keras.Variable):
        self.variables, self.decay, self.steps = list(variables), decay, steps
        self.shadows = [
            tf.Variable(
                tf.identity(variable.value),
                trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                name="weight_average",
            )
            for variable in self.variables
        ]

    def update(self) -> None:
        """Move every shadow towards its variable; run after each `apply_gradients`, in the
        replica's (compiled) step."""
        n = tf.cast(self.steps.value, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + n) / (10.0 + n))
        for shadow, variable in zip(self.shadows, self.variables, strict=True):
            shadow.assign_sub((1.0 - decay) * (shadow - variable.value))

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The averages in the model's variables for the block; its raw weights, exactly,
        afterwards (also when the block raises)."""
        raw = [variable.numpy() for variable in self.variables]
        try:
            for variable, shadow in zip(self.variables, self.shadows, strict=True):
                variable.assign(shadow.read_value())
            yield
        finally:
            for variable, value in zip(self.variables, raw, strict=True):
                variable.assign(value)
