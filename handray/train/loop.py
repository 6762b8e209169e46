"""The per-worker training loop: one epoch after another, a checkpoint and a report each.

Keras 3's `model.fit` fails under `MultiWorkerMirroredStrategy` on TF 2.21, so this is a custom
loop: a `tf.function` step run on every replica with `strategy.run`, gradients summed across
workers by the optimizer, losses averaged for reporting. The same code runs in one process
under the default strategy (tests, notebooks) and on each Ray Train worker (`trainer.py`),
which only supplies the strategy and what to do with each epoch's report.

The recipe is the old model's: SGD with momentum, gradient clipping, L2 weight decay in the
loss, plus a linear warm-up, step decay, and staged training (heads, then `4+`, then `all`).
Optional: a cosine decay to zero instead of the steps (`train.lr_schedule`), and averaged
weights for validation and checkpoints (`train.ema_decay`, `averaging.py`).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import tensorflow as tf

from handray.config import Config, TrainConfig, with_overrides
from handray.core.errors import HandrayError
from handray.data.coco import CocoDataset, load_dataset
from handray.data.pipeline import build_dataset
from handray.inference.checkpoints import (
    WEIGHTS_FILE,
    TrainingState,
    read_state,
    resolve_checkpoint,
)
from handray.model import build_model
from handray.model.maskrcnn import MaskRCNN
from handray.model.precision import computing_in
from handray.model.weights import (
    LoadReport,
    coco_weights_path,
    imagenet_weights_path,
    load_imagenet_weights,
    load_weights,
)
from handray.train.averaging import WeightAverages
from handray.train.checkpoint import restore_optimizer, restore_raw_weights, write_checkpoint
from handray.train.optimizers import FusedAdam
from handray.train.replica_sync import sync_checker
from handray.train.step import make_train_step, recipe_losses

Report = Callable[[dict[str, float], Path | None], None]


@dataclass
class WorkerContext:
    """What the loop needs from whoever runs it: the strategy, whether this worker writes
    checkpoints and logs (the chief), and where each epoch's metrics and checkpoint go."""

    strategy: tf.distribute.Strategy = field(default_factory=tf.distribute.get_strategy)
    is_chief: bool = True
    report: Report = lambda metrics, checkpoint: None
    tensorboard_dir: Path | None = None
    cpu_threads: int | None = None  # input-pipeline threads; None: all cores
    log: Callable[[str], None] = lambda line: print(line, flush=True)


class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate: a linear ramp from a tenth of `rate` over `warmup_steps`, then `rate`
    times `factor` for each boundary (optimizer step) passed."""

    def __init__(self, rate: float, warmup_steps: int, boundaries: list[int], factor: float):
        self.rate, self.warmup_steps = rate, warmup_steps
        self.boundaries, self.factor = list(boundaries), factor

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        passed = tf.reduce_sum(
            tf.cast(step >= tf.constant([*self.boundaries, math.inf]), tf.float32)
        )
        return _warmed_up(self.rate * tf.pow(self.factor, passed), step, self.warmup_steps)

    def get_config(self) -> dict:
        return {
            "rate": self.rate,
            "warmup_steps": self.warmup_steps,
            "boundaries": self.boundaries,
            "factor": self.factor,
        }


class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate: the same linear ramp over `warmup_steps`, then half a cosine from `rate`
    down to 0 at `total_steps` (the run's end), and 0 after."""

    def __init__(self, rate: float, warmup_steps: int, total_steps: int):
        self.rate, self.warmup_steps, self.total_steps = rate, warmup_steps, total_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        rate = self.rate * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return _warmed_up(rate, step, self.warmup_steps)

    def get_config(self) -> dict:
        return {
            "rate": self.rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


def _warmed_up(rate: tf.Tensor, step: tf.Tensor, warmup_steps: int) -> tf.Tensor:
    """`rate` scaled by the warm-up: from a tenth at step 0 linearly to all of it."""
    if not warmup_steps:
        return rate
    return rate * tf.minimum(1.0, 0.1 + 0.9 * step / warmup_steps)


def make_optimizer(train: TrainConfig) -> keras.optimizers.Optimizer:
    """`train.optimizer` on the warm-up and `train.lr_schedule`'s decay; loss-scaled for
    mixed precision.

    SGD with momentum is the old recipe (for fine-tuning old weights); Adam and AdamW train
    a model from scratch far faster on small CPU runs (benchmarks/README.md). Both are
    `optimizers.FusedAdam`: Keras' update, one kernel per variable.
    """
    if train.lr_schedule == "cosine":
        schedule = WarmupCosineDecay(
            train.learning_rate, train.warmup_steps, train.epochs * train.steps_per_epoch
        )
    else:
        schedule = WarmupStepDecay(
            train.learning_rate,
            train.warmup_steps,
            [epoch * train.steps_per_epoch for epoch in train.lr_decay_epochs],
            train.lr_decay_factor,
        )
    # Fixed names: Keras numbers unnamed optimizers (sgd_1, ...) and checkpoints store their
    # variables by path.
    if train.optimizer == "adamw":
        optimizer = FusedAdam(
            schedule,
            weight_decay=train.weight_decay,
            exclude_from_decay=["gamma", "beta", "bias"],
            name="adamw",
        )
    elif train.optimizer == "adam":
        optimizer = FusedAdam(schedule, name="adam")
    else:
        optimizer = keras.optimizers.SGD(schedule, momentum=train.momentum, name="sgd")
    if train.precision == "mixed_float16":  # "auto" never picks float16
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, name="loss_scale")
    return optimizer


