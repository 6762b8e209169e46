"""The surface a synthetic scene is painted on, and the generic paint its layers share.

A colour image carries an integer label map beside it: every layer overwrites the labels under
it (hands with their instance number, everything else with 0), so each instance mask is exactly
the visible pixels of its hand. Shapes are drawn without antialiasing, so image and mask agree
pixel for pixel. A canvas may outline every layer it paints: a contour of the layer's own
outermost pixels, so the label map (and every mask) stays as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from handray.data.hand_paint import polygon, skin_distance
from handray.data.hand_shape import ellipse, rotate


class Canvas:
    """Colour image plus instance-label map; whatever is painted last owns the pixel."""

    def __init__(
        self,
        background: np.ndarray,
        rng: np.random.Generator,
        outline: tuple[tuple[int, int, int], int] | None = None,
    ):
        self.rgb = background.astype(np.float64)
        self.size = background.shape[0]
        self.label = np.zeros(background.shape[:2], np.int32)
        self.rng = rng
        self.outline = outline  # (colour, width in pixels) drawn around each layer, or None

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
        if self.outline is not None:
            colour, width = self.outline
            self.rgb[contour(values[..., 3] if layer.mode == "RGBA" else values, width)] = colour


def contour(layer: np.ndarray, width: int) -> np.ndarray:
    """The pixels of a layer's shape within `width` steps (4-neighbours) of its outside; the
    image border does not count as outside."""
    inner = layer > 0
    shape = inner.copy()
    for _ in range(width):
        padded = np.pad(inner, 1, mode="edge")
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return shape & ~inner


def light_gradient(rng: np.random.Generator, centre: np.ndarray, scale: float) -> Callable:
    """A linear lighting gradient across an object, as a function of pixel coordinates."""
    a = rng.uniform(0.0, 2.0 * math.pi)
    gain = rng.uniform(0.0, 0.5)
    dx, dy, (cx, cy) = math.cos(a), math.sin(a), centre
    return lambda xs, ys: np.clip(
        1.0 + gain * ((xs - cx) * dx + (ys - cy) * dy) / scale, 0.55, 1.45
    )


def other_colour(rng: np.random.Generator, skin_chance: float = 0.08) -> tuple[int, int, int]:
    """Mostly non-skin colours, so colour helps but does not solve the task."""
    colour = rng.uniform(0.0, 255.0, 3)
    for _ in range(20):
        if rng.random() < skin_chance or skin_distance(colour) > 60.0:
            break
        colour = rng.uniform(0.0, 255.0, 3)
    r, g, b = (int(v) for v in colour)
    return r, g, b


def random_shape(draw, rng: np.random.Generator, centre: np.ndarray, r: float, fill) -> None:
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
