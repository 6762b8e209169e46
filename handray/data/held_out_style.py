"""A second way of drawing hands, for evaluation only: cartoon hands that training never sees.

A model trained on the main generator may learn its look rather than hands; scoring it on a
drawing style it never met tells the two apart. Here hands keep the main generator's poses,
sides, views and arms (`hand_plan`) but not its geometry or paint: fingers are straight, of one
width, shorter and thicker, with blunt squared tips, on a rounded-square (mitten) palm, all
derived from `hand_shape`'s joints so the 21 keypoints stay where the drawing puts them.
Shading is cel shading: two flat tones split along a light direction, and a dark outline around
every object. Backgrounds are regular patterns (stripes, checks, dots, tiles), a family neither
"classic" nor "varied" produces, and skin-coloured non-hands are drawn in the same style.
Palm and back keep the cues of `hand_paint` in cartoon form (a lighter palm with creases; nails
and knuckle marks on the back), so the side stays decidable from pixels.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import ImageDraw

from handray.data.canvas import Canvas, other_colour
from handray.data.hand_paint import capsule, hand_look, opaque, polygon, skin_tone
from handray.data.hand_plan import HAND_COUNT_P, HandPlan, plan_hand
from handray.data.hand_shape import Shape, chaikin, ellipse, keypoints, rotate

PATTERNS = ("pattern-stripes", "pattern-checks", "pattern-dots", "pattern-tiles")
_INK = (28, 22, 24)  # the outline colour
_SHADOW = 0.74  # the cel shadow tone, as a share of the lit tone
_FINGER_LENGTH = np.array([0.9, 0.82, 0.82, 0.82, 0.82])  # of the main generator's finger
_FINGER_WIDTH = np.array([1.45, 1.4, 1.4, 1.4, 1.45])  # of its base width, all along the finger
# The mitten palm of the canonical right palm (see hand_shape): a rounded square.
_MITTEN = chaikin(
    np.array([[-0.19, 0.01], [0.16, 0.01], [0.215, -0.2], [0.2, -0.49], [-0.205, -0.47]]),
    rounds=3,
)
_CREASES = (  # two cartoon creases: across the palm, and round the thumb's base
    np.array([[-0.15, -0.36], [-0.02, -0.38], [0.12, -0.35]]),
    np.array([[0.14, -0.3], [0.06, -0.22], [0.05, -0.08]]),
)
_THUMB_OVER = 45.0  # a back view shows the thumb over the palm when it bends less (degrees)


def sample_pattern(rng: np.random.Generator) -> str:
    """The image's background family: the first draw of its stream."""
    return PATTERNS[int(rng.integers(len(PATTERNS)))]


def pattern_background(rng: np.random.Generator, size: int, family: str) -> np.ndarray:
    """A regular pattern in random non-skin colours, turned by a random angle (RGB uint8)."""
    colours = np.array([other_colour(rng) for _ in range(4)], np.float64)
    angle = rng.uniform(0.0, math.pi)
    period = size * rng.uniform(0.06, 0.2)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    u = (xs * math.cos(angle) + ys * math.sin(angle)) / period
    v = (-xs * math.sin(angle) + ys * math.cos(angle)) / period
    if family == "pattern-stripes":
        index = (np.floor(u * 2) % 2).astype(int)
    elif family == "pattern-checks":
        index = ((np.floor(u) + np.floor(v)) % 2).astype(int)
    elif family == "pattern-dots":
        fu, fv = u % 1.0 - 0.5, v % 1.0 - 0.5
        index = (fu**2 + fv**2 < rng.uniform(0.08, 0.16)).astype(int)
    elif family == "pattern-tiles":
        cell = (np.floor(u) * 7 + np.floor(v) * 3) % 3 + 1
        grout = (u % 1.0 < 0.08) | (v % 1.0 < 0.08)
        index = np.where(grout, 0, cell).astype(int)
    else:
        raise ValueError(f"unknown pattern {family!r}; choose one of {PATTERNS}")
    return colours[index].astype(np.uint8)


def cartoon_shape(shape: Shape) -> Shape:
    """The hand's joints made cartoon: each finger shorter from its base, of one width."""
    base = shape.joints[:, :1]
    joints = base + (shape.joints - base) * _FINGER_LENGTH[:, None, None]
    radii = np.repeat((shape.radii[:, 0] * _FINGER_WIDTH)[:, None], 4, axis=1)
    return dataclasses.replace(shape, joints=joints, radii=radii, palm=shape.map(_MITTEN))


