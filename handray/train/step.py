"""One optimisation step of Mask R-CNN: losses under a tape, clipped gradients, update.

The same step serves one process and each replica of a distributed run: Keras' optimizer sums
gradients across replicas inside `apply_gradients`, so each replica contributes its clipped
gradient divided by the replica count, and the update follows the mean gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from handray.model.maskrcnn import MaskRCNN


def loss_gradients(
    model: MaskRCNN, optimizer: keras.optimizers.Optimizer, batch: dict[str, tf.Tensor]
) -> tuple[dict[str, tf.Tensor], list[tf.Tensor]]:
    """Losses of a batch and the gradients of their total, clipped by global norm
    (`train.gradient_clip_norm`, as in the old recipe).

    Under mixed precision the loss is scaled before differentiation; the clip threshold is
    scaled alike, so clipping acts on the true gradient and the optimizer unscales afterwards.
    """
    with tf.GradientTape() as tape:
        losses = model.train_step_losses(batch)
        scaled = optimizer.scale_loss(losses["loss"])
    gradients = tape.gradient(scaled, model.trainable_variables)
    clip_norm = model.config.train.gradient_clip_norm
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        clip_norm = clip_norm * tf.cast(optimizer.dynamic_scale, tf.float32)
    gradients, _ = tf.clip_by_global_norm(gradients, clip_norm)
    return losses, gradients


def make_train_step(
    model: MaskRCNN,
    optimizer: keras.optimizers.Optimizer,
    jit_compile: bool = False,
    replicas: int = 1,
) -> Callable[[dict], dict]:
    """A compiled function batch -> loss dict, updating the model's trainable weights; run it
    directly in one process or with `strategy.run` on each of `replicas` replicas.

    `jit_compile` XLA-compiles the losses and gradients; the update stays outside XLA, where
    cross-replica sums work.
    """
    gradients_of = tf.function(
        lambda batch: loss_gradients(model, optimizer, batch), jit_compile=jit_compile
    )

    def step(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        losses, gradients = gradients_of(batch)
        if replicas > 1:
            gradients = [g / replicas for g in gradients]
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return losses

    return tf.function(step)
