"""`Predictor.detect` latency against the machine's dense matmul rate (the "FLOP floor").

Measures, in one run: the float32 matmul rate of this machine; the model's convolution and
dense FLOPs per image, counted from the layers' configs and shapes; `detect` latency with and
without XLA for batches 1 and 4; and a per-stage breakdown of hand-r101 and hand-r50, batch 1,
the keypoint head its own stage. Random weights, synthetic RHD-like images; nothing is
downloaded.

Targets, at 512x512, batch 1, in the default compile mode: hand-r101 within 1.3x of the FLOP
floor (latency <= 1.3 * FLOPs / matmul rate), hand-r50 within 1.2x.

    .venv/bin/python benchmarks/inference.py [--repeats 5] [--skip-breakdown] [--presets ...]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from handray.config import Config, load_config
from handray.core.geometry import resize_and_pad
from handray.data.synthetic import render_sample
from handray.inference.predictor import Predictor
from handray.inference.thresholds import Thresholds
from handray.model.heads.keypoint import decode_heatmaps
from handray.model.maskrcnn import MaskRCNN, build_model
from handray.model.roi_align import pyramid_roi_align
from handray.model.rpn import run_rpn

# Latency / FLOP floor at 512, batch 1, default compile mode, per preset with a target.
TARGETS = {"hand-r101": 1.3, "hand-r50": 1.2}
# Source image side per preset: RHD is 320x320; tiny's test images are its own input size.
SOURCES = {"hand-r101": 320, "hand-r50": 320, "tiny": 128}
BATCHES = (1, 4)
# build_model's jit_compile modes: the default "auto" (on a CPU: backbone and RPN as plain
# TensorFlow, the rest XLA-compiled), the whole step XLA-compiled, and no XLA at all.
MODE_LABELS = {"auto": "auto", True: "on", False: "off"}


# ----- timing ------------------------------------------------------------------------------


def interleaved_medians(
    calls: dict[object, Callable[[], object]], repeats: int, warmup: int = 2
) -> dict[object, float]:
    """Median wall time of each call over `repeats` rounds that run every call once in turn,
    after `warmup` untimed calls each (the first compiles). Interleaving spreads the drift of a
    shared machine over all calls alike, so their ratios hold even when the absolute time moves.
    """
    for fn in calls.values():
        for _ in range(warmup):
            _block(fn())
    times: dict[object, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            start = time.perf_counter()
            _block(fn())
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def _block(result: object) -> None:
    """Wait for every tensor in `result` (CPU ops are synchronous, but be explicit)."""
    for value in tf.nest.flatten(result):
        if isinstance(value, tf.Tensor):
            value.numpy()


def matmul_rates(sizes: tuple[int, ...] = (2048, 4096), repeats: int = 5) -> dict[int, float]:
    """Best-of-`repeats` float32 GFLOP/s of an n x n by n x n `tf.matmul` (2 n^3 FLOPs)."""
    rates = {}
    for n in sizes:
        a = tf.random.normal([n, n], dtype=tf.float32, seed=1)
        b = tf.random.normal([n, n], dtype=tf.float32, seed=2)
        for _ in range(2):
            tf.matmul(a, b).numpy()
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            tf.matmul(a, b).numpy()
            best = min(best, time.perf_counter() - start)
        rates[n] = 2.0 * n**3 / best / 1e9
    return rates


# ----- FLOPs, from the layers ---------------------------------------------------------------


def layer_shapes(sub_model: keras.Model, input_shapes: tuple | list[tuple]):
    """(layer, input shape(s), output shape) of every call of a layer in a functional model, for
    concrete input shapes (one tuple, or one per input of a model with several): each call's
    `compute_output_shape` on its inputs' shapes, in graph order. A layer applied twice (shared
    weights, as the side head's mirrored score) is counted twice."""
    if isinstance(input_shapes, tuple):
        input_shapes = [input_shapes]
    shapes = {id(t): tuple(shape) for t, shape in zip(sub_model.inputs, input_shapes, strict=True)}
    rows = []
    for depth in sorted(sub_model._nodes_by_depth, reverse=True):
        for node in sub_model._nodes_by_depth[depth]:
            layer = node.operation
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if isinstance(layer, keras.Model):
                raise TypeError(f"nested model {layer.name} inside {sub_model.name}: not walked")
            tensors = node.arguments.keras_tensors
            inputs = [shapes[id(t)] for t in tensors]
            inputs = inputs[0] if len(inputs) == 1 else inputs
            (output,) = node.outputs
            shapes[id(output)] = tuple(layer.compute_output_shape(inputs))
            rows.append((layer, inputs, shapes[id(output)]))
    return rows


