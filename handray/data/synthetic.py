"""Procedural hands: the embedded default dataset, small enough for a CPU model to learn.

Each image draws its randomness only from `np.random.default_rng([seed, split, index])`, so the
same seed gives the same bytes whatever the worker count or order. A scene is composed with an
integer label map beside the colour image: every layer overwrites the labels under it (hands with
their instance number, everything else with 0), so each instance mask is exactly the visible
pixels of its hand. Shapes are drawn without antialiasing, so image and mask agree pixel for pixel.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from handray.atomic import atomic_directory
from handray.data.coco_writer import CocoWriter
from handray.data.hands import category_for, hand_annotation, hand_categories
from handray.errors import DatasetError
from handray.parallel import process_map

GENERATOR = "handray.data.synthetic/1"
SCHEME = "left-right"
SPLITS = {"train": 0, "val": 1}
MIN_SIZE, MAX_SIZE = 32, 4096
HAND_COUNT_P = (0.15, 0.35, 0.32, 0.18)  # chance of 0, 1, 2, 3 hands in an image


def _chaikin(points: np.ndarray, rounds: int = 2) -> np.ndarray:
    """Round a closed polygon's corners by corner cutting."""
    for _ in range(rounds):
        following = np.roll(points, -1, axis=0)
        points = np.stack([0.75 * points + 0.25 * following, 0.25 * points + 0.75 * following], 1)
        points = points.reshape(-1, 2)
    return points


# A canonical right hand, palm towards the camera, in units of hand length (wrist to middle tip):
# image axes (y down), wrist at the origin, fingers up (-y), thumb towards +x. Finger order is
# RHD's: thumb, index, middle, ring, little. A left hand is this shape mirrored.
# fmt: off
_PALM = _chaikin(np.array([
    [-0.15, 0.0], [0.14, 0.0], [0.20, -0.14], [0.21, -0.30], [0.19, -0.44], [0.09, -0.48],
    [-0.02, -0.49], [-0.12, -0.46], [-0.19, -0.40], [-0.19, -0.20],
]))
# fmt: on
_PALM_CENTRE = np.array([0.0, -0.25])
_BASES = np.array([[0.10, -0.07], [0.13, -0.45], [0.045, -0.47], [-0.045, -0.46], [-0.13, -0.42]])
_SEGMENTS = np.array(
    [
        [0.20, 0.15, 0.12],
        [0.22, 0.13, 0.10],
        [0.25, 0.15, 0.11],
        [0.23, 0.14, 0.10],
        [0.18, 0.11, 0.09],
    ]
)
_WIDTHS = np.array([0.105, 0.085, 0.09, 0.085, 0.075])
_TAPER = np.array([1.0, 0.93, 0.86, 0.8])  # width at base, j1, j2, tip
_ANGLES = np.array([50.0, 7.0, 0.0, -6.0, -13.0])  # degrees from "up", positive towards the thumb
_SPREAD = np.array([0.0, 1.0, 0.15, -0.9, -1.7])  # how much each finger follows the hand's spread
# Flexion at full curl per joint (degrees): seen from the front it foreshortens the segments and,
# past 90 degrees, folds them back over the palm. The thumb also turns across the palm.
_FLEX = np.array([[15, 35, 50], [75, 100, 70], [75, 100, 70], [75, 100, 70], [75, 100, 70]])
_THUMB_TURN = np.array([25.0, 30.0, 30.0])
_CURLS = ((0.0, 0.25), (0.65, 1.0), (0.0, 1.0), (0.7, 1.0))  # open, fist, any, pointing
# Skin tones from light to dark; a tone is a point on this polyline, jittered per channel.
_SKIN = np.array(
    [[243, 216, 192], [224, 172, 138], [176, 118, 84], [110, 70, 48], [70, 45, 33]], np.float64
)


@dataclass
class SynthSummary:
    """What `generate_dataset` wrote, for the CLI to report."""

    out: Path
    images: dict[str, int]
    hands_per_class: dict[str, int]
    crowd: int


