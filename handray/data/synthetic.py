"""Procedural hands: the embedded default dataset, small enough for a CPU model to learn.

Each image draws its randomness only from `np.random.default_rng([seed, split, index])`, so the
same seed gives the same bytes whatever the worker count or order. A scene is composed with an
integer label map beside the colour image: every layer overwrites the labels under it (hands with
their instance number, everything else with 0), so each instance mask is exactly the visible
pixels of its hand. Shapes are drawn without antialiasing, so image and mask agree pixel for pixel.

Each hand is seen from the palm or the back (annotation key "view"); the back view mirrors the
silhouette, so pixels decide the side only through the cues of `hand_paint`. Arms lead to a
torso (background) where photos would have one. Hand geometry lives in `hand_shape`.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from handray.atomic import atomic_directory
from handray.data.coco_writer import CocoWriter
from handray.data.hand_paint import VIEWS, capsule, draw_hand, polygon, skin_distance, skin_tone
from handray.data.hand_shape import Shape, chaikin, ellipse, keypoints, place, rotate, sample_pose
from handray.data.hands import category_for, hand_annotation, hand_categories
from handray.errors import DatasetError
from handray.parallel import process_map

GENERATOR = "handray.data.synthetic/2"
SCHEME = "left-right"
SPLITS = {"train": 0, "val": 1}
MIN_SIZE, MAX_SIZE = 32, 4096
HAND_COUNT_P = (0.15, 0.35, 0.32, 0.18)  # chance of 0, 1, 2, 3 hands in an image
BACK_CHANCE = 0.5  # share of hands seen from the back; the others show the palm
BODY_CHANCE = 0.6  # share of arms that lead to a torso
GLOVE_CHANCE = 0.05  # share of hands in a glove of any colour instead of skin
_SINGLE_SKIN = np.array([200.0, 150.0, 120.0])


@dataclass
class SynthSummary:
    """What `generate_dataset` wrote, for the CLI to report."""

    out: Path
    images: dict[str, int]
    hands_per_class: dict[str, int]
    crowd: int
    hands_per_view: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Arm:
    """A forearm from the wrist to the elbow, bare up to `cut`, sleeved beyond if `sleeve`."""

    start: np.ndarray
    cut: np.ndarray
    end: np.ndarray
    radii: tuple[float, float, float]  # at start, cut and end
    sleeve: tuple[int, int, int] | None


@dataclass(frozen=True)
class _Hand:
    """Everything sampled about one hand before any of it is drawn."""

    shape: Shape
    is_left: bool
    view: str
    colour: np.ndarray  # skin, or a glove's colour
    skin: np.ndarray  # the arm's skin
    light: Callable
    arm: _Arm
    body: np.ndarray | None  # torso polygon at the arm's end
    clothes: tuple[int, int, int]


class _Canvas:
    """Colour image plus instance-label map; whatever is painted last owns the pixel."""

    def __init__(self, background: np.ndarray, rng: np.random.Generator):
        self.rgb = background.astype(np.float64)
        self.size = background.shape[0]
        self.label = np.zeros(background.shape[:2], np.int32)
        self.rng = rng

    def layer(self, mode: str = "L") -> tuple[Image.Image, ImageDraw.ImageDraw]:
        """A blank layer. "L": 0 is empty, other values scale the paint colour by value / 200.
        "RGBA": drawn in its own colours, alpha marks its pixels."""
        image = Image.new(mode, (self.size, self.size), 0)
        return image, ImageDraw.Draw(image)

    def paint(self, layer: Image.Image, colour=None, label: int = 0, light=None, noise=0.0):
        values = np.asarray(layer)
        if layer.mode == "RGBA":
            ys, xs = np.nonzero(values[..., 3])
            pixels = values[ys, xs, :3].astype(np.float64)
        else:
            ys, xs = np.nonzero(values)
            pixels = np.asarray(colour, np.float64)[None, :] * (values[ys, xs, None] / 200.0)
        if light is not None:
            pixels *= light(xs, ys)[:, None]
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


def _other_colour(rng: np.random.Generator, skin_chance: float = 0.08) -> tuple[int, int, int]:
    """Mostly non-skin colours, so colour helps but does not solve the task."""
    colour = rng.uniform(0.0, 255.0, 3)
    for _ in range(20):
        if rng.random() < skin_chance or skin_distance(colour) > 60.0:
            break
        colour = rng.uniform(0.0, 255.0, 3)
    r, g, b = (int(v) for v in colour)
    return r, g, b


def _random_shape(draw, rng: np.random.Generator, centre: np.ndarray, r: float, fill) -> None:
    """Clutter: a rotated rectangle, ellipse, polygon or thick line around `centre`."""
    kind, angle = rng.integers(4), rng.uniform(0.0, math.pi)
    if kind == 0:
        rect = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [r, r * rng.uniform(0.2, 1.0)]
        polygon(draw, centre + rotate(rect, angle), fill)
    elif kind == 1:
        polygon(draw, ellipse(centre, r, r * rng.uniform(0.3, 1.0), angle), fill)
    elif kind == 2:
        polygon(draw, centre + rng.uniform(-r, r, (rng.integers(3, 7), 2)), fill)
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
        polygon(draw, ellipse(centre, r, 1.3 * r, angle), 190, outline=140)
        for offset, rx, fill in (
            ((-0.35, -0.2), 0.1, 60),
            ((0.35, -0.2), 0.1, 60),
            ((0, 0.55), 0.3, 120),
        ):
            spot = centre + rotate(np.array(offset) * r, angle)
            polygon(draw, ellipse(spot, rx * r, 0.1 * r, angle), fill)  # eyes and mouth
    elif kind == 1:
        direction = rotate([r * rng.uniform(1.0, 2.5), 0.0], rng.uniform(0.0, math.pi))
        capsule(draw, centre - direction, centre + direction, 0.3 * r, 0.36 * r, 190)
    else:
        t = np.linspace(0.0, 2.0 * math.pi, 7, endpoint=False)
        radii = r * rng.uniform(0.5, 1.0, 7)
        blob = centre + np.stack([np.cos(t) * radii, np.sin(t) * radii], 1)
        polygon(draw, chaikin(blob), 190)
    canvas.paint(layer, skin_tone(rng), light=_light(rng, centre, 2 * r), noise=3.0)


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


def _plan_arm(rng: np.random.Generator, shape: Shape) -> _Arm:
    """A forearm leaving the wrist, bare or in a sleeve, 0.6 to 2.5 hand lengths long."""
    down = -rotate(shape.up, math.radians(rng.uniform(-25.0, 25.0)))
    r0 = 0.15 * shape.length
    r1 = r0 * rng.uniform(1.05, 1.3)
    reach = shape.length * rng.uniform(0.6, 2.5)
    sleeve = rng.uniform(0.1, 0.9) * reach if rng.random() < 0.5 else None
    start, end = shape.wrist + shape.up * 0.08 * shape.length, shape.wrist + down * reach
    if sleeve is None:
        return _Arm(start, end, end, (r0, r1, r1), None)
    r_cut = r0 + (r1 - r0) * sleeve / reach
    return _Arm(start, shape.wrist + down * sleeve, end, (r0, r_cut, r1), _other_colour(rng))


def _plan_body(rng: np.random.Generator, shape: Shape, arm: _Arm) -> np.ndarray:
    """A rounded torso whose shoulder is the arm's end, mostly on the thumb side of the arm
    (the body's midline for a raised hand, whether seen from the palm or the back)."""
    down = (arm.end - arm.start) / max(float(np.hypot(*(arm.end - arm.start))), 1e-6)
    across = np.array([-down[1], down[0]])
    if (np.dot(across, shape.thumb_side) > 0) != (rng.random() < 0.8):
        across = -across
    rx, ry = shape.length * rng.uniform(0.8, 1.4), shape.length * rng.uniform(1.0, 1.8)
    centre = arm.end + across * 0.6 * rx + down * 0.6 * ry
    box = chaikin(np.array([[-rx, -ry], [rx, -ry], [rx, ry], [-rx, ry]]), rounds=3)
    return centre + rotate(box, math.atan2(across[1], across[0]))


def _mirrored(is_left: bool, view: str) -> bool:
    """A left palm and a right back both show the canonical right palm's mirror image."""
    return is_left != (view == "back")


def _plan_hand(rng: np.random.Generator, size: int, centres: list[np.ndarray]) -> _Hand:
    """Sample one hand: size, place, side, view, pose, colours, arm and maybe a body."""
    length = size * math.exp(rng.uniform(math.log(0.15), math.log(0.55)))
    centre = _hand_centre(rng, size, length, centres)
    centres.append(centre)
    is_left = bool(rng.random() < 0.5)
    view = "back" if rng.random() < BACK_CHANCE else "palm"
    shape = place(sample_pose(rng), _mirrored(is_left, view), centre, length, rng.uniform(0, 360))
    skin = skin_tone(rng)
    colour = rng.uniform(0.0, 255.0, 3) if rng.random() < GLOVE_CHANCE else skin
    light = _light(rng, centre, length)
    arm = _plan_arm(rng, shape)
    body = _plan_body(rng, shape, arm) if rng.random() < BODY_CHANCE else None
    clothes = arm.sleeve or _other_colour(rng)
    return _Hand(shape, is_left, view, colour, skin, light, arm, body, clothes)


def _draw_body(canvas: _Canvas, hand: _Hand) -> None:
    """The torso in the sleeve's (or a shirt's) colour: background, like every non-hand."""
    layer, draw = canvas.layer()
    polygon(draw, hand.body, 190)
    canvas.paint(layer, hand.clothes, light=hand.light, noise=3.0)


def _draw_forearm(canvas: _Canvas, hand: _Hand) -> None:
    """The bare part of the arm in the arm's skin, then the sleeve; both are background."""
    arm, (r0, r_cut, r1) = hand.arm, hand.arm.radii
    layer, draw = canvas.layer()
    capsule(draw, arm.start, arm.cut, r0, r_cut, 185)
    canvas.paint(layer, hand.skin, light=hand.light, noise=2.0)
    if arm.sleeve is not None:
        layer, draw = canvas.layer()
        capsule(draw, arm.cut, arm.end, r1 * 1.25, r1 * 1.3, 200)
        canvas.paint(layer, arm.sleeve, light=hand.light, noise=3.0)


def _paint_hand(canvas: _Canvas, rng: np.random.Generator, hand: _Hand, label: int) -> np.ndarray:
    """Forearm, hand (instance `label`) and maybe an occluder; returns the keypoints."""
    _draw_forearm(canvas, hand)
    layer, draw = canvas.layer("RGBA")
    draw_hand(draw, hand.shape, hand.view, hand.colour, rng)
    canvas.paint(layer, label=label, light=hand.light, noise=rng.uniform(1.0, 5.0))
    uv = keypoints(hand.shape)
    if rng.random() < 0.35:
        layer, draw = canvas.layer()
        spot = uv[rng.integers(len(uv))]
        _random_shape(draw, rng, spot, hand.shape.length * rng.uniform(0.1, 0.3), 200)
        canvas.paint(layer, _other_colour(rng), noise=2.0)
    return uv


def _compose(seed: int, split: str, index: int, size: int):
    """Image, label map and (keypoints, is_left, view) per hand; label i is hand i (1-based).

    Bodies go down before any hand, so they never hide one: the hand count stays as sampled.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    canvas = _Canvas(_background(rng, size), rng)
    after = rng.random(rng.integers(1, 4)) < 0.35  # distractors drawn over the hands
    for _ in range(int((~after).sum())):
        _draw_distractor(canvas, rng)
    centres: list[np.ndarray] = []
    count = rng.choice(len(HAND_COUNT_P), p=HAND_COUNT_P)
    plans = [_plan_hand(rng, size, centres) for _ in range(count)]
    for hand in plans:
        if hand.body is not None:
            _draw_body(canvas, hand)
    hands = [
        (_paint_hand(canvas, rng, hand, label), hand.is_left, hand.view)
        for label, hand in enumerate(plans, start=1)
    ]
    for _ in range(int(after.sum())):
        _draw_distractor(canvas, rng)
    noisy = canvas.rgb + rng.normal(0.0, rng.uniform(1.5, 6.0), canvas.rgb.shape)
    return np.rint(np.clip(noisy, 0, 255)).astype(np.uint8), canvas.label, hands


def render_sample(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, list[dict]]:
    """RGB uint8 [size, size, 3] image and its hand annotations (COCO fields, no ids)."""
    image, label, hands = _compose(seed, split, index, size)
    annotations = []
    for i, (uv, is_left, view) in enumerate(hands, start=1):
        # Round as the COCO file stores keypoints, so visibility agrees with the stored position;
        # pixel i spans [i, i + 1), as PIL draws and COCO boxes count.
        uv = np.array([[round(float(x), 2), round(float(y), 2)] for x, y in uv])
        px = np.clip(np.floor(uv).astype(np.int64), 0, size - 1)
        visible = label[px[:, 1], px[:, 0]] == i
        annotation = hand_annotation(label == i, category_for(SCHEME, is_left), uv, visible)
        if annotation is not None:
            annotations.append({**annotation, "view": view})
    return image, annotations


def single_hand(
    seed: int, *, left: bool, view: str = "palm", size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Mask and 21 keypoints of one upright hand centred in an empty image (tests, inspection)."""
    pose = sample_pose(np.random.default_rng(seed))
    shape = place(pose, _mirrored(left, view), np.full(2, size / 2), 0.6 * size, 0.0)
    layer = Image.new("RGBA", (size, size), 0)
    draw_hand(ImageDraw.Draw(layer), shape, view, _SINGLE_SKIN, np.random.default_rng(seed))
    return np.asarray(layer)[..., 3] > 0, keypoints(shape)


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
        "view_mix": {"palm": 1.0 - BACK_CHANCE, "back": BACK_CHANCE},
    }
    writer = CocoWriter(
        folder / "annotations" / f"instances_{split}.json", hand_categories(SCHEME), info
    )
    tasks = [(seed, split, index, size, str(folder)) for index in range(1, count + 1)]
    views = collections.Counter(dict.fromkeys(VIEWS, 0))
    with writer, tqdm(total=count, desc=f"synth {split}", unit="img", disable=not progress) as bar:
        for index, annotations in enumerate(mapper(_render_task, tasks), start=1):
            writer.add_image(_file_name(split, index), size, size, annotations)
            views.update(a["view"] for a in annotations)
            bar.update()
        info["hands_per_view"] = dict(views)  # written when the `with` commits the file
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
            for view, hands in writer.info["hands_per_view"].items():
                summary.hands_per_view[view] = summary.hands_per_view.get(view, 0) + hands
    return summary