def layer_flops(layer: keras.layers.Layer, in_shape, out_shape) -> int:
    """Multiply-add FLOPs (2 per multiply-accumulate) of a conv, transposed conv or dense layer;
    0 for layers without a kernel. Biases, activations and batch norm are not counted."""
    if isinstance(layer, keras.layers.Conv2DTranspose):
        kh, kw = layer.kernel_size
        # Every input element is scattered through a kh x kw x filters kernel.
        return 2 * math.prod(in_shape[:-1]) * in_shape[-1] * kh * kw * layer.filters
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        return 2 * math.prod(out_shape) * kh * kw * in_shape[-1] // layer.groups
    if isinstance(layer, keras.layers.Dense):
        return 2 * math.prod(out_shape[:-1]) * in_shape[-1] * layer.units
    if any("kernel" in w.path for w in layer.weights):
        raise TypeError(f"no FLOP formula for {type(layer).__name__} {layer.name}")
    return 0


def model_flops(sub_model: keras.Model, input_shapes: tuple | list[tuple]) -> int:
    """FLOPs of one call of `sub_model` on inputs of these shapes (first axes included)."""
    return sum(layer_flops(*row) for row in layer_shapes(sub_model, input_shapes))


def head_flops(network: keras.Model, detections: int) -> int:
    """FLOPs of a ROI head's network on `detections` boxes, each input at its own shape."""
    return model_flops(network, [(detections, *t.shape[1:]) for t in network.inputs])


def stage_flops(model: MaskRCNN, config: Config) -> dict[str, int]:
    """FLOPs per image of each stage of the graph that `predict_padded` runs."""
    size, settings = config.data.image_size, config.model
    levels = [tuple(o.shape[1:]) for o in model.features.outputs]  # P2..P6 (H, W, C)
    box = model.box_head.network
    box_in = tuple(box.inputs[0].shape[1:])
    detections = settings.detection_max_instances
    flops = {
        "backbone+FPN": model_flops(model.features, (1, size, size, 3)),
        "RPN heads": sum(model_flops(model.rpn, (1, *level)) for level in levels),
        "box head": model_flops(box, (settings.post_nms_rois_inference, *box_in)),
    }
    for head in model.roi_heads:  # "side_score head", "mask head", "keypoint head"
        name = f"{head.output.removesuffix('s')} head"
        flops[name] = head_flops(head.network, detections)
    return flops


# ----- inputs --------------------------------------------------------------------------------


def images(count: int, side: int) -> list[np.ndarray]:
    """RHD-like synthetic uint8 RGB images (hands, forearms, distractors, noise)."""
    return [render_sample(7, "val", index, side)[0] for index in range(count)]


# ----- the benchmarks ------------------------------------------------------------------------


@dataclass
class Row:
    preset: str
    source: int  # side of the square source images
    size: int  # model input side
    batch: int
    xla: object  # compile mode: "auto", True or False
    gflop: float  # per image
    seconds: float  # per batch


Stage = tuple[str, "float | None", float]  # (name, GFLOP per image or None, seconds)


def detector(model: MaskRCNN, config: Config):
    """`Predictor.detect` of `model`, keeping what the config's cut-off keeps
    (`model.detection_min_confidence`), as this benchmark always has."""
    cut = config.model.detection_min_confidence
    return Predictor(model, Thresholds(cut, cut, config.serve.mask_threshold)).detect


def detect_rows(
    config: Config, source: int, models: dict[object, MaskRCNN], gflop: float, repeats: int
) -> list[Row]:
    """`detect` latency of each batch size, every compile mode interleaved."""
    preset, size = config.preset, models[True].image_size
    rows = []
    for batch in BATCHES:
        batch_images = images(batch, source)
        # Fewer rounds for the large model's batch 4: each call takes seconds.
        rounds = max(3, repeats - 2) if batch > 1 and preset != "tiny" else repeats
        calls = {
            xla: partial(detector(model, config), batch_images) for xla, model in models.items()
        }
        for xla, seconds in interleaved_medians(calls, rounds).items():
            rows.append(Row(preset, source, size, batch, xla, gflop, seconds))
    return rows