@dataclass(frozen=True)
class _Pose:
    curl: np.ndarray  # (5,) 0 straight .. 1 fully flexed
    angle: np.ndarray  # (5,) base direction of each finger, degrees
    bend: np.ndarray  # (5, 3) sideways bend at each joint, degrees
    length: np.ndarray  # (5,) per-finger length factor
    palm_width: float


@dataclass(frozen=True)
class _Shape:
    palm: np.ndarray  # (N, 2) polygon, image pixels
    joints: np.ndarray  # (5, 4, 2) base, j1, j2, tip per finger
    radii: np.ndarray  # (5, 4) half widths at those joints
    wrist: np.ndarray  # (2,)
    up: np.ndarray  # (2,) unit vector from the wrist towards the fingers
    length: float


def _sample_pose(rng: np.random.Generator) -> _Pose:
    """Open hands, fists, pointing and anything between, so the model sees every silhouette."""
    kind = rng.integers(len(_CURLS))
    curl = rng.uniform(*_CURLS[kind], 5)
    if kind == 3:  # pointing: index straight, thumb anywhere
        curl[:2] = rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.15)
    angle = _ANGLES + rng.uniform(-3.0, 14.0) * _SPREAD + rng.normal(0.0, 2.5, 5)
    angle[0] = rng.uniform(25.0, 75.0)
    return _Pose(
        curl=curl,
        angle=angle,
        bend=rng.normal(0.0, 4.0, (5, 3)),
        length=rng.uniform(0.93, 1.07, 5),
        palm_width=float(rng.uniform(0.9, 1.1)),
    )


def _chains(pose: _Pose) -> np.ndarray:
    """Canonical joint positions (5, 4, 2) of the pose: each finger walked from base to tip."""
    out = np.zeros((5, 4, 2))
    for k in range(5):
        point = _BASES[k] * [pose.palm_width, 1.0]
        heading, flex = pose.angle[k], 0.0
        out[k, 0] = point
        for j in range(3):
            flex += pose.curl[k] * _FLEX[k, j]
            heading += pose.bend[k, j] - (pose.curl[k] * _THUMB_TURN[j] if k == 0 else 0.0)
            step = _SEGMENTS[k, j] * pose.length[k] * math.cos(math.radians(flex))
            h = math.radians(heading)
            point = point + step * np.array([math.sin(h), -math.cos(h)])
            out[k, j + 1] = point
    return out


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """Points (..., 2) turned by `angle` radians about the origin."""
    c, s = math.cos(angle), math.sin(angle)
    return np.asarray(points, np.float64) @ np.array([[c, s], [-s, c]])


def _place(pose: _Pose, is_left: bool, centre: np.ndarray, length: float, angle: float) -> _Shape:
    """The pose in image pixels: mirrored for a left hand, scaled, rotated, palm at `centre`."""
    flip, angle = np.array([-1.0 if is_left else 1.0, 1.0]), math.radians(angle)

    def to_image(points: np.ndarray) -> np.ndarray:
        return _rotate((points - _PALM_CENTRE) * flip, angle) * length + centre

    return _Shape(
        palm=to_image(_PALM * [pose.palm_width, 1.0]),
        joints=to_image(_chains(pose)),
        radii=0.5 * length * _WIDTHS[:, None] * _TAPER[None, :],
        wrist=to_image(np.zeros(2)),
        up=_rotate(np.array([0.0, -1.0]), angle),
        length=length,
    )


def _keypoints(shape: _Shape) -> np.ndarray:
    """The 21 keypoints in RHD order: wrist, then each finger from tip to base."""
    return np.concatenate([shape.wrist[None], shape.joints[:, ::-1].reshape(-1, 2)])


def _polygon(draw: ImageDraw.ImageDraw, points: np.ndarray, fill: Any, **kwargs: Any) -> None:
    draw.polygon([(float(x), float(y)) for x, y in points], fill=fill, **kwargs)


