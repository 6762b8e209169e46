"""One typed configuration tree for data, model, training, serving and tuning.

Every command builds its settings here: a named preset (or a YAML file, which may start from a
preset), then dotted overrides such as ``--set train.learning_rate=0.002``. Values are checked by
type and by meaning, with messages that name the key, so a typo fails before any work starts.
New fields are added to the dataclasses below with a default; YAML files written by older versions
keep loading.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from handray.atomic import atomic_write
from handray.errors import ConfigError

LAYER_STAGES = ("heads", "3+", "4+", "5+", "all")
LOSS_NAMES = (
    "rpn_class_loss",
    "rpn_bbox_loss",
    "mrcnn_class_loss",
    "mrcnn_bbox_loss",
    "mrcnn_mask_loss",
)
# Named anchor-scale sets that `handray tune` chooses among: the side in pixels of the square
# anchor at each pyramid level, P2 first. Hands are small, so the hand sets start lower than
# COCO's, which the old model used on images upscaled 2.5x.
ANCHOR_SETS: dict[str, tuple[int, ...]] = {
    "hand-small": (8, 16, 32, 64, 128),
    "hand-medium": (16, 32, 64, 128, 256),
    "coco": (32, 64, 128, 256, 512),
}


@dataclass
class DataConfig:
    """How images become training tensors."""

    image_size: int = 512  # side of the padded square input; a multiple of 64
    min_dim: int = 0  # >0: upscale so the short side reaches this (matterport IMAGE_MIN_DIM)
    max_gt_instances: int = 20  # ground-truth slots per image (hands are few)
    use_mini_mask: bool = True  # store masks cropped to their box at mini_mask_shape
    mini_mask_shape: tuple[int, int] = (56, 56)
    augment: bool = True
    flip_prob: float = 0.5  # horizontal flip; swaps left_X and right_X classes
    brightness_delta: float = 20.0  # +/- this many pixel levels
    contrast_range: tuple[float, float] = (0.8, 1.2)
    scale_jitter: tuple[float, float] = (0.8, 1.25)  # >1 crops a random image-sized window
    shuffle_buffer: int = 512
    seed: int = 0  # shuffling and augmentation; also the initial weights of a training run

    def validate(self) -> None:
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


@dataclass
class ModelConfig:
    """Mask R-CNN architecture and inference settings (matterport's names where it had one)."""

    backbone: Literal["resnet50", "resnet101", "tiny"] = "resnet101"
    num_classes: int = 3  # background included, as in the old config
    class_names: tuple[str, ...] = ("left_hand", "right_hand")  # without background
    backbone_strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    fpn_channels: int = 256
    rpn_anchor_scales: tuple[int, ...] = (16, 32, 64, 128, 256)
    # Anchor sides at each level as multiples of that level's scale (matterport: one, 1.0).
    # Two octaves (1, sqrt 2) give small objects several well-placed anchors per level.
    rpn_anchor_octaves: tuple[float, ...] = (1.0,)
    rpn_anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
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
    mask_shape: tuple[int, int] = (28, 28)
    fc_layers_size: int = 1024
    mask_head_channels: int = 256
    # Normalisation layers: "batch" (the old model's, needed for its weights) or "group"
    # (GroupNorm: independent of the batch, for from-scratch training with small batches).
    norm: Literal["batch", "group"] = "batch"
    norm_groups: int = 16  # GroupNorm groups (fewer where a layer has fewer channels)
    rpn_bbox_std_dev: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    bbox_std_dev: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    detection_max_instances: int = 20
    detection_min_confidence: float = 0.7
    detection_nms_threshold: float = 0.3
    # One detection per class above the threshold for each ROI (Detectron's rule), instead
    # of only its best class (matterport's): a hand of uncertain side is kept under both.
    detection_per_class: bool = True
    mean_pixel: tuple[float, float, float] = (123.7, 116.8, 103.9)

    def validate(self) -> None:
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
            "detection_max_instances",
            "norm_groups",
        ):
            _check(getattr(self, name) >= 1, f"model.{name}", "must be at least 1")


@dataclass
class TrainConfig:
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
    stages: dict[str, int] = field(default_factory=dict)
    warmup_steps: int = 500  # linear learning-rate ramp from 1/10 of the rate
    lr_decay_epochs: tuple[int, ...] = ()  # the rate is multiplied by lr_decay_factor after each
    lr_decay_factor: float = 0.1
    loss_weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSS_NAMES, 1.0))
    mixed_precision: bool = False  # float16 compute with loss scaling; for GPUs
    eval_every: int = 5  # validation mask AP every this many epochs (and at the end); 0: never
    eval_images: int = 50  # the fixed validation subset (its first images) that AP is measured on
    keep_checkpoints: int = 3  # checkpoints kept per run (the newest is always among them)
    max_failures: int = 3  # worker failures a run survives by restarting from its checkpoint

    def validate(self) -> None:
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


