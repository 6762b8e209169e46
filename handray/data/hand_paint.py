"""How a procedural hand looks: skin tones, and the palm or the back with the cues that tell them
apart, so that the side (left or right) is decidable from pixels as in photos.

A mirrored silhouette seen from the palm is the other hand seen from the back, so only the view
decides the side. Palm: lighter than the arm (most of all on dark skin), a lighter centre, dark
creases, fingers' light undersides, no nails. Back: a little darker and ruddier than the arm,
light nail plates at the tips of the unfolded fingers, dark knuckle lines across the finger bases,
folded fingers hidden behind the hand but the thumb's base in view. Cues scale with the hand
and never fall below a pixel, so the smallest hands keep a light-dot-at-the-tips or light-palm
cue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import ImageDraw

from handray.data.hand_shape import Shape, ellipse

VIEWS = ("palm", "back")
# Skin tones from light to dark; a tone is a point on this polyline with a small jitter.
SKIN = np.array(
    [[243, 216, 192], [224, 172, 138], [176, 118, 84], [110, 70, 48], [70, 45, 33]], np.float64
)
_PALM_LIGHT = np.array([250.0, 214.0, 194.0])  # what a palm's tone moves towards
_NAIL = np.array([255.0, 240.0, 234.0])  # what a nail plate's tone moves towards
_BACK = np.array([0.95, 0.88, 0.86])  # the back: a little darker and ruddier than the arm
# Palm creases of the canonical right palm (see hand_shape): heart, head and life line.
_CREASES = (
    np.array([[-0.17, -0.36], [-0.08, -0.385], [0.02, -0.40], [0.085, -0.435]]),
    np.array([[0.19, -0.33], [0.08, -0.31], [-0.03, -0.28], [-0.13, -0.23]]),
    np.array([[0.18, -0.33], [0.10, -0.27], [0.06, -0.17], [0.045, -0.05]]),
)
_PALM_MIDDLE = ellipse(np.array([-0.01, -0.22]), 0.11, 0.12, 0.0, 16)
_LINE = 0.032  # crease and knuckle line width, in hand lengths
_THUMB_IN_VIEW = 45.0  # a back view shows the thumb's segments flexed less than this (degrees)


@dataclass(frozen=True)
class Look:
    """The colours of one hand's visible side."""

    surface: np.ndarray  # palm or back of hand and fingers
    centre: np.ndarray  # the lighter palm centre
    line: np.ndarray  # creases (palm) or knuckle lines (back)
    nail: np.ndarray


def polygon(draw: ImageDraw.ImageDraw, points: np.ndarray, fill: Any, **kwargs: Any) -> None:
    """Fill a polygon given as an (N, 2) array."""
    draw.polygon(np.asarray(points, np.float64).ravel().tolist(), fill=fill, **kwargs)


def capsule(draw: ImageDraw.ImageDraw, p, q, rp: float, rq: float, fill: Any) -> None:
    """A thick segment with round ends (a finger bone between two joints)."""
    (px, py), (qx, qy) = (float(v) for v in p), (float(v) for v in q)
    rp, rq = float(rp), float(rq)
    n = math.hypot(qx - px, qy - py)
    if n > 1e-6:
        nx, ny = -(qy - py) / n, (qx - px) / n
        quad = [px + nx * rp, py + ny * rp, qx + nx * rq, qy + ny * rq]
        quad += [qx - nx * rq, qy - ny * rq, px - nx * rp, py - ny * rp]
        draw.polygon(quad, fill=fill)
    for x, y, r in ((px, py, rp), (qx, qy, rq)):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def skin_tone(rng: np.random.Generator) -> np.ndarray:
    """A human tone: a point on the light-to-dark polyline, jittered in brightness and barely
    in hue, so that no tone turns blue, green or red."""
    t = rng.uniform(0.0, len(SKIN) - 1.0)
    i = min(int(t), len(SKIN) - 2)
    tone = SKIN[i] + (t - i) * (SKIN[i + 1] - SKIN[i])
    return tone * rng.uniform(0.94, 1.06) * rng.uniform(0.98, 1.02, 3)


def skin_distance(colour: np.ndarray) -> float:
    """Distance of an RGB colour to the nearest human skin tone."""
    a, d = SKIN[:-1], np.diff(SKIN, axis=0)
    t = np.clip(((colour - a) * d).sum(1) / (d * d).sum(1), 0.0, 1.0)
    return float(np.min(np.linalg.norm(a + t[:, None] * d - colour, axis=1)))


def hand_look(tone: np.ndarray, view: str) -> Look:
    """Colours of the palm or back of a hand of skin (or glove) tone `tone`."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {VIEWS}")
    tone = np.asarray(tone, np.float64)
    if view == "palm":
        surface = tone + 0.42 * (_PALM_LIGHT - tone)
        line = surface * 0.58
    else:
        surface = tone * _BACK
        line = surface * 0.62
    centre = np.minimum(surface * 1.1, 255.0)
    return Look(surface, centre, line, tone + 0.7 * (_NAIL - tone))


def opaque(colour: np.ndarray) -> tuple[int, int, int, int]:
    """An RGB colour as PIL's opaque RGBA fill, each channel clipped to 0..255."""
    r, g, b = (int(min(max(v, 0.0), 255.0)) for v in np.asarray(colour).tolist())
    return r, g, b, 255


