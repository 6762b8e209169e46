"""Named starting points: each preset is a set of changes to the defaults in `schema`."""

from typing import Any

# Named anchor-scale sets that `handray tune` chooses among: the side in pixels of the square
# anchor at each pyramid level, P2 first. Hands are small, so the hand sets start lower than
# COCO's, which the old model used on images upscaled 2.5x.
ANCHOR_SETS: dict[str, tuple[int, ...]] = {
    "hand-small": (8, 16, 32, 64, 128),
    "hand-medium": (16, 32, 64, 128, 256),
    "coco": (32, 64, 128, 256, 512),
}

# The old recipe: heads, then ResNet stage 4 and up, then everything at a tenth of the rate.
OLD_RECIPE = {
    "epochs": 160,
    "stages": {"heads": 40, "4+": 120, "all": 160},
    "lr_decay_epochs": [120],
}

# Hands are small for their pyramid level: two anchor sizes per level and a 0.5 positive IoU give
# every hand several positive anchors instead of about one (benchmarks/anchors.py).
HAND_ANCHOR_MATCHING = {"rpn_anchor_octaves": [1.0, 2**0.5], "rpn_positive_iou": 0.5}

# Each preset is a set of changes to the schema's defaults (which are `hand-r101`).
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
            # Gaussian targets on a 14x14 grid; the box's pixels joined to reduced features;
            # two thin convs: 0.93x the backbone's cost for 20 detections
            # (benchmarks/keypoint_head.py).
            "keypoint_head_reduction": 16,
            "keypoint_pixels": 16,
            "keypoint_head_convs": 2,
            "keypoint_head_channels": 32,
            "keypoint_upsample": 1,
            "keypoint_sigma": 1.0,
            "detection_min_confidence": 0.5,
            "side_head": True,
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
            # The old model trained with flips only: no photo-like appearance changes either.
            "appearance": {
                "noise_prob": 0.0,
                "blur_prob": 0.0,
                "jpeg_prob": 0.0,
                "hue_saturation_prob": 0.0,
                "grey_prob": 0.0,
            },
        },
        "model": {
            "num_classes": 2,
            "class_names": ["hand"],
            "rpn_anchor_scales": [32, 64, 128, 256, 512],
            "detection_max_instances": 100,
            "detection_per_class": False,
            "num_keypoints": 0,  # the old model had no keypoint head
        },
        "train": OLD_RECIPE,
    },
}
