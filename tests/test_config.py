import logging
import math
import re

import pytest

from handray.config import (
    LAYER_SELECTIONS,
    LAYER_STAGES,
    PRESETS,
    Config,
    config_from_dict,
    dump_config,
    load_config,
    parse_overrides,
    save_config,
    with_overrides,
)
from handray.core.errors import ConfigError


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_validates_and_round_trips_through_yaml(preset, tmp_path):
    config = load_config(preset)
    assert config.preset == preset
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_presets_carry_the_documented_architectures():
    r101, r50, tiny, old = (load_config(p) for p in ("hand-r101", "hand-r50", "tiny", "matterport"))
    assert (r101.model.backbone, r101.data.image_size) == ("resnet101", 512)
    assert (r50.model.backbone, r50.data.image_size) == ("resnet50", 512)
    assert r101.model.rpn_anchor_scales == r50.model.rpn_anchor_scales == (16, 32, 64, 128, 256)
    assert tiny.model.backbone == "tiny" and tiny.data.image_size <= 128
    assert old.model.backbone == "resnet101"
    assert (old.data.image_size, old.data.min_dim) == (1024, 800)
    assert old.model.rpn_anchor_scales == (32, 64, 128, 256, 512)
    assert old.model.num_classes == 2 and old.model.class_names == ("hand",)


def test_overrides_from_the_command_line_are_typed():
    overrides = parse_overrides(
        [
            "train.learning_rate=0.002",
            "model.rpn_anchor_scales=[8, 16, 32, 64, 128]",
            "train.train_bn=true",
            "data.image_size=256",
        ]
    )
    config = load_config("hand-r50", overrides)
    assert config.train.learning_rate == 0.002
    assert config.model.rpn_anchor_scales == (8, 16, 32, 64, 128)
    assert config.train.train_bn is True
    assert config.data.image_size == 256
    assert isinstance(load_config("tiny", {"train.learning_rate": 1}).train.learning_rate, float)


def test_yaml_file_may_start_from_a_preset_and_change_a_few_keys(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: tiny\ntrain:\n  epochs: 3\nmodel:\n  detection_max_instances: 5\n")
    config = load_config(path, {"train.epochs": 4})
    assert config.model.backbone == "tiny"
    assert config.train.epochs == 4
    assert config.model.detection_max_instances == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"train.learnin_rate": 0.1},
            "unknown key 'train.learnin_rate'; did you mean 'learning_rate'",
        ),
        ({"trian.epochs": 1}, "unknown key 'trian'"),
        ({"train.learning_rate": "fast"}, "train.learning_rate: expected float, got str"),
        ({"train.epochs": 2.5}, "train.epochs: expected int"),
        ({"train.train_bn": 1}, "train.train_bn: expected bool"),
        ({"data.image_size": 500}, "data.image_size: must be a positive multiple of 64"),
        ({"model.backbone": "vgg16"}, "model.backbone: 'vgg16' is not one of"),
        ({"model.rpn_anchor_scales": [16, 32]}, "one scale per pyramid level"),
        ({"model.num_classes": 4}, "model.class_names: has 2 names but model.num_classes=4"),
        ({"model.mask_shape": [28]}, "model.mask_shape: expected 2 values"),
        ({"data.scale_jitter": [1.2, 0.8]}, "data.scale_jitter: must be"),
        ({"train.loss_weights": {"mask": 2.0}}, "unknown loss"),
        ({"train.layers": "(("}, "nor a valid regular expression"),
        ({"train.momentum.value": 1}, "train.momentum: expected float, got dict"),
        ({"train.epochs.value": 1}, "train.epochs.value: 'epochs' is a value, not a section"),
        ({"train.stages": {"heads": 5, "all": 3}}, "train.stages: last epochs must be"),
        ({"train.stages": {"((": 5}}, "nor a valid regular expression"),
        ({"train.lr_decay_epochs": [5, 2]}, "train.lr_decay_epochs: must be increasing"),
        ({"tune.anchor_sets": ["hand-small", "huge"]}, "unknown anchor set 'huge'; known sets"),
        ({"tune.anchor_sets": []}, "tune.anchor_sets: must name at least one"),
        ({"tune.metric": "accuracy"}, "tune.metric: 'accuracy' is not one of"),
        ({"tune.learning_rate": [0.01, 0.001]}, "tune.learning_rate: must be [low, high]"),
        ({"tune.extra": {"train.weight_decay": []}}, "tune.extra.train.weight_decay: needs"),
        ({"tune.extra": {"train.learning_rate": [0.1]}}, "is set by the sweep itself"),
        ({"tune.reduction_factor": 1}, "tune.reduction_factor: must be above 1"),
        ({"model.rpn_positive_iou": 0.2}, "model.rpn_negative_iou: must not exceed"),
        ({"model.rpn_positive_iou": 1.5}, "model.rpn_positive_iou: must be within (0, 1]"),
        ({"model.rpn_anchor_octaves": []}, "model.rpn_anchor_octaves: must be a non-empty"),
        ({"model.roi_hard_negative_fraction": 2.0}, "model.roi_hard_negative_fraction: must"),
        ({"model.roi_positive_jitter": -1}, "model.roi_positive_jitter: must be >= 0"),
        ({"model.norm": "layer"}, "model.norm: 'layer' is not one of"),
        ({"train.optimizer": "lamb"}, "train.optimizer: 'lamb' is not one of"),
        ({"train.precision": "bf16"}, "train.precision: 'bf16' is not one of"),
        ({"serve.precision": "float64"}, "serve.precision: 'float64' is not one of"),
        ({"train.mixed_precision": "yes"}, "train.mixed_precision: expected true or false"),
    ],
)
def test_bad_values_are_named_with_what_to_do(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config("hand-r101", overrides)


def test_unknown_preset_or_file_and_bad_override_syntax():
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config("hand-r152")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["train.learning_rate"])


