"""One optimisation step of Mask R-CNN: losses under a tape, clipped gradients, update."""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from handray.model.maskrcnn import MaskRCNN


def make_train_step(
    model: MaskRCNN, optimizer: keras.optimizers.Optimizer, jit_compile: bool = False
) -> Callable[[dict], dict]:
    """A compiled function: batch -> loss dict, updating the model's trainable weights.

    Gradients are clipped by global norm (`train.gradient_clip_norm`) as in the old recipe.
    """
    clip_norm = model.config.train.gradient_clip_norm

    def step(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            losses = model.train_step_losses(batch)
        variables = model.trainable_variables
        gradients = tape.gradient(losses["loss"], variables)
        gradients, _ = tf.clip_by_global_norm(gradients, clip_norm)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return losses

    return tf.function(step, jit_compile=jit_compile)
