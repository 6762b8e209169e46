"""What the keypoint head adds to `detect`: hand-r50 at 512x512, 20 detections per image.

Two models of the same preset, one without the head (`model.num_keypoints: 0`) and one with it,
share every other weight; both keep all 20 detection slots filled (score threshold 0), so the
heads run on the same boxes. `detect` is timed interleaved (see `inference.interleaved_medians`),
and the head's own stage (ROI Align at 14x14, the head, heatmap decoding) is timed alone.

Target: the keypoint head adds at most 15 % to `detect` for hand-r50 at 512 (20 detections).

First, a table of candidate head shapes for `tiny` (`CANDIDATES`: 1x1 reduction, 3x3 convs,
upsampling, pool), counted from the layers: FLOPs per detection and for 20 detections against
tiny's backbone+FPN per image. Target: tiny's head for 20 detections costs no more than that.
`--flops-only` prints only the table (seconds, nothing timed).

    .venv/bin/python benchmarks/keypoint_head.py [--preset hand-r50] [--repeats 5] [--flops-only]
"""

from __future__ import annotations

import argparse
import os
from functools import partial

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from inference import head_flops, images, interleaved_medians, model_flops

from handray.config import load_config
from handray.inference.predictor import Predictor
from handray.inference.thresholds import Thresholds
from handray.model import build_model
from handray.model.heads.keypoint import KeypointHead, decode_heatmaps
from handray.model.norm import Norm

TARGET = 0.15  # the head's share of detect's time, at most
DETECTIONS = 20
# Keypoint head shapes for `tiny` (FPN 64 channels, 21 keypoints), as config overrides:
# (pool, 1x1 reduction (0: none), 3x3 convs, their channels, upsample, pixel branch channels).
# The first was tiny's head before the Gaussian targets; the last is tiny's now.
CANDIDATES = (
    (14, 0, 4, 64, 4, 0),
    (14, 0, 2, 32, 4, 0),
    (14, 0, 2, 32, 2, 0),
    (14, 0, 2, 32, 1, 0),
    (14, 0, 2, 24, 1, 0),
    (14, 32, 2, 32, 2, 0),
    (14, 32, 2, 32, 1, 0),
    (14, 32, 3, 32, 1, 0),
    (14, 16, 2, 32, 1, 0),
    (14, 16, 3, 32, 1, 0),
    (7, 0, 4, 64, 2, 0),
    (7, 0, 2, 32, 2, 0),
    (14, 32, 2, 32, 1, 16),
    (14, 16, 2, 32, 1, 16),
)


def candidate_table(preset: str = "tiny") -> None:
    """Print each candidate head's weights and FLOPs for `DETECTIONS` detections next to the
    preset's backbone+FPN FLOPs per image: the head should not cost more than the backbone."""
    config = load_config(preset)
    size = config.data.image_size
    backbone = model_flops(build_model(config).features, (1, size, size, 3))
    print(
        f"{preset} keypoint head candidates, {DETECTIONS} detections; backbone+FPN "
        f"{backbone / 1e9:.3f} GFLOP per {size}x{size} image\n"
    )
    print(
        "| pool | 1x1 reduction | 3x3 convs | upsample (heatmap) | pixel branch | weights "
        f"| MFLOP/detection | GFLOP/{DETECTIONS} | x backbone |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for pool, reduction, convs, width, upsample, pixels in CANDIDATES:
        settings = load_config(
            preset,
            {
                "model.keypoint_pool_size": pool,
                "model.keypoint_head_reduction": reduction,
                "model.keypoint_head_convs": convs,
                "model.keypoint_head_channels": width,
                "model.keypoint_upsample": upsample,
                "model.keypoint_pixels": pixels,
            },
        ).model
        head = KeypointHead(settings, Norm()).network
        flops = head_flops(head, DETECTIONS)
        side = pool * upsample
        print(
            f"| {pool} | {reduction or '-'} | {convs} x {width} | {upsample} ({side}x{side}) "
            f"| {pixels or '-'} | {head.count_params():,} | {flops / DETECTIONS / 1e6:.2f} "
            f"| {flops / 1e9:.3f} | {flops / backbone:.2f} |"
        )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="hand-r50")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--flops-only", action="store_true", help="only the candidates' table")
    args = parser.parse_args()
    candidate_table()
    if args.flops_only:
        return
    slots = {"model.detection_max_instances": DETECTIONS}
    head_config = load_config(args.preset, slots)
    with_head = build_model(head_config)
    config = load_config(args.preset, {**slots, "model.num_keypoints": 0})
    without = build_model(config)
    for layer in without.leaf_layers():
        if layer.weights:
            layer.set_weights(with_head.get_layer(layer.name).get_weights())
    image = images(1, config.data.image_size)
    everything = Thresholds(min_score=0.0, evaluation_min_score=0.0, mask=0.5)
    predictors = {
        "without": Predictor(without, everything),
        "with": Predictor(with_head, everything),
    }
    detect = {name: partial(p.detect, image) for name, p in predictors.items()}
    (result,) = predictors["with"].detect(image)
    assert len(result.scores) == DETECTIONS, "every detection slot must be filled"

    boxes = tf.constant(result.boxes[None] / config.data.image_size, tf.float32)
    keypoint = with_head.roi_head("keypoints")
    padded = tf.zeros([1, config.data.image_size, config.data.image_size, 3])
    pyramid = with_head._pyramid(padded, training=False)

    @tf.function(jit_compile=True, autograph=False)
    def keypoint_stage(pyramid, boxes):
        heatmaps = keypoint.run(
            pyramid, boxes, config.data.image_size, training=False, images=padded
        )
        return decode_heatmaps(heatmaps, boxes)

    seconds = interleaved_medians(
        {**detect, "stage": partial(keypoint_stage, pyramid, boxes)}, args.repeats
    )
    gflop = head_flops(keypoint.network, DETECTIONS) / 1e9
    added = seconds["with"] / seconds["without"] - 1.0
    share = seconds["stage"] / seconds["with"]
    settings = head_config.model
    print(
        f"{args.preset} at {config.data.image_size}, {DETECTIONS} detections, keypoint head "
        f"{keypoint.network.count_params():,} weights "
        f"({settings.keypoint_head_convs} convs of {settings.keypoint_head_channels}), "
        f"{gflop:.2f} GFLOP; "
        f"median of {args.repeats}\n"
    )
    print("| measure | value |\n|---|---|")
    print(f"| detect without the head | {1e3 * seconds['without']:.0f} ms |")
    print(f"| detect with the head | {1e3 * seconds['with']:.0f} ms |")
    print(f"| added by the head | {100 * added:+.1f} % (target <= {100 * TARGET:.0f} %) |")
    print(
        f"| keypoint stage alone (ROI Align {settings.keypoint_pool_size}x"
        f"{settings.keypoint_pool_size}, head, decode) | {1e3 * seconds['stage']:.0f} ms = "
        f"{100 * share:.1f} % of detect |"
    )
    print(f"\ntarget {'met' if max(added, share) <= TARGET else 'MISSED'}")
    np.testing.assert_array_equal(  # the same boxes with and without the head
        predictors["without"].detect(image)[0].boxes, result.boxes
    )


if __name__ == "__main__":
    main()
