"""What the keypoint head adds to `detect`: hand-r50 at 512x512, 20 detections per image.

Two models of the same preset, one without the head (`model.num_keypoints: 0`) and one with it,
share every other weight; both keep all 20 detection slots filled (score threshold 0), so the
heads run on the same boxes. `detect` is timed interleaved (see `inference.interleaved_medians`),
and the head's own stage (ROI Align at 14x14, the head, heatmap decoding) is timed alone.

Target: the keypoint head adds at most 15 % to `detect` for hand-r50 at 512 (20 detections).

    .venv/bin/python benchmarks/keypoint_head.py [--preset hand-r50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
from functools import partial

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from inference import images, interleaved_medians, model_flops

from handray.config import load_config
from handray.inference.predictor import Predictor
from handray.inference.thresholds import Thresholds
from handray.model import build_model
from handray.model.heads.keypoint import decode_heatmaps

TARGET = 0.15  # the head's share of detect's time, at most
DETECTIONS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="hand-r50")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
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

    @tf.function(jit_compile=True)
    def keypoint_stage(pyramid, boxes):
        heatmaps = keypoint.run(pyramid, boxes, config.data.image_size, training=False)
        return decode_heatmaps(heatmaps, boxes)

    seconds = interleaved_medians(
        {**detect, "stage": partial(keypoint_stage, pyramid, boxes)}, args.repeats
    )
    head_in = tuple(keypoint.network.inputs[0].shape[1:])
    gflop = model_flops(keypoint.network, (DETECTIONS, *head_in)) / 1e9
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
