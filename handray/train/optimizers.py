"""Adam and AdamW whose update of each variable is one fused TensorFlow kernel.

Keras 3's Adam writes each variable's update as about twenty small ops, and its AdamW evaluates
the learning-rate schedule again for every variable it decays. For the `tiny` model's 178
variables that was over a quarter of the train step's graph (19,238 nodes, 13,668 with this
optimizer): seconds of tracing and graph optimisation in every new process (each test, each Ray
Train worker) and per-op overhead in every step. `ResourceApplyAdam` computes Keras' update
(bias correction included) in one kernel per variable, and the decoupled weight decay uses the
step's learning rate, computed once. The optimizer variables keep Keras' names and shapes, so
checkpoints load either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf


class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam, or AdamW with `weight_decay`: before its Adam update, each variable not
    excluded by `exclude_from_decay` (name fragments) shrinks by `learning_rate * weight_decay`
    of itself, as `keras.optimizers.AdamW` does."""

    def __init__(
        self,
        learning_rate,
        *,
        weight_decay: float = 0.0,
        exclude_from_decay: Sequence[str] = (),
        name: str = "adam",
    ):
        # Keras would apply its own (per-variable schedule) decay if given `weight_decay`.
        super().__init__(learning_rate, name=name)
        self.decoupled_weight_decay = weight_decay
        if exclude_from_decay:
            self.exclude_from_weight_decay(var_names=list(exclude_from_decay))

    def update_step(self, gradient, variable, learning_rate) -> None:
        dtype = variable.dtype
        rate = tf.cast(learning_rate, dtype)
        if self.decoupled_weight_decay and self._use_weight_decay(variable):
            variable.assign_sub(variable * (rate * self.decoupled_weight_decay))
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable),
            m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]),
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=rate,
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )


def _handle(variable) -> tf.Tensor:
    """The resource handle of a Keras or TensorFlow variable (under a distribution strategy's
    update, the replica's own copy)."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle
