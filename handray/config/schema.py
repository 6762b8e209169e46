"""The configuration tree's sections: every key with its type, default and meaning.

Values are checked strictly (an int is not a bool, a string is not a number) and then by meaning,
in each section's `check_values`. A failed check raises ConfigError naming the dotted key; pydantic
lets that error through unchanged. Type errors come back as pydantic's ValidationError, which
`loading` turns into the same kind of message. New fields get a default, so YAML files written by
older versions keep loading.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

from handray.config.names import LAYER_STAGES, LOSS_NAMES, MASK_THRESHOLD, PRECISIONS
from handray.config.presets import ANCHOR_SETS
from handray.core.errors import ConfigError

T = TypeVar("T")
# YAML has lists, not tuples: a tuple field also takes a list; its items stay strictly typed.
FromList = Annotated[T, Strict(False)]
# The largest blur sigma `data.appearance.blur_sigma` takes: the kernel is 6 sigma + 1 wide.
MAX_BLUR_SIGMA = 8.0


class Section(BaseModel):
    """What every part of the tree shares: strict types, no unknown keys, YAML-safe dumps."""

    # `.inf` is valid YAML and a valid float: keep it in dumps instead of writing null.
    model_config = ConfigDict(extra="forbid", strict=True, ser_json_inf_nan="constants")


class AppearanceConfig(Section):
    """Photo-like changes of a training image's pixels (`data/appearance.py`), made only when
    `data.augment` is on. Each change happens to an image with its probability (0: never) and
    draws its strength per image; none moves a pixel, so masks, boxes and keypoints stay."""

    noise_prob: float = 0.2
    noise_max_sigma: float = 8.0  # Gaussian sensor noise; sigma drawn in [0, this] grey levels
    blur_prob: float = 0.2
    # Gaussian blur; sigma in pixels of the square drawn from [low, high] (high at most 8: the
    # kernel reaches 3 * high pixels each way)
    blur_sigma: FromList[tuple[float, float]] = (0.5, 1.5)
    jpeg_prob: float = 0.2
    jpeg_quality: FromList[tuple[int, int]] = (30, 90)  # re-encoded at a quality in [low, high]
    hue_saturation_prob: float = 0.3
    hue_max_delta: float = 0.05  # hue turned by up to +/- this fraction of the circle (18 deg)
    # saturation multiplied by a factor drawn from [low, high] (clipped at full saturation)
    saturation_range: FromList[tuple[float, float]] = (0.6, 1.4)
    grey_prob: float = 0.1  # luminance only (ITU-R BT.601), kept as 3 channels

    @model_validator(mode="after")
    def check_values(self) -> Self:
        for name in ("noise_prob", "blur_prob", "jpeg_prob", "hue_saturation_prob", "grey_prob"):
            value = getattr(self, name)
            _check(
                0.0 <= value <= 1.0,
                f"data.appearance.{name}",
                f"must be within [0, 1] (0: off), got {value}",
            )
        _check(
            0.0 <= self.noise_max_sigma <= 255.0,
            "data.appearance.noise_max_sigma",
            f"must be within [0, 255] grey levels, got {self.noise_max_sigma}",
        )
        _check_range(self.blur_sigma, "data.appearance.blur_sigma")
        _check(
            self.blur_sigma[1] <= MAX_BLUR_SIGMA,
            "data.appearance.blur_sigma",
            f"high must be at most {MAX_BLUR_SIGMA} pixels, got {list(self.blur_sigma)}",
        )
        low, high = self.jpeg_quality
        _check(
            0 <= low <= high <= 100,
            "data.appearance.jpeg_quality",
            f"must be [low, high] with 0 <= low <= high <= 100, got {list(self.jpeg_quality)}",
        )
        _check(
            0.0 <= self.hue_max_delta <= 0.5,
            "data.appearance.hue_max_delta",
            f"must be within [0, 0.5] (half the hue circle), got {self.hue_max_delta}",
        )
        _check_range(self.saturation_range, "data.appearance.saturation_range")
        return self


class DataConfig(Section):
    """How images become training tensors."""

    image_size: int = 512  # side of the padded square input; a multiple of 64
    min_dim: int = 0  # >0: upscale so the short side reaches this (matterport IMAGE_MIN_DIM)
    max_gt_instances: int = 20  # ground-truth slots per image (hands are few)
    use_mini_mask: bool = True  # store masks cropped to their box at mini_mask_shape
    mini_mask_shape: FromList[tuple[int, int]] = (56, 56)
    augment: bool = True
    flip_prob: float = 0.5  # horizontal flip; swaps left_X and right_X classes
    brightness_delta: float = 20.0  # +/- this many pixel levels
    contrast_range: FromList[tuple[float, float]] = (0.8, 1.2)
    # >1 crops a random image-sized window
    scale_jitter: FromList[tuple[float, float]] = (0.8, 1.25)
    # noise, blur, JPEG, hue and saturation, grey: each with its probability and strength
    appearance: AppearanceConfig = Field(default_factory=AppearanceConfig)
    shuffle_buffer: int = 512
    seed: int = 0  # shuffling and augmentation; also the initial weights of a training run

    @model_validator(mode="after")
    def check_values(self) -> Self:
        _check(
            self.image_size >= 64 and self.image_size % 64 == 0,
            "data.image_size",
            f"must be a positive multiple of 64 (the FPN's coarsest stride), got {self.image_size}",
        )
        _check(
            0 <= self.min_dim <= self.image_size,
            "data.min_dim",
            f"must be between 0 and data.image_size ({self.image_size}), got {self.min_dim}",
        )
        _check(self.max_gt_instances >= 1, "data.max_gt_instances", "must be at least 1")
        _check(min(self.mini_mask_shape) >= 1, "data.mini_mask_shape", "sides must be positive")
        _check(0.0 <= self.flip_prob <= 1.0, "data.flip_prob", "must be within [0, 1]")
        _check(self.brightness_delta >= 0, "data.brightness_delta", "must be >= 0")
        _check_range(self.contrast_range, "data.contrast_range")
        _check_range(self.scale_jitter, "data.scale_jitter")
        _check(self.shuffle_buffer >= 1, "data.shuffle_buffer", "must be at least 1")
        return self


class ModelConfig(Section):
    """Mask R-CNN architecture and inference settings (matterport's names where it had one)."""

    backbone: Literal["resnet50", "resnet101", "tiny"] = "resnet101"
    num_classes: int = 3  # background included, as in the old config
    class_names: FromList[tuple[str, ...]] = ("left_hand", "right_hand")  # without background
    backbone_strides: FromList[tuple[int, ...]] = (4, 8, 16, 32, 64)
    fpn_channels: int = 256
    rpn_anchor_scales: FromList[tuple[int, ...]] = (16, 32, 64, 128, 256)
    # Anchor sides at each level as multiples of that level's scale (matterport: one, 1.0).
    # Two octaves (1, sqrt 2) give small objects several well-placed anchors per level.
    rpn_anchor_octaves: FromList[tuple[float, ...]] = (1.0,)
    rpn_anchor_ratios: FromList[tuple[float, ...]] = (0.5, 1.0, 2.0)
    rpn_anchor_stride: int = 1
    rpn_positive_iou: float = 0.7  # an anchor is a positive at this IoU with a hand
    rpn_negative_iou: float = 0.3  # ... and a negative below this IoU with every hand
    rpn_channels: int = 512  # width of rpn_conv_shared
    rpn_nms_threshold: float = 0.7
    rpn_train_anchors_per_image: int = 256
    pre_nms_limit: int = 6000
    post_nms_rois_training: int = 2000
    post_nms_rois_inference: int = 1000
    train_rois_per_image: int = 200
    roi_positive_ratio: float = 0.33
    # Jittered copies of each hand's box added to the heads' candidates, so positives fill
    # their share of the sampled ROIs from the first step on (0: only the box itself).
    roi_positive_jitter: int = 0
    # Share of the negative ROI slots given to the proposals the RPN scores highest (faces,
    # forearms: the hard negatives); the rest are drawn at random.
    roi_hard_negative_fraction: float = 0.0
    # ROIs per image the mask head trains on, the first positives (0: every positive slot).
    mask_rois_per_image: int = 0
    pool_size: int = 7
    mask_pool_size: int = 14
    mask_shape: FromList[tuple[int, int]] = (28, 28)
    fc_layers_size: int = 1024
    mask_head_channels: int = 256
    # Hand keypoints (the Mask R-CNN paper's keypoint branch): a conv stack on ROI-aligned
    # features, upsampled to one heatmap per keypoint, trained on the mask head's positives.
    # 0 removes the head and its cost (the `matterport` preset). The paper's eight 3x3 convs at
    # a quarter of its 512 channels: a detection's share of the cost stays small
    # (benchmarks/inference.py; candidate shapes' FLOPs: benchmarks/keypoint_head.py).
    num_keypoints: int = 21
    keypoint_pool_size: int = 14
    keypoint_head_convs: int = 8
    keypoint_head_channels: int = 128
    # Channels of a 1x1 convolution that first reduces the ROI features, so the 3x3 convs
    # read fewer channels (0: none, the convs read the FPN's channels).
    keypoint_head_reduction: int = 0
    # Heatmap side per pooled cell: 4 (a stride-2 deconvolution, then bilinear x2: 56x56 from
    # 14x14), 2 (the deconvolution only) or 1 (a 1x1 convolution at the pooled resolution).
    keypoint_upsample: int = 4
    # Training target: a Gaussian of this sigma (in heatmap cells) around each keypoint,
    # normalised over the cells; 0: the one cell it falls in. A soft target keeps neighbouring
    # cells from being penalised like distant ones, so a coarse budget still learns.
    keypoint_sigma: float = 0.0
    # >0: the head also sees each box's pixels (a small conv branch of this many channels),
    # not only FPN features, where a small hand is a few cells (0: features only).
    keypoint_pixels: int = 0
    # The side from a head that sees each hand's pixels turned upright (model/heads/side.py);
    # the box head then says hand or background. Off for the presets that load the old
    # 3-class files, whose box head decides the side.
    side_head: bool = False
    side_crop_size: int = 32  # side of the square crops its CNNs see
    side_upright: bool = True  # turn the crops by the predicted direction (False: as boxed)
    # Normalisation layers: "batch" (the old model's, needed for its weights) or "group"
    # (GroupNorm: independent of the batch, for from-scratch training with small batches).
    norm: Literal["batch", "group"] = "batch"
    norm_groups: int = 16  # GroupNorm groups (fewer where a layer has fewer channels)
    rpn_bbox_std_dev: FromList[tuple[float, float, float, float]] = (0.1, 0.1, 0.2, 0.2)
    bbox_std_dev: FromList[tuple[float, float, float, float]] = (0.1, 0.1, 0.2, 0.2)
    detection_max_instances: int = 20
    detection_min_confidence: float = 0.7
    detection_nms_threshold: float = 0.3
    # One detection per class above the threshold for each ROI (Detectron's rule), instead
    # of only its best class (matterport's): a hand of uncertain side is kept under both.
    detection_per_class: bool = True
    mean_pixel: FromList[tuple[float, float, float]] = (123.7, 116.8, 103.9)

    @model_validator(mode="after")
    def check_values(self) -> Self:
        _check(
            self.num_classes >= 2,
            "model.num_classes",
            f"counts the background too, so it must be at least 2, got {self.num_classes}",
        )
        _check(
            len(self.class_names) == self.num_classes - 1,
            "model.class_names",
            f"has {len(self.class_names)} names but model.num_classes={self.num_classes} "
            f"needs {self.num_classes - 1} (background is not named)",
        )
        _check(
            len(self.rpn_anchor_scales) == len(self.backbone_strides),
            "model.rpn_anchor_scales",
            f"needs one scale per pyramid level ({len(self.backbone_strides)}), "
            f"got {len(self.rpn_anchor_scales)}",
        )
        _check(
            all(s > 0 for s in self.rpn_anchor_scales),
            "model.rpn_anchor_scales",
            "must be positive",
        )
        _check(
            all(r > 0 for r in self.rpn_anchor_ratios) and self.rpn_anchor_ratios,
            "model.rpn_anchor_ratios",
            "must be a non-empty list of positive ratios",
        )
        for name in (
            "rpn_nms_threshold",
            "detection_nms_threshold",
            "roi_positive_ratio",
            "rpn_positive_iou",
            "rpn_negative_iou",
        ):
            value = getattr(self, name)
            _check(0.0 < value <= 1.0, f"model.{name}", f"must be within (0, 1], got {value}")
        _check(
            self.rpn_negative_iou <= self.rpn_positive_iou,
            "model.rpn_negative_iou",
            f"must not exceed model.rpn_positive_iou ({self.rpn_positive_iou})",
        )
        _check(
            bool(self.rpn_anchor_octaves) and all(o > 0 for o in self.rpn_anchor_octaves),
            "model.rpn_anchor_octaves",
            "must be a non-empty list of positive multiples",
        )
        _check(
            0.0 <= self.roi_hard_negative_fraction <= 1.0,
            "model.roi_hard_negative_fraction",
            "must be within [0, 1]",
        )
        for name in ("roi_positive_jitter", "mask_rois_per_image"):
            _check(getattr(self, name) >= 0, f"model.{name}", "must be >= 0")
        _check(
            0.0 <= self.detection_min_confidence <= 1.0,
            "model.detection_min_confidence",
            "must be within [0, 1]",
        )
        _check(
            self.post_nms_rois_inference >= self.detection_max_instances,
            "model.post_nms_rois_inference",
            "must be at least model.detection_max_instances",
        )
        _check(
            self.pre_nms_limit >= max(self.post_nms_rois_training, self.post_nms_rois_inference),
            "model.pre_nms_limit",
            "must be at least the post-NMS proposal counts",
        )
        for name in (
            "fpn_channels",
            "rpn_anchor_stride",
            "rpn_train_anchors_per_image",
            "train_rois_per_image",
            "pool_size",
            "mask_pool_size",
            "fc_layers_size",
            "rpn_channels",
            "mask_head_channels",
            "keypoint_pool_size",
            "keypoint_head_convs",
            "keypoint_head_channels",
            "detection_max_instances",
            "norm_groups",
        ):
            _check(getattr(self, name) >= 1, f"model.{name}", "must be at least 1")
        _check(self.num_keypoints >= 0, "model.num_keypoints", "must be >= 0 (0: no keypoint head)")
        _check(
            not self.side_head or self.num_classes == 3,
            "model.side_head",
            f"decides between two hand classes (left, right), so it needs model.num_classes=3, "
            f"got {self.num_classes}; set model.side_head=false for other classes",
        )
        _check(
            self.side_crop_size >= 8 and self.side_crop_size % 8 == 0,
            "model.side_crop_size",
            f"must be a positive multiple of 8 (its CNNs pool three times), got "
            f"{self.side_crop_size}",
        )
        _check(
            self.keypoint_pixels >= 0, "model.keypoint_pixels", "must be >= 0 (0: features only)"
        )
        _check(
            self.keypoint_head_reduction >= 0,
            "model.keypoint_head_reduction",
            "must be >= 0 (0: no 1x1 reduction)",
        )
        _check(self.keypoint_upsample in (1, 2, 4), "model.keypoint_upsample", "must be 1, 2 or 4")
        _check(self.keypoint_sigma >= 0, "model.keypoint_sigma", "must be >= 0 (0: one-hot cell)")
        return self


class TrainConfig(Section):
    """Optimisation recipe (matterport's defaults)."""

    # "sgd" (with momentum, the old recipe), "adam", or "adamw" (weight decay decoupled from
    # the gradient instead of added to the loss).
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    learning_rate: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0001
    gradient_clip_norm: float = 5.0
    train_bn: bool = False
    bn_momentum: float = 0.99  # moving-statistics momentum of trained batch norm
    images_per_worker: int = 2
    epochs: int = 20
    steps_per_epoch: int = 1000
    validation_steps: int = 50
    layers: str = "heads"  # heads | 3+ | 4+ | 5+ | all | a regular expression over layer names
    # Staged training, the old recipe: {selection: last epoch of that stage}, in order. Empty:
    # `layers` for the whole run. Epochs past the last stage keep the last stage's selection.
    stages: dict[str, int] = Field(default_factory=dict)
    warmup_steps: int = 500  # linear learning-rate ramp from 1/10 of the rate
    # the rate is multiplied by lr_decay_factor after each
    lr_decay_epochs: FromList[tuple[int, ...]] = ()
    lr_decay_factor: float = 0.1
    # After the warm-up: "step" (lr_decay_epochs and lr_decay_factor, the old recipe) or
    # "cosine" (a half cosine down to 0 at the run's last step, epochs * steps_per_epoch: no
    # decay epochs to choose, and the last steps are small ones that settle the weights; it
    # ignores lr_decay_epochs and lr_decay_factor).
    lr_schedule: Literal["step", "cosine"] = "step"
    # >0: validation, checkpoints (weights.h5) and so export use an exponential moving average
    # of the trained weights with this decay (e.g. 0.999, about the last 1000 steps), which
    # predicts better than the last step's noisy weights; training goes on from the raw ones.
    # 0: off.
    ema_decay: float = 0.0
    loss_weights: dict[str, float] = Field(default_factory=lambda: dict.fromkeys(LOSS_NAMES, 1.0))
    # What the model computes in while training (handray/model/precision.py): "float32",
    # "mixed_bfloat16" (CPUs with bfloat16 instructions), "mixed_float16" (GPUs; loss-scaled),
    # or "auto" (bfloat16 where the CPU has it, else float32). Weights stay float32.
    # (The old `train.mixed_precision: true/false` is read as mixed_float16/float32: retired.py.)
    precision: Literal[PRECISIONS] = "float32"
    eval_every: int = 5  # validation mask AP every this many epochs (and at the end); 0: never
    eval_images: int = 50  # the fixed validation subset (its first images) that AP is measured on
    keep_checkpoints: int = 3  # checkpoints kept per run (the newest is always among them)
    max_failures: int = 3  # worker failures a run survives by restarting from its checkpoint
    # Seconds a run's workers may wait to be placed (CPUs/GPUs held by other work, nodes an
    # autoscaler is starting); then the run fails naming what it asked for and what is free.
    start_timeout_s: float = 600.0

    @model_validator(mode="after")
    def check_values(self) -> Self:
        _check(self.learning_rate > 0, "train.learning_rate", "must be positive")
        _check(0.0 <= self.momentum < 1.0, "train.momentum", "must be within [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.gradient_clip_norm > 0, "train.gradient_clip_norm", "must be positive")
        _check(0.0 <= self.bn_momentum < 1.0, "train.bn_momentum", "must be within [0, 1)")
        for name in (
            "images_per_worker",
            "epochs",
            "steps_per_epoch",
            "validation_steps",
            "eval_images",
            "keep_checkpoints",
        ):
            _check(getattr(self, name) >= 1, f"train.{name}", "must be at least 1")
        for name in ("warmup_steps", "eval_every", "max_failures"):
            _check(getattr(self, name) >= 0, f"train.{name}", "must be >= 0")
        _check(0 < self.lr_decay_factor <= 1, "train.lr_decay_factor", "must be within (0, 1]")
        _check(self.start_timeout_s > 0, "train.start_timeout_s", "must be positive (seconds)")
        _check(
            self.lr_schedule != "cosine" or self.warmup_steps < self.epochs * self.steps_per_epoch,
            "train.warmup_steps",
            f"must be below the run's {self.epochs * self.steps_per_epoch} steps (train.epochs * "
            "train.steps_per_epoch) under train.lr_schedule=cosine, which decays after the warm-up",
        )
        _check(
            0.0 <= self.ema_decay < 1.0,
            "train.ema_decay",
            f"must be 0 (off) or within (0, 1), e.g. 0.999; got {self.ema_decay}",
        )
        _check(
            all(e >= 1 for e in self.lr_decay_epochs)
            and list(self.lr_decay_epochs) == sorted(set(self.lr_decay_epochs)),
            "train.lr_decay_epochs",
            f"must be increasing positive epochs, got {list(self.lr_decay_epochs)}",
        )
        _check_selection(self.layers, "train.layers")
        for selection in self.stages:
            _check_selection(selection, f"train.stages[{selection!r}]")
        ends = list(self.stages.values())
        _check(
            all(e >= 1 for e in ends) and ends == sorted(set(ends)),
            "train.stages",
            f"last epochs must be positive and increasing, got {self.stages}",
        )
        unknown = sorted(set(self.loss_weights) - set(LOSS_NAMES))
        _check(
            not unknown,
            "train.loss_weights",
            f"unknown loss {unknown}; known losses are {list(LOSS_NAMES)}",
        )
        self.loss_weights = {**dict.fromkeys(LOSS_NAMES, 1.0), **self.loss_weights}
        return self


class ServeConfig(Section):
    """HTTP serving limits and thresholds (the address is serve_config.yaml's http_options)."""

    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.0  # wait for company only when idle (serve/batching.py)
    min_score: float = 0.5
    mask_threshold: float = MASK_THRESHOLD
    max_request_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000
    # What an export (and evaluate/predict from a checkpoint) computes in; as train.precision.
    precision: Literal[PRECISIONS] = "float32"

    @model_validator(mode="after")
    def check_values(self) -> Self:
        _check(self.max_batch_size >= 1, "serve.max_batch_size", "must be at least 1")
        _check(self.batch_wait_timeout_s >= 0, "serve.batch_wait_timeout_s", "must be >= 0")
        _check(0.0 <= self.min_score <= 1.0, "serve.min_score", "must be within [0, 1]")
        _check(0.0 < self.mask_threshold < 1.0, "serve.mask_threshold", "must be within (0, 1)")
        _check(self.max_request_bytes >= 1, "serve.max_request_bytes", "must be positive")
        _check(self.max_image_pixels >= 1, "serve.max_image_pixels", "must be positive")
        return self


class TuneConfig(Section):
    """A Ray Tune sweep (`handray tune`): what each trial samples and when ASHA stops one."""

    trials: int = 8
    metric: Literal["val_mask_ap", "val_loss"] = "val_mask_ap"  # the last epoch's value counts
    learning_rate: FromList[tuple[float, float]] = (0.0002, 0.005)  # log-uniform [low, high]
    # names in ANCHOR_SETS, chosen uniformly
    anchor_sets: FromList[tuple[str, ...]] = tuple(ANCHOR_SETS)
    # More keys to search: dotted config key -> choices, e.g. {"train.weight_decay": [1e-4, 1e-3]}
    extra: dict[str, FromList[tuple[Any, ...]]] = Field(default_factory=dict)
    grace_period: int = 1  # epochs every trial trains before ASHA may stop it
    reduction_factor: float = 2.0  # ASHA lets the best 1/this of trials pass each rung
    max_concurrent: int = 0  # trials at once; 0: as many as the cluster's CPUs and GPUs fit
    seed: int = 0  # same seed, same sampled trials

    @model_validator(mode="after")
    def check_values(self) -> Self:
        _check(self.trials >= 1, "tune.trials", "must be at least 1")
        _check_range(self.learning_rate, "tune.learning_rate")
        _check(bool(self.anchor_sets), "tune.anchor_sets", "must name at least one anchor set")
        for name in self.anchor_sets:
            _check(
                name in ANCHOR_SETS,
                "tune.anchor_sets",
                f"unknown anchor set {name!r}; known sets: "
                + ", ".join(f"{n} {list(s)}" for n, s in ANCHOR_SETS.items()),
            )
        for key, choices in self.extra.items():
            _check(
                key not in ("train.learning_rate", "model.rpn_anchor_scales", "train.epochs"),
                f"tune.extra.{key}",
                "is set by the sweep itself (tune.learning_rate, tune.anchor_sets, --epochs)",
            )
            _check(bool(choices), f"tune.extra.{key}", "needs at least one choice")
        _check(self.grace_period >= 1, "tune.grace_period", "must be at least 1")
        _check(self.reduction_factor > 1, "tune.reduction_factor", "must be above 1")
        _check(self.max_concurrent >= 0, "tune.max_concurrent", "must be >= 0")
        return self


class Config(Section):
    """The whole tree; `preset` records where it started from."""

    preset: str = "hand-r101"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists and scalars: safe for YAML and for shipping to worker processes."""
        return self.model_dump(mode="json")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _check_selection(selection: str, key: str) -> None:
    """A stage name or a regular expression over layer names."""
    if selection in LAYER_STAGES:
        return
    try:
        re.compile(selection)
    except re.error as err:
        raise ConfigError(
            f"{key}: {selection!r} is neither one of {list(LAYER_STAGES)} "
            f"nor a valid regular expression ({err})"
        ) from None


def _check_range(bounds: tuple[float, float], key: str) -> None:
    low, high = bounds
    _check(0 < low <= high, key, f"must be [low, high] with 0 < low <= high, got {list(bounds)}")