def stage_at(train: TrainConfig, epoch: int) -> str:
    """The layer selection trained in `epoch` (0-based) under `train.stages` or `train.layers`."""
    for selection, last_epoch in train.stages.items():
        if epoch < last_epoch:
            return selection
    return list(train.stages)[-1] if train.stages else train.layers


def start_weights_file(spec: str | None, config: Config) -> Path | None:
    """The file a new run starts from: None for `none`, the cached (or downloaded) ImageNet or
    COCO file, or the weights of a checkpoint/run folder or an `.h5` path."""
    if spec in (None, "none"):
        return None
    if spec == "imagenet":
        return imagenet_weights_path(config.model.backbone)
    if spec == "coco":
        return coco_weights_path()
    path = resolve_checkpoint(spec)
    return path / WEIGHTS_FILE if path.is_dir() else path


def load_start_weights(model: MaskRCNN, spec: str | None, config: Config) -> LoadReport | None:
    path = start_weights_file(spec, config)
    if path is None:
        return None
    if spec == "imagenet":
        return load_imagenet_weights(model, path)
    return load_weights(model, path)


def train_worker(
    config: Config,
    dataset_dir: str | Path,
    context: WorkerContext | None = None,
    *,
    start_weights: str | None = None,
    resume_from: str | Path | None = None,
) -> TrainingState:
    """Train until `config.train.epochs`, from `resume_from` (a checkpoint folder: weights,
    optimizer, epoch) or else from `start_weights`; returns where training ended.

    Each epoch ends with `context.report(metrics, checkpoint)`; the chief's checkpoint folder is
    temporary and removed after the report returns (Ray Train copies it to storage first).
    """
    context = context or WorkerContext()
    strategy = context.strategy
    state = read_state(resume_from) if resume_from else TrainingState(history=[])
    state.sessions += 1
    if state.epoch >= config.train.epochs:
        context.log(f"already trained {state.epoch} epochs of {config.train.epochs}; nothing to do")
        return state
    train_set = load_dataset(dataset_dir, "train")
    val_set = load_dataset(dataset_dir, "val")
    with computing_in(config.train.precision) as precision:
        # Same config, same start: sweep trials then differ only by the values they sampled.
        keras.utils.set_random_seed(config.data.seed)
        with strategy.scope():
            model = build_model(config)
            optimizer = make_optimizer(config.train)
            trained = _stage_variables(model, config.train)
            optimizer.build(trained)
            if resume_from:
                load_weights(model, Path(resume_from) / WEIGHTS_FILE)
                restore_optimizer(optimizer, resume_from)
            elif (report := load_start_weights(model, start_weights, config)) is not None:
                context.log(f"start weights ({start_weights}): {report}")
            # The averages start from the weights loaded: on resume, weights.h5's averages.
            averages = None
            if config.train.ema_decay > 0:
                averages = WeightAverages(trained, config.train.ema_decay, optimizer.iterations)
            if resume_from:
                # Training goes on from the raw weights, which a checkpoint under averaging keeps.
                restore_raw_weights(trained, resume_from)
                context.log(f"resumed from {resume_from} after epoch {state.epoch}")
        if precision != "float32":
            context.log(f"computing in {precision} (train.precision={config.train.precision})")
        _Epochs(config, model, optimizer, averages, train_set, val_set, context, state).run()
    return state