def _width(shape: Shape) -> int:
    return max(1, round(_LINE * shape.length))


def draw_hand(
    draw: ImageDraw.ImageDraw,
    shape: Shape,
    view: str,
    tone: np.ndarray,
    rng: np.random.Generator,
    flat: bool = False,
) -> None:
    """The hand in colour on an RGBA layer (alpha marks the hand), seen from `view`.

    Palm view: palm, its centre and creases, then fingers over them. Back view: whatever folds
    towards the palm goes first, with its nails, then the back of the hand over it, then the
    thumb's side (which stays in view on a fist, as the thumb's base does on a real one), then
    the knuckles. `flat`: one tone for palm and fingers (the jitter is drawn all the same).
    """
    look = hand_look(tone, view)
    tones = look.surface[None, :] * rng.uniform(0.94, 1.06, (6, 1))  # palm, then each finger
    if flat:
        tones = np.repeat(look.surface[None, :], 6, axis=0)
    rim = 1 if shape.radii[2, 0] >= 2.5 else 0
    segments = [(k, j) for k in (4, 3, 2, 1, 0) for j in range(3)]  # little finger to thumb
    if view == "palm":
        _draw_palm(draw, shape, tones[0], rim)
        _draw_creases(draw, shape, look)
        _draw_segments(draw, shape, segments, tones[1:], rim)
        return
    over = [(0, j) for j in range(3) if shape.flex[0, j] < _THUMB_IN_VIEW]
    under = [segment for segment in segments if segment not in over]
    _draw_segments(draw, shape, under, tones[1:], rim)
    _draw_nails(draw, shape, {k for k, j in under if j == 2}, look.nail)
    _draw_palm(draw, shape, tones[0], rim)
    _draw_segments(draw, shape, over, tones[1:], rim)
    _draw_nails(draw, shape, {k for k, j in over if j == 2}, look.nail)
    _draw_knuckles(draw, shape, look.line)


def _draw_palm(draw: ImageDraw.ImageDraw, shape: Shape, tone: np.ndarray, rim: int) -> None:
    outline = opaque(tone * 0.75) if rim else None
    polygon(draw, shape.palm, opaque(tone), outline=outline, width=rim)


def _draw_segments(
    draw: ImageDraw.ImageDraw, shape: Shape, segments: list, tones: np.ndarray, rim: int
) -> None:
    """Finger bones (finger k, from joint j to j + 1) in order; darker rims mark joints and
    overlaps."""
    for k, j in segments:
        p, q = shape.joints[k, j], shape.joints[k, j + 1]
        rp, rq = shape.radii[k, j], shape.radii[k, j + 1]
        if rim and rq - rim >= 0.5:
            capsule(draw, p, q, rp, rq, opaque(tones[k] * 0.75))
            capsule(draw, p, q, rp - rim, rq - rim, opaque(tones[k]))
        else:
            capsule(draw, p, q, rp, rq, opaque(tones[k]))


def _draw_creases(draw: ImageDraw.ImageDraw, shape: Shape, look: Look) -> None:
    """A lighter palm centre crossed by the three main creases."""
    polygon(draw, shape.map(_PALM_MIDDLE), opaque(look.centre))
    for crease in _CREASES:
        points = [(float(x), float(y)) for x, y in shape.map(crease)]
        draw.line(points, fill=opaque(look.line), width=_width(shape), joint="curve")


def _draw_nails(draw: ImageDraw.ImageDraw, shape: Shape, fingers, colour: np.ndarray) -> None:
    """Nail plates on the distal half of those `fingers` whose last segment still faces up."""
    for k in sorted(fingers):
        tip, dip = shape.joints[k, 3], shape.joints[k, 2]
        span = float(np.hypot(*(tip - dip)))
        if shape.flex[k, 2] >= 90.0 or span < 1e-6:
            continue
        u, r = (tip - dip) / span, shape.radii[k, 3]
        start = tip - u * min(0.65 * span, 2.4 * r)
        capsule(
            draw, start, tip - u * 0.3 * r, max(0.8 * r, 0.5), max(0.7 * r, 0.5), opaque(colour)
        )


def _draw_knuckles(draw: ImageDraw.ImageDraw, shape: Shape, colour: np.ndarray) -> None:
    """Dark lines across the four finger bases and, where the finger is up, its middle joint."""
    for k in range(1, 5):
        for j in (0, 1):
            if j == 1 and shape.flex[k, 0] >= 90.0:
                break
            a, b = shape.joints[k, j], shape.joints[k, j + 1]
            span = float(np.hypot(*(b - a)))
            if span < 1e-6:
                continue
            across = np.array([a[1] - b[1], b[0] - a[0]]) / span * 0.85 * shape.radii[k, j]
            ends = [tuple(a - across), tuple(a + across)]
            draw.line(ends, fill=opaque(colour), width=_width(shape))