def compose(rng: np.random.Generator, size: int):
    """Image, label map and (keypoints, is_left, view) per hand, as `scene` composes them."""
    background = pattern_background(rng, size, sample_pattern(rng))
    width = max(1, round(size / 100))
    canvas = Canvas(background, rng, outline=(_INK, width))
    after = rng.random(rng.integers(1, 4)) < 0.35  # distractors drawn over the hands
    for _ in range(int((~after).sum())):
        _draw_distractor(canvas, rng)
    centres: list[np.ndarray] = []
    count = rng.choice(len(HAND_COUNT_P), p=HAND_COUNT_P)
    plans = [plan_hand(rng, size, centres) for _ in range(count)]
    for hand in plans:
        if hand.body is not None:
            layer, draw = canvas.layer()
            polygon(draw, hand.body, 200)
            canvas.paint(layer, hand.clothes, light=_cel(rng, hand.shape.centre))
    hands = []
    for label, hand in enumerate(plans, start=1):
        hands.append((_paint_hand(canvas, rng, hand, label), hand.is_left, hand.view))
    for _ in range(int(after.sum())):
        _draw_distractor(canvas, rng)
    noisy = canvas.rgb + rng.normal(0.0, rng.uniform(0.5, 3.0), canvas.rgb.shape)
    return np.rint(np.clip(noisy, 0, 255)).astype(np.uint8), canvas.label, hands


def _cel(rng: np.random.Generator, centre: np.ndarray):
    """Two flat tones: the shadow beyond a line across the object, facing away from the light."""
    a = rng.uniform(0.0, 2.0 * math.pi)
    dx, dy, (cx, cy) = math.cos(a), math.sin(a), centre
    offset = rng.uniform(-2.0, 6.0)
    return lambda xs, ys: np.where((xs - cx) * dx + (ys - cy) * dy > offset, _SHADOW, 1.0)


def _paint_hand(canvas: Canvas, rng: np.random.Generator, hand: HandPlan, label: int):
    """Arm (bare, then a sleeve) and the cartoon hand (instance `label`); returns keypoints."""
    arm, (r0, r_cut, r1) = hand.arm, hand.arm.radii
    light = _cel(rng, hand.shape.centre)
    layer, draw = canvas.layer()
    capsule(draw, arm.start, arm.cut, 1.1 * r0, 1.1 * r_cut, 200)
    canvas.paint(layer, hand.skin, light=light)
    if arm.sleeve is not None:
        layer, draw = canvas.layer()
        capsule(draw, arm.cut, arm.end, r1 * 1.3, r1 * 1.35, 200)
        canvas.paint(layer, arm.sleeve, light=light)
    shape = cartoon_shape(hand.shape)
    layer, draw = canvas.layer("RGBA")
    _draw_cartoon_hand(draw, shape, hand.view, hand.colour)
    canvas.paint(layer, label=label, light=light, noise=rng.uniform(0.0, 2.0))
    return keypoints(shape)