def _capsule(draw: ImageDraw.ImageDraw, p, q, rp: float, rq: float, fill: Any) -> None:
    """A thick segment with round ends (a finger bone between two joints)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    d = q - p
    n = float(np.hypot(*d))
    if n > 1e-6:
        normal = np.array([-d[1], d[0]]) / n
        quad = np.array([p + normal * rp, q + normal * rq, q - normal * rq, p - normal * rp])
        _polygon(draw, quad, fill)
    for (x, y), r in ((p, rp), (q, rq)):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _ellipse(centre: np.ndarray, rx: float, ry: float, angle: float, n: int = 32) -> np.ndarray:
    """Polygon of a rotated ellipse (PIL only draws axis-aligned ones)."""
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return centre + _rotate(np.stack([rx * np.cos(t), ry * np.sin(t)], 1), angle)


def _draw_hand(draw: ImageDraw.ImageDraw, shape: _Shape, rng: np.random.Generator) -> None:
    """Palm, then fingers little to index, then thumb; darker rims mark joints and overlaps."""
    rim = 1 if shape.radii[2, 0] >= 2.5 else 0
    base = 200.0 * rng.uniform(0.96, 1.04)
    _polygon(draw, shape.palm, int(base), outline=int(base * 0.75) if rim else None, width=rim)
    for k in (4, 3, 2, 1, 0):
        tone = base * rng.uniform(0.94, 1.06)
        for j in range(3):
            p, q = shape.joints[k, j], shape.joints[k, j + 1]
            rp, rq = shape.radii[k, j], shape.radii[k, j + 1]
            if rim and rq - rim >= 0.5:
                _capsule(draw, p, q, rp, rq, int(tone * 0.75))
                _capsule(draw, p, q, rp - rim, rq - rim, int(tone))
            else:
                _capsule(draw, p, q, rp, rq, int(tone))


class _Canvas:
    """Colour image plus instance-label map; whatever is painted last owns the pixel."""

    def __init__(self, background: np.ndarray, rng: np.random.Generator):
        self.rgb = background.astype(np.float64)
        self.size = background.shape[0]
        self.label = np.zeros(background.shape[:2], np.int32)
        self.rng = rng

    def layer(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        """A blank shade layer: 0 is empty, other values scale the colour by value / 200."""
        image = Image.new("L", (self.size, self.size), 0)
        return image, ImageDraw.Draw(image)

    def paint(self, layer: Image.Image, colour, label: int = 0, light=None, noise: float = 0.0):
        shade = np.asarray(layer, np.float64)
        ys, xs = np.nonzero(shade)
        factor = shade[ys, xs] / 200.0
        if light is not None:
            factor = factor * light(xs, ys)
        pixels = np.asarray(colour, np.float64)[None, :] * factor[:, None]
        pixels += self.rng.normal(0.0, noise, (len(ys), 1)) if noise else 0.0
        self.rgb[ys, xs] = pixels
        self.label[ys, xs] = label


def _light(rng: np.random.Generator, centre: np.ndarray, scale: float) -> Callable:
    """A linear lighting gradient across an object, as a function of pixel coordinates."""
    a = rng.uniform(0.0, 2.0 * math.pi)
    gain = rng.uniform(0.0, 0.5)
    dx, dy, (cx, cy) = math.cos(a), math.sin(a), centre
    return lambda xs, ys: np.clip(
        1.0 + gain * ((xs - cx) * dx + (ys - cy) * dy) / scale, 0.55, 1.45
    )


def _skin_tone(rng: np.random.Generator) -> np.ndarray:
    t = rng.uniform(0.0, len(_SKIN) - 1.0)
    i = min(int(t), len(_SKIN) - 2)
    return (_SKIN[i] + (t - i) * (_SKIN[i + 1] - _SKIN[i])) * rng.uniform(0.94, 1.06, 3)


def _skin_distance(colour: np.ndarray) -> float:
    """Distance of an RGB colour to the nearest skin tone."""
    a, d = _SKIN[:-1], np.diff(_SKIN, axis=0)
    t = np.clip(((colour - a) * d).sum(1) / (d * d).sum(1), 0.0, 1.0)
    return float(np.min(np.linalg.norm(a + t[:, None] * d - colour, axis=1)))


def _other_colour(rng: np.random.Generator, skin_chance: float = 0.08) -> tuple[int, int, int]:
    """Mostly non-skin colours, so colour helps but does not solve the task."""
    colour = rng.uniform(0.0, 255.0, 3)
    for _ in range(20):
        if rng.random() < skin_chance or _skin_distance(colour) > 60.0:
            break
        colour = rng.uniform(0.0, 255.0, 3)
    r, g, b = (int(v) for v in colour)
    return r, g, b


def _random_shape(draw, rng: np.random.Generator, centre: np.ndarray, r: float, fill) -> None:
    """Clutter: a rotated rectangle, ellipse, polygon or thick line around `centre`."""
    kind, angle = rng.integers(4), rng.uniform(0.0, math.pi)
    if kind == 0:
        rect = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [r, r * rng.uniform(0.2, 1.0)]
        _polygon(draw, centre + _rotate(rect, angle), fill)
    elif kind == 1:
        _polygon(draw, _ellipse(centre, r, r * rng.uniform(0.3, 1.0), angle), fill)
    elif kind == 2:
        _polygon(draw, centre + rng.uniform(-r, r, (rng.integers(3, 7), 2)), fill)
    else:
        end = r * np.array([math.cos(angle), math.sin(angle)])
        width = max(1, int(r * rng.uniform(0.05, 0.3)))
        draw.line([tuple(centre - end), tuple(centre + end)], fill=fill, width=width)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gradient under random non-skin clutter."""
    c0, c1 = (np.array(_other_colour(rng, 0.1), np.float64) for _ in range(2))
    a = rng.uniform(0.0, 2.0 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size]
    t = xs * math.cos(a) + ys * math.sin(a)
    t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
    image = Image.fromarray((c0 + t[..., None] * (c1 - c0)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(4, 20)):
        centre = rng.uniform(-0.1, 1.1, 2) * size
        _random_shape(draw, rng, centre, size * rng.uniform(0.03, 0.3), _other_colour(rng))
    return np.asarray(image)


def _draw_distractor(canvas: _Canvas, rng: np.random.Generator) -> None:
    """Skin-coloured things that are not hands: a face, an arm-like stick or a blob."""
    size = canvas.size
    centre, r = rng.uniform(0.0, size, 2), size * rng.uniform(0.06, 0.2)
    kind, angle = rng.integers(3), rng.uniform(-0.4, 0.4)
    layer, draw = canvas.layer()
    if kind == 0:
        _polygon(draw, _ellipse(centre, r, 1.3 * r, angle), 190, outline=140)
        for offset, rx, fill in (
            ((-0.35, -0.2), 0.1, 60),
            ((0.35, -0.2), 0.1, 60),
            ((0, 0.55), 0.3, 120),
        ):
            spot = centre + _rotate(np.array(offset) * r, angle)
            _polygon(draw, _ellipse(spot, rx * r, 0.1 * r, angle), fill)  # eyes and mouth
    elif kind == 1:
        direction = _rotate([r * rng.uniform(1.0, 2.5), 0.0], rng.uniform(0.0, math.pi))
        _capsule(draw, centre - direction, centre + direction, 0.3 * r, 0.36 * r, 190)
    else:
        t = np.linspace(0.0, 2.0 * math.pi, 7, endpoint=False)
        radii = r * rng.uniform(0.5, 1.0, 7)
        blob = centre + np.stack([np.cos(t) * radii, np.sin(t) * radii], 1)
        _polygon(draw, _chaikin(blob), 190)
    canvas.paint(layer, _skin_tone(rng), light=_light(rng, centre, 2 * r), noise=3.0)


def _hand_centre(rng, size: int, length: float, others: list[np.ndarray]) -> np.ndarray:
    """Mostly inside the image; sometimes on the border (cut hands) or on another hand."""
    u = rng.random()
    if others and u < 0.2:
        return others[rng.integers(len(others))] + rng.normal(0.0, 0.35 * length, 2)
    if u < 0.35:
        centre = rng.uniform(0.0, size, 2)
        axis = rng.integers(2)
        centre[axis] = rng.integers(2) * size + rng.uniform(-0.3, 0.3) * length
        return centre
    return rng.uniform(0.1, 0.9, 2) * size


def _draw_forearm(canvas: _Canvas, rng, shape: _Shape, skin: np.ndarray, light) -> None:
    """A forearm leaving the wrist, bare or in a sleeve; it is background, not hand."""
    down = -_rotate(shape.up, math.radians(rng.uniform(-25.0, 25.0)))
    r0 = 0.15 * shape.length
    r1 = r0 * rng.uniform(1.05, 1.3)
    reach = shape.length * rng.uniform(0.6, 2.5)
    sleeve = rng.uniform(0.1, 0.9) * reach if rng.random() < 0.5 else None
    start, end = shape.wrist + shape.up * 0.08 * shape.length, shape.wrist + down * reach
    cut = end if sleeve is None else shape.wrist + down * sleeve
    layer, draw = canvas.layer()
    _capsule(
        draw, start, cut, r0, r0 + (r1 - r0) * (1.0 if sleeve is None else sleeve / reach), 185
    )
    canvas.paint(layer, skin, light=light, noise=2.0)
    if sleeve is not None:
        layer, draw = canvas.layer()
        _capsule(draw, cut, end, r1 * 1.25, r1 * 1.3, 200)
        canvas.paint(layer, _other_colour(rng), light=light, noise=3.0)


def _add_hand(
    canvas: _Canvas, rng, label: int, centres: list[np.ndarray]
) -> tuple[np.ndarray, bool]:
    """Forearm, hand (instance `label`) and maybe an occluder; returns keypoints and chirality."""
    size = canvas.size
    length = size * math.exp(rng.uniform(math.log(0.15), math.log(0.55)))
    centre = _hand_centre(rng, size, length, centres)
    centres.append(centre)
    is_left = bool(rng.random() < 0.5)
    shape = _place(_sample_pose(rng), is_left, centre, length, rng.uniform(0.0, 360.0))
    skin, light = _skin_tone(rng), _light(rng, centre, length)
    _draw_forearm(canvas, rng, shape, skin, light)
    layer, draw = canvas.layer()
    _draw_hand(draw, shape, rng)
    canvas.paint(layer, skin, label=label, light=light, noise=rng.uniform(1.0, 5.0))
    keypoints = _keypoints(shape)
    if rng.random() < 0.35:
        layer, draw = canvas.layer()
        spot = keypoints[rng.integers(len(keypoints))]
        _random_shape(draw, rng, spot, length * rng.uniform(0.1, 0.3), 200)
        canvas.paint(layer, _other_colour(rng), noise=2.0)
    return keypoints, is_left


def _compose(seed: int, split: str, index: int, size: int):
    """Image, label map and (keypoints, is_left) per hand; label i is hand i (1-based)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    canvas = _Canvas(_background(rng, size), rng)
    after = rng.random(rng.integers(1, 4)) < 0.35  # distractors drawn over the hands
    for _ in range(int((~after).sum())):
        _draw_distractor(canvas, rng)
    hands, centres = [], []
    for label in range(1, rng.choice(len(HAND_COUNT_P), p=HAND_COUNT_P) + 1):
        hands.append(_add_hand(canvas, rng, label, centres))
    for _ in range(int(after.sum())):
        _draw_distractor(canvas, rng)
    noisy = canvas.rgb + rng.normal(0.0, rng.uniform(1.5, 6.0), canvas.rgb.shape)
    return np.rint(np.clip(noisy, 0, 255)).astype(np.uint8), canvas.label, hands


def render_sample(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, list[dict]]:
    """RGB uint8 [size, size, 3] image and its hand annotations (COCO fields, no ids)."""
    image, label, hands = _compose(seed, split, index, size)
    annotations = []
    for i, (uv, is_left) in enumerate(hands, start=1):
        # Round as the COCO file stores keypoints, so visibility agrees with the stored position;
        # pixel i spans [i, i + 1), as PIL draws and COCO boxes count.
        uv = np.array([[round(float(x), 2), round(float(y), 2)] for x, y in uv])
        px = np.clip(np.floor(uv).astype(np.int64), 0, size - 1)
        visible = label[px[:, 1], px[:, 0]] == i
        annotation = hand_annotation(label == i, category_for(SCHEME, is_left), uv, visible)
        if annotation is not None:
            annotations.append(annotation)
    return image, annotations


def single_hand(seed: int, *, left: bool, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Mask and 21 keypoints of one upright hand centred in an empty image (tests, inspection)."""
    pose = _sample_pose(np.random.default_rng(seed))
    shape = _place(pose, left, np.full(2, size / 2), 0.6 * size, 0.0)
    layer = Image.new("L", (size, size), 0)
    _draw_hand(ImageDraw.Draw(layer), shape, np.random.default_rng(seed))
    return np.asarray(layer) > 0, _keypoints(shape)


def _file_name(split: str, index: int) -> str:
    return f"images/{split}/{index:06d}.png"


def _render_task(task: tuple[int, str, int, int, str]) -> list[dict]:
    """Worker: render one image, write its PNG into the staging folder, return annotations."""
    seed, split, index, size, folder = task
    image, annotations = render_sample(seed, split, index, size)
    Image.fromarray(image).save(Path(folder) / _file_name(split, index), format="PNG")
    return annotations


def _validate(train: Any, val: Any, size: Any, seed: Any, workers: Any) -> None:
    """Reject bad arguments before anything is created, naming the argument and its range."""
    limits = {"train": (train, 0, None), "val": (val, 0, None), "seed": (seed, 0, None)}
    limits["size"] = (size, MIN_SIZE, MAX_SIZE)
    if workers is not None:
        limits["workers"] = (workers, 1, None)
    for name, (value, low, high) in limits.items():
        whole = isinstance(value, int | np.integer) and not isinstance(value, bool)
        if not whole or value < low or (high is not None and value > high):
            upper = f" and <= {high}" if high is not None else ""
            raise DatasetError(f"{name} must be a whole number >= {low}{upper}, got {value!r}")
    if train + val == 0:
        raise DatasetError("nothing to generate: train and val are both 0; ask for some images")


def _write_split(
    folder: Path, split: str, count: int, size: int, seed: int, mapper, progress: bool
) -> CocoWriter:
    """Render one split's images in order and stream their annotations into its COCO file."""
    (folder / "images" / split).mkdir(parents=True)
    info = {
        "description": "handray synthetic hands",
        "generator": GENERATOR,
        "seed": seed,
        "size": size,
        "split": split,
        "images": count,
    }
    writer = CocoWriter(
        folder / "annotations" / f"instances_{split}.json", hand_categories(SCHEME), info
    )
    tasks = [(seed, split, index, size, str(folder)) for index in range(1, count + 1)]
    with writer, tqdm(total=count, desc=f"synth {split}", unit="img", disable=not progress) as bar:
        for index, annotations in enumerate(mapper(_render_task, tasks), start=1):
            writer.add_image(_file_name(split, index), size, size, annotations)
            bar.update()
    return writer


def generate_dataset(
    out: str | os.PathLike,
    *,
    train: int = 400,
    val: int = 100,
    size: int = 128,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> SynthSummary:
    """Write a synthetic hand dataset folder (COCO json + PNGs); all of it or nothing.

    The same arguments give byte-identical files. An existing non-empty `out` is kept untouched
    unless `overwrite` is set, and even then replaced only once the new dataset is complete.
    """
    _validate(train, val, size, seed, workers)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} is a file, not a folder; choose another folder for the dataset")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DatasetError(
            f"{out} already holds files; pass --overwrite to replace them or choose another folder"
        )
    counts = {"train": train, "val": val}
    names = {c["id"]: c["name"] for c in hand_categories(SCHEME)}
    summary = SynthSummary(out, dict(counts), dict.fromkeys(names.values(), 0), 0)
    workers = min(workers or os.cpu_count() or 1, train + val)
    with atomic_directory(out, overwrite=overwrite) as staging, process_map(workers) as mapper:
        for split, count in counts.items():
            writer = _write_split(staging, split, count, size, seed, mapper, progress)
            for category_id, hands in writer.hands_per_category.items():
                summary.hands_per_class[names[category_id]] += hands
            summary.crowd += writer.crowd
    return summary