class _Epochs:
    """The epoch loop of `train_worker`, with the pieces it keeps between epochs."""

    def __init__(self, config, model, optimizer, averages, train_set, val_set, context, state):
        self.run_config, self.model, self.optimizer = config, model, optimizer
        self.averages: WeightAverages | None = averages
        self.context, self.state, self.val_set = context, state, val_set
        self._predictor = None  # built at the first validation AP
        strategy = context.strategy
        self.global_batch = config.train.images_per_worker * strategy.num_replicas_in_sync
        # A resumed run shuffles and augments differently from the epochs it already saw.
        reshuffled = with_overrides(config, {"data.seed": config.data.seed + state.epoch})
        self.train_batches = iter(self._distribute(train_set, reshuffled, training=True))
        self.val_batches = iter(self._distribute(val_set, reshuffled, training=False))
        self.average_statistics = self._statistics_averager()
        self.check_in_sync = sync_checker(strategy, self._replicated_variables())
        self.validate = self._distributed(
            lambda batch: recipe_losses(model, batch, config, training=False)
        )
        self.writer = (
            tf.summary.create_file_writer(str(context.tensorboard_dir))
            if context.is_chief and context.tensorboard_dir
            else None
        )

    def run(self) -> None:
        train, context = self.run_config.train, self.context
        stage, step = None, None
        for epoch in range(self.state.epoch, train.epochs):
            if (selection := stage_at(train, epoch)) != stage:
                stage = selection
                trainable = self.model.set_trainable(stage)
                step = self._distributed(self._replica_step())
                context.log(f"epoch {epoch + 1}: training {len(trainable)} layers ({stage})")
            metrics = self._train_epoch(step)
            if self.context.strategy.num_replicas_in_sync > 1:
                self.average_statistics()
                metrics["replicas_in_sync"] = float(self.check_in_sync(epoch + 1))
            with self._averaged_weights():
                metrics.update(self._validation_losses())
                if context.is_chief and self._evaluates(epoch):
                    metrics.update(self._validation_ap())
            self._finish_epoch(epoch, metrics)

    def _averaged_weights(self) -> contextlib.AbstractContextManager:
        """The weights validation sees: the averages under `train.ema_decay`, else the raw."""
        return self.averages.applied() if self.averages is not None else contextlib.nullcontext()

    def _replica_step(self):
        jit = bool(tf.config.list_physical_devices("GPU"))  # XLA training is slower on CPUs
        replicas = self.context.strategy.num_replicas_in_sync
        return make_train_step(
            self.model,
            self.optimizer,
            self.run_config,
            jit_compile=jit,
            replicas=replicas,
            after_update=self.averages.update if self.averages is not None else None,
        )

    def _distribute(self, dataset: CocoDataset, config: Config, training: bool):
        def make(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            return build_dataset(
                dataset,
                config,
                training=training,
                batch_size=ctx.get_per_replica_batch_size(self.global_batch),
                num_shards=ctx.num_input_pipelines,
                shard_index=ctx.input_pipeline_id,
                repeat=True,
                threads=self.context.cpu_threads,
            )

        return self.context.strategy.distribute_datasets_from_function(make)

    def _distributed(self, replica_fn):
        """A compiled call: next batch of an iterator on every replica, mean losses back."""
        strategy = self.context.strategy

        @tf.function(autograph=False)
        def run(iterator):
            losses = strategy.run(replica_fn, args=(next(iterator),))
            return {k: strategy.reduce("MEAN", v, axis=None) for k, v in losses.items()}

        return run

    def _train_epoch(self, step) -> dict[str, float]:
        steps = self.run_config.train.steps_per_epoch
        start = time.perf_counter()
        totals = _mean_of(step(self.train_batches) for _ in range(steps))
        seconds = time.perf_counter() - start
        totals["images_per_s"] = steps * self.global_batch / seconds
        totals["epoch_seconds"] = seconds
        totals["learning_rate"] = float(self.optimizer.learning_rate)
        return totals

    def _statistics_averager(self):
        """A compiled call averaging batch norm's moving statistics over the replicas.

        Gradients keep the trained weights identical everywhere, but each replica updates its
        moving statistics from its own batches; averaging them after every epoch makes each
        replica (and the chief's checkpoint) hold the same model.
        """
        strategy = self.context.strategy
        statistics = [v for v in self.model.weights if v.name in ("moving_mean", "moving_variance")]
        if not statistics:  # group norm keeps none
            return lambda: None

        def replica():
            context = tf.distribute.get_replica_context()
            means = context.all_reduce("MEAN", [tf.identity(v.value) for v in statistics])
            for variable, mean in zip(statistics, means, strict=True):
                variable.assign(mean)

        return tf.function(lambda: strategy.run(replica), autograph=False)

    def _replicated_variables(self) -> list:
        """What every replica must hold alike: the model (moving statistics included), the
        optimizer's slots and step, and the weight averages."""
        shadows = self.averages.shadows if self.averages is not None else []
        return [*self.model.weights, *self.optimizer.variables, *shadows]

    def _validation_losses(self) -> dict[str, float]:
        steps = self.run_config.train.validation_steps
        losses = _mean_of(self.validate(self.val_batches) for _ in range(steps))
        return {f"val_{name}": value for name, value in losses.items()}

    def _evaluates(self, epoch: int) -> bool:
        every = self.run_config.train.eval_every
        last = epoch + 1 == self.run_config.train.epochs
        return every > 0 and ((epoch + 1) % every == 0 or last)

    def _validation_ap(self) -> dict[str, float]:
        from handray.evaluation.metrics import evaluate_model
        from handray.inference.predictor import Predictor
        from handray.inference.thresholds import Thresholds

        if self._predictor is None:  # one, so its post-processing graph is traced once
            self._predictor = Predictor(self.model, Thresholds.from_config(self.run_config))
        limit = self.run_config.train.eval_images
        metrics = evaluate_model(self._predictor, self.val_set, limit=limit, progress=False)
        values = {
            "val_mask_ap": metrics["segm"]["AP"],
            "val_mask_ap50": metrics["segm"]["AP50"],
            "val_box_ap": metrics["bbox"]["AP"],
            "val_agnostic_mask_ap50": metrics["agnostic"]["segm"]["AP50"],
            "val_side_accuracy": metrics["handedness"]["accuracy"],
        }
        return {name: value for name, value in values.items() if value is not None}

    def _finish_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        state, context = self.state, self.context
        state.epoch, state.step = epoch + 1, int(self.optimizer.iterations.numpy())
        metrics = {"epoch": float(state.epoch), "step": float(state.step), **metrics}
        for name, value in metrics.items():
            if not math.isfinite(value):
                raise HandrayError(
                    f"epoch {state.epoch}: {name} is {value}; training diverged. Lower "
                    "train.learning_rate or raise train.warmup_steps, and resume from the "
                    "last checkpoint"
                )
        state.history.append(metrics)
        if not context.is_chief:
            context.report(metrics, None)
            return
        context.log(_progress_line(metrics, self.run_config.train.epochs))
        if self.writer is not None:
            with self.writer.as_default(step=state.epoch):
                for name, value in metrics.items():
                    tf.summary.scalar(name, value)
            self.writer.flush()
        staging = Path(tempfile.mkdtemp(prefix="handray-checkpoint-"))
        try:
            write_checkpoint(
                staging, self.model, self.run_config, state, self.optimizer, self.averages
            )
            context.report(metrics, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _stage_variables(model: MaskRCNN, train: TrainConfig) -> list:
    """Every variable some stage of the run trains, so one optimizer serves all stages."""
    variables = {}
    for selection in train.stages or [train.layers]:
        model.set_trainable(selection)
        variables.update((id(v), v) for v in model.trainable_variables)
    return list(variables.values())


def _mean_of(results) -> dict[str, float]:
    totals: dict[str, float] = {}
    count = 0
    for result in results:
        count += 1
        for name, value in result.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    return {name: value / count for name, value in totals.items()}


def _progress_line(metrics: dict[str, float], epochs: int) -> str:
    losses = "  ".join(
        f"{name.removesuffix('_loss')} {metrics[name]:.3f}"
        for name in metrics
        if name.endswith("_loss") and not name.startswith("val_") and name != "weight_decay_loss"
    )
    line = (
        f"epoch {int(metrics['epoch'])}/{epochs}  loss {metrics['loss']:.3f}  "
        f"val_loss {metrics['val_loss']:.3f}  ({losses})  "
        f"{metrics['images_per_s']:.1f} images/s  lr {metrics['learning_rate']:.4g}"
    )
    if "val_mask_ap" in metrics:
        line += f"  val mask AP {metrics['val_mask_ap']:.3f} AP50 {metrics['val_mask_ap50']:.3f}"
        if "val_agnostic_mask_ap50" in metrics:
            line += f" (any side {metrics['val_agnostic_mask_ap50']:.3f})"
    if "rpn_positives_per_hand" in metrics:
        line += (
            f"\n  stages: RPN {metrics['rpn_positives_per_hand']:.1f} positives/hand, "
            f"val proposal recall@100 {metrics['val_proposal_recall_50']:.2f} (IoU .5) "
            f"{metrics['val_proposal_recall_70']:.2f} (.7) | heads: positives "
            f"{metrics['roi_positive_ratio']:.2f} of ROIs, val fg accuracy "
            f"{metrics['val_head_fg_accuracy']:.2f}, val side accuracy "
            f"{metrics['val_handedness_accuracy']:.2f}"
        )
    return line