def _segment(p, q, r: float, tip: bool) -> np.ndarray:
    """A finger bone as a bevelled rectangle of half width `r`, a little past both joints
    (blunt and squared at a fingertip)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    span = float(np.hypot(*(q - p)))
    u = (q - p) / span if span > 1e-6 else np.array([0.0, -1.0])
    n = np.array([-u[1], u[0]]) * r
    a, b = p - u * 0.4 * r, q + u * (0.85 if tip else 0.4) * r
    return chaikin(np.array([a + n, b + n, b - n, a - n]), rounds=1)


def _draw_fingers(draw: ImageDraw.ImageDraw, shape: Shape, fingers, tones, ink) -> None:
    """Each finger in turn: its bones in ink a little wider, then filled, so fingers part."""
    w = max(1.0, 0.12 * float(shape.radii[2, 0]))
    for k in fingers:
        bones = [(shape.joints[k, j], shape.joints[k, j + 1], j == 2) for j in range(3)]
        for p, q, tip in bones:
            polygon(draw, _segment(p, q, shape.radii[k, 0] + w, tip), ink)
        for p, q, tip in bones:
            polygon(draw, _segment(p, q, shape.radii[k, 0], tip), opaque(tones))


def _draw_nails(draw: ImageDraw.ImageDraw, shape: Shape, fingers, colour) -> None:
    """Square nail plates at the tips of those `fingers` whose last bone faces up."""
    for k in fingers:
        if shape.flex[k, 2] >= 90.0:
            continue
        tip, dip, r = shape.joints[k, 3], shape.joints[k, 2], float(shape.radii[k, 0])
        span = float(np.hypot(*(tip - dip)))
        if span < 1e-6:
            continue
        u = (tip - dip) / span
        n = np.array([-u[1], u[0]]) * 0.6 * r
        a, b = tip - u * min(0.9 * r, 0.8 * span), tip + u * 0.55 * r
        polygon(draw, np.array([a + n, b + n, b - n, a - n]), opaque(colour))


def _draw_cartoon_hand(draw: ImageDraw.ImageDraw, shape: Shape, view: str, tone) -> None:
    """Palm view: mitten palm, lighter centre and creases, fingers over it. Back view: folded
    fingers and their nails under the back of the hand, the thumb over it while it stays
    open, knuckle marks across the finger bases."""
    look = hand_look(tone, view)
    ink = opaque(np.minimum(look.surface * 0.35, 70.0))
    line = max(1, round(0.03 * shape.length))
    order = (4, 3, 2, 1, 0)
    if view == "palm":
        polygon(draw, shape.palm, opaque(look.surface), outline=ink, width=line)
        middle = ellipse(np.array([-0.01, -0.24]), 0.12, 0.12, 0.0, 16)
        polygon(draw, shape.map(middle), opaque(look.centre))
        for crease in _CREASES:
            points = [(float(x), float(y)) for x, y in shape.map(crease)]
            draw.line(points, fill=opaque(look.line), width=line)
        _draw_fingers(draw, shape, order, look.surface, ink)
        return
    over = [0] if shape.flex[0, 0] < _THUMB_OVER else []
    under = [k for k in order if k not in over]
    _draw_fingers(draw, shape, under, look.surface, ink)
    _draw_nails(draw, shape, under, look.nail)
    polygon(draw, shape.palm, opaque(look.surface), outline=ink, width=line)
    _draw_fingers(draw, shape, over, look.surface, ink)
    _draw_nails(draw, shape, over, look.nail)
    for k in range(1, 5):  # knuckle marks: short arcs just below each finger's base
        base, r = shape.joints[k, 0], float(shape.radii[k, 0])
        arc = base + rotate(np.array([[-0.5, 0.45], [0.0, 0.6], [0.5, 0.45]]) * r, shape.angle)
        draw.line([(float(x), float(y)) for x, y in arc], fill=opaque(look.line), width=line)


def _draw_distractor(canvas: Canvas, rng: np.random.Generator) -> None:
    """Skin-coloured cartoon non-hands: a face, a bar, a rounded square or a blob."""
    size = canvas.size
    centre, r = rng.uniform(0.0, size, 2), size * rng.uniform(0.06, 0.18)
    kind, angle = int(rng.integers(4)), rng.uniform(-0.5, 0.5)
    layer, draw = canvas.layer()
    if kind == 0:
        polygon(draw, ellipse(centre, r, 1.1 * r, angle), 200)
        for offset in ((-0.35, -0.2), (0.35, -0.2)):
            spot = centre + rotate(np.array(offset) * r, angle)
            polygon(draw, ellipse(spot, 0.1 * r, 0.14 * r, angle), 40)
        mouth = centre + rotate(np.array([[-0.35, 0.35], [0.0, 0.5], [0.35, 0.35]]) * r, angle)
        draw.line([(float(x), float(y)) for x, y in mouth], fill=60, width=max(1, round(r / 8)))
    elif kind == 1:
        direction = rotate([r * rng.uniform(1.0, 2.2), 0.0], rng.uniform(0.0, math.pi))
        capsule(draw, centre - direction, centre + direction, 0.35 * r, 0.35 * r, 200)
    elif kind == 2:
        square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * r * rng.uniform(0.6, 1.0, 2)
        polygon(draw, centre + rotate(chaikin(square, rounds=3), angle), 200)
    else:
        t = np.linspace(0.0, 2.0 * math.pi, 6, endpoint=False)
        radii = r * rng.uniform(0.5, 1.0, 6)
        polygon(draw, chaikin(centre + np.stack([np.cos(t) * radii, np.sin(t) * radii], 1)), 200)
    canvas.paint(layer, skin_tone(rng), light=_cel(rng, centre))