def breakdown(
    models: dict[bool, MaskRCNN], config: Config, repeats: int
) -> dict[bool, list[Stage]]:
    """Per-stage times of the model built from `config` on one 320x320 image, XLA on and off:
    each stage is its own warmed-up tf.function (compiled like the model) on the real
    intermediate tensors."""
    settings, size = config.model, config.data.image_size
    flops = stage_flops(models[True], config)
    image = images(1, 320)
    # The padded square and window exactly as `detect` prepares them.
    padded, window, _ = resize_and_pad(tf.convert_to_tensor(image[0]), size, config.data.min_dim)
    padded, windows = padded[None], window[None]
    rois_count, masks_count = settings.post_nms_rois_inference, settings.detection_max_instances

    names = {
        "features": ("backbone+FPN (model.features)", flops["backbone+FPN"]),
        "rpn": ("RPN heads, P2..P6", flops["RPN heads"]),
        "proposals": (f"proposals: top-{settings.pre_nms_limit}, decode, NMS", None),
        "box_align": (
            f"ROI align, {rois_count} ROIs, {settings.pool_size}x{settings.pool_size}",
            None,
        ),
        "box_head": (f"box head, {rois_count} ROIs", flops["box head"]),
        "mask_align": (
            f"ROI align, {masks_count} ROIs, {settings.mask_pool_size}x{settings.mask_pool_size}",
            None,
        ),
        "mask_head": (f"mask head, {masks_count} ROIs", flops["mask head"]),
        "keypoint_align": (
            f"ROI align for keypoints, {masks_count} ROIs, {settings.keypoint_pool_size}x"
            f"{settings.keypoint_pool_size}",
            None,
        ),
        "keypoint_head": (
            f"keypoint head + heatmap decoding, {masks_count} ROIs",
            flops["keypoint head"],
        ),
    }
    calls = {}
    for xla, model in models.items():
        stage_calls = _stage_calls(model, config, xla, image, padded, windows)
        calls.update({(xla, key): fn for key, fn in stage_calls.items()})
    seconds = interleaved_medians(calls, repeats)

    total_flops = sum(flops.values())
    tables = {}
    for xla in models:
        table: list[Stage] = [(name, f, seconds[xla, key]) for key, (name, f) in names.items()]
        parts = sum(s for _, _, s in table)
        whole, detect = seconds[xla, "whole"], seconds[xla, "detect"]
        table += [
            ("sum of the stages above", total_flops, parts),
            ("predict_padded, one call", total_flops, whole),
            ("  predict_padded - sum (refine, glue, fusion)", None, whole - parts),
            ("  detect - predict_padded (resize, paste)", None, detect - whole),
            ("detect, total", total_flops, detect),
        ]
        tables[xla] = [(name, None if f is None else f / 1e9, s) for name, f, s in table]
    return tables


def _stage_calls(
    model: MaskRCNN,
    config: Config,
    xla: bool,
    image: list[np.ndarray],
    padded: tf.Tensor,
    windows: tf.Tensor,
) -> dict[str, Callable[[], object]]:
    """Zero-argument calls of each stage of `model` on the intermediate tensors of `padded`."""
    settings, size = config.model, config.data.image_size
    normalised = tf.cast(windows, tf.float32) / float(size)

    def compiled(fn):
        return tf.function(fn, jit_compile=xla, autograph=False)

    def proposals_fn(probs, deltas):
        return model._proposals(probs, deltas, normalised, settings.post_nms_rois_inference)

    features = compiled(lambda x: model._pyramid(x, training=False))
    rpn = compiled(lambda pyramid: run_rpn(model.rpn, pyramid))
    proposals = compiled(proposals_fn)
    box_align = compiled(
        lambda pyramid, boxes: pyramid_roi_align(pyramid[:4], boxes, settings.pool_size, size)
    )
    mask_align = compiled(
        lambda pyramid, boxes: pyramid_roi_align(pyramid[:4], boxes, settings.mask_pool_size, size)
    )
    box_head = compiled(lambda pooled: model.box_head.network(pooled[0], training=False))
    mask_head = compiled(lambda pooled: model.roi_head("masks").network(pooled[0], training=False))
    keypoint_align = compiled(
        lambda pyramid, boxes: pyramid_roi_align(
            pyramid[:4], boxes, settings.keypoint_pool_size, size
        )
    )

    def keypoint_fn(pooled, boxes):
        heatmaps = model.roi_head("keypoints").network(pooled[0], training=False)
        return decode_heatmaps(heatmaps, boxes[0])

    keypoint_head = compiled(keypoint_fn)

    pyramid = features(padded)
    _, probs, deltas = rpn(pyramid)
    rois, _ = proposals(probs, deltas)
    boxes = rois[:, : settings.detection_max_instances]  # stand-ins for the detections
    return {
        "features": partial(features, padded),
        "rpn": partial(rpn, pyramid),
        "proposals": partial(proposals, probs, deltas),
        "box_align": partial(box_align, pyramid, rois),
        "box_head": partial(box_head, box_align(pyramid, rois)),
        "mask_align": partial(mask_align, pyramid, boxes),
        "mask_head": partial(mask_head, mask_align(pyramid, boxes)),
        "keypoint_align": partial(keypoint_align, pyramid, boxes),
        "keypoint_head": partial(keypoint_head, keypoint_align(pyramid, boxes), boxes),
        "whole": partial(
            model.predict_padded, padded, windows, tf.constant(settings.detection_min_confidence)
        ),
        "detect": partial(detector(model, config), image),
    }


