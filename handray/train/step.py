"""One optimisation step of Mask R-CNN: losses under a tape, their weighted total, clipped
gradients, update.

The model gives its five losses; how much each counts, the L2 weight decay and the gradient
clip are the training recipe's (`train.loss_weights`, `train.weight_decay`,
`train.gradient_clip_norm`), so they live here. The same step serves one process and each
replica of a distributed run: Keras' optimizer sums gradients across replicas inside
`apply_gradients`, so each replica contributes its clipped gradient divided by the replica
count, and the update follows the mean gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from handray.config import Config
from handray.model import losses
from handray.model.maskrcnn import MaskRCNN


def recipe_losses(
    model: MaskRCNN, batch: dict[str, tf.Tensor], config: Config, training: bool = True
) -> dict[str, tf.Tensor]:
    """The model's losses and diagnostics of a batch, plus `weight_decay_loss` (unless AdamW,
    which decays the weights itself) and `loss`, their total weighted by `train.loss_weights`.

    `training=False` gives validation losses: batch norm uses its moving statistics.
    """
    train = config.train
    values = model.train_step_losses(batch, mini_masks=config.data.use_mini_mask, training=training)
    if train.optimizer != "adamw":
        values["weight_decay_loss"] = losses.weight_decay_loss(
            model.trainable_variables, train.weight_decay
        )
    weighted = [train.loss_weights[name] * values[name] for name in train.loss_weights]
    if "weight_decay_loss" in values:
        weighted.append(values["weight_decay_loss"])
    values["loss"] = tf.add_n(weighted)
    return values


def loss_gradients(
    model: MaskRCNN,
    optimizer: keras.optimizers.Optimizer,
    batch: dict[str, tf.Tensor],
    config: Config,
) -> tuple[dict[str, tf.Tensor], list[tf.Tensor]]:
    """Losses of a batch and the gradients of their total, clipped by global norm
    (`train.gradient_clip_norm`, as in the old recipe).

    Under mixed precision the loss is scaled before differentiation; the clip threshold is
    scaled alike, so clipping acts on the true gradient and the optimizer unscales afterwards.
    """
    with tf.GradientTape() as tape:
        values = recipe_losses(model, batch, config)
        scaled = optimizer.scale_loss(values["loss"])
    gradients = tape.gradient(scaled, model.trainable_variables)
    clip_norm = config.train.gradient_clip_norm
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        clip_norm = clip_norm * tf.cast(optimizer.dynamic_scale, tf.float32)
    gradients, _ = tf.clip_by_global_norm(gradients, clip_norm)
    return values, gradients


def make_train_step(
    model: MaskRCNN,
    optimizer: keras.optimizers.Optimizer,
    config: Config,
    jit_compile: bool = False,
    replicas: int = 1,
    after_update: Callable[[], None] | None = None,
) -> Callable[[dict], dict]:
    """A compiled function batch -> loss dict, updating the model's trainable weights; run it
    directly in one process or with `strategy.run` on each of `replicas` replicas.

    `jit_compile` XLA-compiles the losses and gradients; the update stays outside XLA, where
    cross-replica sums work. `after_update` runs in the same graph after the update, so it sees
    the new weights (the weight averages of `train.ema_decay`).
    """
    gradients_of = tf.function(
        lambda batch: loss_gradients(model, optimizer, batch, config),
        jit_compile=jit_compile,
        autograph=False,
    )

    def step(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        values, gradients = gradients_of(batch)
        if replicas > 1:
            gradients = [g / replicas for g in gradients]
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        if after_update is not None:
            after_update()
        return values

    return tf.function(step, autograph=False)
