"""One synthetic image: a cluttered background, skin-coloured distractors, and hands on arms
(some leading to a torso), painted into pixels and the hands' annotations.

Each image draws its randomness only from `np.random.default_rng([seed, split, index])`, so the
same seed gives the same bytes whatever the worker count or order. A style names how it is
drawn: "classic" as it always was; "varied" the same scene painted with the families of
`paint_variety`, decided by a second stream (`[seed, split, index, 1]`) so classic's stream and
geometry stay as they were; "held-out" a different drawing of hands, for evaluation only
(`held_out_style`, stream `[seed, split, index, 2]`). Layers go onto a `Canvas`,
whose label map makes each instance mask exactly the visible pixels of its hand; what each hand
looks like is sampled first (`hand_plan`), then painted.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from handray.data import held_out_style, paint_variety
from handray.data.canvas import Canvas, light_gradient, other_colour, random_shape
from handray.data.hand_paint import capsule, draw_hand, polygon, skin_tone
from handray.data.hand_plan import HAND_COUNT_P, HandPlan, mirrored, plan_hand
from handray.data.hand_shape import chaikin, ellipse, keypoints, place, rotate, sample_pose
from handray.data.hands import category_for, hand_annotation
from handray.data.paint_variety import Paint

SCHEME = "left-right"
SPLITS = {"train": 0, "val": 1}
STYLES = ("classic", "varied", "held-out")
_SINGLE_SKIN = np.array([200.0, 150.0, 120.0])


def render_sample(
    seed: int, split: str, index: int, size: int, style: str = "classic"
) -> tuple[np.ndarray, list[dict]]:
    """RGB uint8 [size, size, 3] image and its hand annotations (COCO fields, no ids)."""
    image, label, hands = _compose(seed, split, index, size, style)
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
    shape = place(pose, mirrored(left, view), np.full(2, size / 2), 0.6 * size, 0.0)
    layer = Image.new("RGBA", (size, size), 0)
    draw_hand(ImageDraw.Draw(layer), shape, view, _SINGLE_SKIN, np.random.default_rng(seed))
    return np.asarray(layer)[..., 3] > 0, keypoints(shape)


def families(seed: int, split: str, index: int, style: str) -> tuple[str, ...]:
    """The paint families an image of `style` draws (none for classic)."""
    _check(split, style)
    if style == "classic":
        return ()
    rng = np.random.default_rng([seed, SPLITS[split], index, STYLES.index(style)])
    if style == "varied":
        return paint_variety.sample_variety(rng).families
    return (held_out_style.sample_pattern(rng),)


def _check(split: str, style: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")


def _compose(seed: int, split: str, index: int, size: int, style: str = "classic"):
    """Image, label map and (keypoints, is_left, view) per hand; label i is hand i (1-based).

    Bodies go down before any hand, so they never hide one: the hand count stays as sampled.
    """
    _check(split, style)
    if style == "held-out":
        rng = np.random.default_rng([seed, SPLITS[split], index, STYLES.index(style)])
        return held_out_style.compose(rng, size)
    rng = np.random.default_rng([seed, SPLITS[split], index])
    background, paint = _background(rng, size), Paint()
    if style == "varied":
        variety_rng = np.random.default_rng([seed, SPLITS[split], index, STYLES.index(style)])
        variety = paint_variety.sample_variety(variety_rng)
        background_family = [f for f in variety.families if f.startswith("background-")]
        if background_family:
            background = paint_variety.background(background_family[0], variety_rng, size)
        texture = [f for f in variety.families if f.startswith("texture-")]
        skin = paint_variety.skin_texture(texture[0], variety_rng, size) if texture else None
        paint = Paint(variety, skin)
    canvas = Canvas(background, rng, outline=paint.outline(size))
    after = rng.random(rng.integers(1, 4)) < 0.35  # distractors drawn over the hands
    for _ in range(int((~after).sum())):
        _draw_distractor(canvas, rng, paint)
    centres: list[np.ndarray] = []
    count = rng.choice(len(HAND_COUNT_P), p=HAND_COUNT_P)
    plans = [plan_hand(rng, size, centres) for _ in range(count)]
    for hand in plans:
        if hand.body is not None:
            _draw_body(canvas, hand, paint)
    hands = [
        (_paint_hand(canvas, rng, hand, label, paint), hand.is_left, hand.view)
        for label, hand in enumerate(plans, start=1)
    ]
    for _ in range(int(after.sum())):
        _draw_distractor(canvas, rng, paint)
    noisy = canvas.rgb + rng.normal(0.0, rng.uniform(1.5, 6.0), canvas.rgb.shape)
    return np.rint(np.clip(noisy, 0, 255)).astype(np.uint8), canvas.label, hands


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gradient under random non-skin clutter."""
    c0, c1 = (np.array(other_colour(rng, 0.1), np.float64) for _ in range(2))
    a = rng.uniform(0.0, 2.0 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size]
    t = xs * math.cos(a) + ys * math.sin(a)
    t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
    image = Image.fromarray((c0 + t[..., None] * (c1 - c0)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(4, 20)):
        centre = rng.uniform(-0.1, 1.1, 2) * size
        random_shape(draw, rng, centre, size * rng.uniform(0.03, 0.3), other_colour(rng))
    return np.asarray(image)


def _draw_distractor(canvas: Canvas, rng: np.random.Generator, paint: Paint) -> None:
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
    tone, light = skin_tone(rng), light_gradient(rng, centre, 2 * r)
    canvas.paint(layer, tone, light=paint.shade(light, skin=True), noise=3.0)


def _draw_body(canvas: Canvas, hand: HandPlan, paint: Paint) -> None:
    """The torso in the sleeve's (or a shirt's) colour: background, like every non-hand."""
    layer, draw = canvas.layer()
    polygon(draw, hand.body, 190)
    canvas.paint(layer, hand.clothes, light=paint.shade(hand.light), noise=3.0)


def _draw_forearm(canvas: Canvas, hand: HandPlan, paint: Paint) -> None:
    """The bare part of the arm in the arm's skin, then the sleeve; both are background."""
    arm, (r0, r_cut, r1) = hand.arm, hand.arm.radii
    layer, draw = canvas.layer()
    capsule(draw, arm.start, arm.cut, r0, r_cut, 185)
    canvas.paint(layer, hand.skin, light=paint.shade(hand.light, skin=True), noise=2.0)
    if arm.sleeve is not None:
        layer, draw = canvas.layer()
        capsule(draw, arm.cut, arm.end, r1 * 1.25, r1 * 1.3, 200)
        canvas.paint(layer, arm.sleeve, light=paint.shade(hand.light), noise=3.0)


def _paint_hand(
    canvas: Canvas, rng: np.random.Generator, hand: HandPlan, label: int, paint: Paint
) -> np.ndarray:
    """Forearm, hand (instance `label`) and maybe an occluder; returns the keypoints."""
    _draw_forearm(canvas, hand, paint)
    layer, draw = canvas.layer("RGBA")
    draw_hand(draw, hand.shape, hand.view, hand.colour, rng, flat=paint.flat)
    light = paint.shade(hand.light, skin=True)
    canvas.paint(layer, label=label, light=light, noise=rng.uniform(1.0, 5.0))
    uv = keypoints(hand.shape)
    if rng.random() < 0.35:
        layer, draw = canvas.layer()
        spot = uv[rng.integers(len(uv))]
        random_shape(draw, rng, spot, hand.shape.length * rng.uniform(0.1, 0.3), 200)
        canvas.paint(layer, other_colour(rng), noise=2.0)
    return uv