@dataclass
class ServeConfig:
    """HTTP serving limits and thresholds."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.0  # wait for company only when idle (serve/batching.py)
    min_score: float = 0.5
    mask_threshold: float = 0.5
    max_request_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000

    def validate(self) -> None:
        _check(1 <= self.port <= 65535, "serve.port", f"must be a TCP port, got {self.port}")
        _check(self.max_batch_size >= 1, "serve.max_batch_size", "must be at least 1")
        _check(self.batch_wait_timeout_s >= 0, "serve.batch_wait_timeout_s", "must be >= 0")
        _check(0.0 <= self.min_score <= 1.0, "serve.min_score", "must be within [0, 1]")
        _check(0.0 < self.mask_threshold < 1.0, "serve.mask_threshold", "must be within (0, 1)")
        _check(self.max_request_bytes >= 1, "serve.max_request_bytes", "must be positive")
        _check(self.max_image_pixels >= 1, "serve.max_image_pixels", "must be positive")


@dataclass
class TuneConfig:
    """A Ray Tune sweep (`handray tune`): what each trial samples and when ASHA stops one."""

    trials: int = 8
    metric: Literal["val_mask_ap", "val_loss"] = "val_mask_ap"  # the last epoch's value counts
    learning_rate: tuple[float, float] = (0.0002, 0.005)  # log-uniform [low, high]
    anchor_sets: tuple[str, ...] = tuple(ANCHOR_SETS)  # names in ANCHOR_SETS, chosen uniformly
    # More keys to search: dotted config key -> choices, e.g. {"train.weight_decay": [1e-4, 1e-3]}
    extra: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    grace_period: int = 1  # epochs every trial trains before ASHA may stop it
    reduction_factor: float = 2.0  # ASHA lets the best 1/this of trials pass each rung
    max_concurrent: int = 0  # trials at once; 0: as many as the cluster's CPUs and GPUs fit
    seed: int = 0  # same seed, same sampled trials

    def validate(self) -> None:
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


@dataclass
class Config:
    """The whole tree; `preset` records where it started from."""

    preset: str = "hand-r101"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def validate(self) -> None:
        for section in (self.data, self.model, self.train, self.serve, self.tune):
            section.validate()

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


# The old recipe: heads, then ResNet stage 4 and up, then everything at a tenth of the rate.
OLD_RECIPE = {
    "epochs": 160,
    "stages": {"heads": 40, "4+": 120, "all": 160},
    "lr_decay_epochs": [120],
}

# Hands are small for their pyramid level: two anchor sizes per level and a 0.5 positive IoU give
# every hand several positive anchors instead of about one (benchmarks/anchors.py).
HAND_ANCHOR_MATCHING = {"rpn_anchor_octaves": [1.0, 2**0.5], "rpn_positive_iou": 0.5}

# Each preset is a set of changes to the defaults above (which are `hand-r101`).
PRESETS: dict[str, dict[str, Any]] = {
    # One anchor size per level, as the old model had, so its weight files load (rpn_class_raw's
    # shape follows the anchors per place); the looser positive IoU changes no weight.
    "hand-r101": {"model": {"rpn_positive_iou": 0.5}, "train": OLD_RECIPE},
    "hand-r50": {"model": {"backbone": "resnet50", **HAND_ANCHOR_MATCHING}, "train": OLD_RECIPE},
    "tiny": {
        "data": {
            "image_size": 128,
            "max_gt_instances": 8,
            "mini_mask_shape": [28, 28],
            "shuffle_buffer": 256,
        },
        "model": {
            "backbone": "tiny",
            "fpn_channels": 64,
            "rpn_anchor_scales": [8, 16, 32, 64, 128],
            **HAND_ANCHOR_MATCHING,
            "rpn_train_anchors_per_image": 128,
            "pre_nms_limit": 1000,
            "post_nms_rois_training": 256,
            "post_nms_rois_inference": 128,
            "train_rois_per_image": 64,
            "roi_positive_jitter": 8,
            "mask_rois_per_image": 6,
            "fc_layers_size": 256,
            "rpn_channels": 64,
            "mask_head_channels": 64,
            "detection_min_confidence": 0.5,
        },
        # From scratch on CPUs (benchmarks/README.md, "What makes the tiny model learn").
        "train": {
            "optimizer": "adamw",
            "learning_rate": 0.002,
            "images_per_worker": 4,
            "epochs": 10,
            "steps_per_epoch": 50,
            "validation_steps": 10,
            "layers": "all",
            "train_bn": True,
            "bn_momentum": 0.9,
            "warmup_steps": 200,
            "eval_every": 2,
            "eval_images": 32,
        },
        "tune": {"learning_rate": [0.0005, 0.004]},
    },
    "matterport": {
        "data": {
            "image_size": 1024,
            "min_dim": 800,
            "max_gt_instances": 100,
            "brightness_delta": 0.0,
            "contrast_range": [1.0, 1.0],
            "scale_jitter": [1.0, 1.0],
        },
        "model": {
            "num_classes": 2,
            "class_names": ["hand"],
            "rpn_anchor_scales": [32, 64, 128, 256, 512],
            "detection_max_instances": 100,
            "detection_per_class": False,
        },
        "train": OLD_RECIPE,
    },
}


def load_config(preset_or_yaml_path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """A validated Config from a preset name or a YAML file, with dotted-key overrides applied.

    A YAML file may name a `preset:` to start from and then change only some keys.
    """
    source = str(preset_or_yaml_path)
    if source in PRESETS:
        tree: dict[str, Any] = {"preset": source}
    elif Path(source).is_file():
        tree = _read_yaml(Path(source))
    else:
        raise ConfigError(
            f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor an existing YAML file"
        )
    preset = tree.get("preset", "hand-r101")
    if preset not in PRESETS:
        raise ConfigError(f"preset: unknown preset {preset!r}; choose one of {list(PRESETS)}")
    merged = _merge(copy.deepcopy(PRESETS[preset]), copy.deepcopy(tree))
    for key, value in (overrides or {}).items():
        _set_dotted(merged, key, value)
    config = _build(Config, merged, "")
    config.validate()
    return config


def config_from_dict(tree: dict[str, Any]) -> Config:
    """The inverse of `Config.to_dict`, validated: how a config travels to worker processes."""
    config = _build(Config, copy.deepcopy(tree), "")
    config.validate()
    return config


def updated_serve_config(base: ServeConfig, changes: dict[str, Any]) -> ServeConfig:
    """`base` with some keys changed (a Serve deployment's `user_config`), checked like any
    config; unknown keys and bad values raise ConfigError naming `serve.KEY`."""
    tree = _merge(_plain(dataclasses.asdict(base)), copy.deepcopy(dict(changes)))
    serve = _build(ServeConfig, tree, "serve")
    serve.validate()
    return serve


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """A validated copy of `config` with dotted-key overrides applied (a sweep's trial)."""
    tree = config.to_dict()
    for key, value in overrides.items():
        _set_dotted(tree, key, value)
    return config_from_dict(tree)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["train.learning_rate=0.002", ...]`` into a dict; values are parsed as YAML."""
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.learning_rate=0.002")
        try:
            overrides[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({err})") from None
    return overrides


def dump_config(config: Config) -> str:
    """The config as YAML text that `load_config` reads back to an equal Config."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)


def save_config(config: Config, path: str | Path) -> None:
    """Write the config YAML atomically (stored next to checkpoints and exports)."""
    with atomic_write(path) as handle:
        handle.write(dump_config(config))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections, not {type(tree).__name__}"
        )
    return tree


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Apply `changes` onto `base` section by section (both are owned by the caller)."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {part!r} is a value, not a section")
    node[leaf] = value


def _build(cls: type, values: Any, path: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, checking keys and value types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in values if key not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
        raise ConfigError(f"unknown key {_join(path, key)!r}{hint}")
    kwargs = {key: _coerce(hints[key], value, _join(path, key)) for key, value in values.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:  # checked where it is used (tune.extra: by the keys it sets)
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
        return tuple(
            _coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_describe(value)}")
        return {str(k): _coerce(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if origin in (types.UnionType, typing.Union):
        raise TypeError(f"{path}: union types are not supported in the config")
    return _scalar(hint, value, path)


def _scalar(hint: type, value: Any, path: str) -> Any:
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (bool, str) and isinstance(value, hint):
        return value
    raise ConfigError(f"{path}: expected {hint.__name__}, got {_describe(value)}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


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


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so YAML holds plain lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