def test_loss_weights_keep_unnamed_losses_at_one():
    config = load_config("tiny", {"train.loss_weights": {"mrcnn_mask_loss": 2.0}})
    assert config.train.loss_weights["mrcnn_mask_loss"] == 2.0
    assert config.train.loss_weights["rpn_class_loss"] == 1.0


def test_dump_is_plain_yaml_with_every_section():
    text = dump_config(Config())
    for section in ("data:", "model:", "train:", "serve:", "tune:"):
        assert f"\n{section}" in text
    assert "!!python" not in text


def test_old_files_with_retired_serve_address_load_with_one_warning(tmp_path, caplog):
    path = tmp_path / "handray.yaml"
    path.write_text("preset: tiny\nserve: {host: 0.0.0.0, port: 9000, min_score: 0.4}\n")
    with caplog.at_level(logging.WARNING, logger="handray.config"):
        config = load_config(path)
    assert config == load_config("tiny", {"serve.min_score": 0.4})
    (warning,) = caplog.records
    assert "serve.host, serve.port" in warning.message
    assert "serve_config.yaml's http_options" in warning.message
    with pytest.raises(ConfigError, match="unknown key 'serve.hostname'"):
        load_config("tiny", {"serve.hostname": "0.0.0.0"})


def test_the_old_mixed_precision_key_keeps_its_meaning(tmp_path):
    """Files from before `train.precision` said float16 or float32 with a bool."""
    path = tmp_path / "handray.yaml"
    cases = [("hand-r50", True, "mixed_float16"), ("hand-r50", False, "float32")]
    cases += [("tiny", True, "mixed_float16"), ("tiny", False, "float32")]
    for preset, old, meant in cases:
        path.write_text(f"preset: {preset}\ntrain: {{mixed_precision: {str(old).lower()}}}\n")
        config = load_config(path)
        assert config.train.precision == meant, (preset, old)
        assert "mixed_precision" not in dump_config(config)  # written back under its new name
    # As an override of a full tree (a checkpoint's config, a trial's), the old key wins.
    tree = load_config("tiny", {"train.precision": "mixed_bfloat16"})
    assert with_overrides(tree, {"train.mixed_precision": True}).train.precision == "mixed_float16"
    halved = load_config("tiny", {"train.precision": "mixed_float16"})
    assert with_overrides(halved, {"train.mixed_precision": False}).train.precision == "float32"
    assert with_overrides(tree, {"train.mixed_precision": False}) == tree  # not float16 already


def test_stage_names_are_the_layer_selections():
    assert LAYER_STAGES == tuple(LAYER_SELECTIONS) == ("heads", "3+", "4+", "5+", "all")
    assert all(re.compile(pattern) for pattern in LAYER_SELECTIONS.values())


def test_to_dict_is_plain_and_every_value_survives_a_round_trip(tmp_path):
    config = load_config("tiny", {"tune.extra": {"train.gradient_clip_norm": [1.0, math.inf]}})
    tree = config.to_dict()
    assert tree["model"]["rpn_anchor_scales"] == [8, 16, 32, 64, 128]
    assert config_from_dict(tree) == config
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").tune.extra == {
        "train.gradient_clip_norm": (1.0, math.inf)
    }