# ----- report --------------------------------------------------------------------------------


def print_rows(rows: list[Row], rate: float) -> None:
    print("| model     | input    | batch | XLA  | GFLOP/img | ms/batch | ms/img | x FLOP floor |")
    print("|-----------|----------|-------|------|-----------|----------|--------|--------------|")
    for row in rows:
        ratio = row.seconds / (row.gflop * row.batch / rate)
        mark = ""
        if row.preset in TARGETS and row.batch == 1 and row.xla == "auto":
            mark = "met" if ratio <= TARGETS[row.preset] else "MISSED"
        cells = [
            f"{row.preset:<9}",
            f"{f'{row.source}->{row.size}':<8}",
            f"{row.batch:>5}",
            f"{MODE_LABELS[row.xla]:<4}",
            f"{row.gflop:>9.2f}",
            f"{1e3 * row.seconds:>8.1f}",
            f"{1e3 * row.seconds / row.batch:>6.1f}",
            f"{ratio:>5.2f} {mark:<6}",
        ]
        print(f"| {' | '.join(cells)} |")


def print_stages(preset: str, xla: bool, table: list[Stage], rate: float) -> None:
    total = table[-1][2]
    print(f"{preset}, 320->512, batch 1, XLA {'on' if xla else 'off'}: stages")
    print(
        f"| {'stage':<46} | GFLOP  |     ms | GFLOP/s | x floor | share |\n"
        f"|{'-' * 48}|--------|--------|---------|---------|-------|"
    )
    for name, gflop, seconds in table:
        if gflop:
            rate_cells = f"{gflop / seconds:>7.1f} | {seconds / (gflop / rate):>7.2f}"
            flop_cell = f"{gflop:>6.2f}"
        else:
            rate_cells, flop_cell = f"{'-':>7} | {'-':>7}", f"{'-':>6}"
        ms = f"{1e3 * seconds:>6.1f}"
        print(
            f"| {name:<46} | {flop_cell} | {ms} | {rate_cells} | {100 * seconds / total:>4.0f}% |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per row (median)")
    parser.add_argument("--skip-breakdown", action="store_true", help="no per-stage tables")
    parser.add_argument(
        "--presets", nargs="+", choices=list(SOURCES), default=list(SOURCES), help="models to time"
    )
    args = parser.parse_args()
    started = time.perf_counter()

    rates = matmul_rates()
    rate = max(rates.values())  # GFLOP/s
    rows, stages = [], {}
    for preset in args.presets:
        config = load_config(preset)
        models = {mode: build_model(config, jit_compile=mode) for mode in MODE_LABELS}
        gflop = sum(stage_flops(models[True], config).values()) / 1e9
        rows += detect_rows(config, SOURCES[preset], models, gflop, args.repeats)
        if preset in TARGETS and not args.skip_breakdown:
            tables = breakdown({xla: models[xla] for xla in (True, False)}, config, args.repeats)
            stages.update({(preset, xla): table for xla, table in tables.items()})
        del models  # the next preset's three models need the memory

    matmul = ", ".join(f"n={n}: {r:.1f}" for n, r in rates.items())
    print(
        f"tensorflow {tf.__version__}, keras {keras.__version__}, {os.cpu_count()} CPU cores\n"
        f"float32 tf.matmul GFLOP/s (n x n, best of 5): {matmul}; the floor uses {rate:.1f}\n"
        f"x FLOP floor = latency / (GFLOP/img * batch / {rate:.1f} GFLOP/s); "
        "targets, batch 1, default compile mode (auto): "
        + ", ".join(f"{preset} <= {target}x" for preset, target in TARGETS.items())
        + "\n"
    )
    print_rows(rows, rate)
    for (preset, xla), table in stages.items():
        print()
        print_stages(preset, xla, table, rate)
    print(f"\n(benchmark ran {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
