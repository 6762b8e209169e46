"""What the "varied" style adds to the classic look: families of paint, each drawn per image
with its own chance, so a model learns hands rather than one way of drawing them.

A family changes how things are painted, never what is drawn: the scene keeps its geometry,
masks and keypoints, and a family applies to hands and non-hands alike (skin textures go on
every skin-coloured thing, outlines around every object), so that no family is a hand cue.
Decisions come first from the image's variety stream, then the painting's own draws, so the
families of an image can be read back cheaply (`sample_variety`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from handray.data.canvas import other_colour, random_shape

# Chance that an image draws each family. Families in one group exclude each other: a
# background is one of plain, noise and photo-like, or else (the rest, 0.40) the classic
# gradient under clutter; a skin texture is pores or blotches, or else (0.65) none.
FAMILIES = {
    "background-plain": 0.15,
    "background-noise": 0.20,
    "background-photo": 0.25,
    "texture-pores": 0.20,
    "texture-blotches": 0.15,
    "flat-shading": 0.25,
    "outline": 0.25,
}
_GROUPS = (
    ("background-plain", "background-noise", "background-photo"),
    ("texture-pores", "texture-blotches"),
    ("flat-shading",),
    ("outline",),
)


@dataclass(frozen=True)
class Variety:
    """The families one image draws; `outline` is the contour's colour and width in pixels at
    128 px (scaled with the image)."""

    families: tuple[str, ...]
    outline: tuple[tuple[int, int, int], float] | None = None

    def has(self, family: str) -> bool:
        return family in self.families


def sample_variety(rng: np.random.Generator) -> Variety:
    """Draw an image's families (a fixed number of draws, before any painting)."""
    families = []
    for group in _GROUPS:
        u, edge = rng.random(), 0.0
        for family in group:
            edge += FAMILIES[family]
            if u < edge:
                families.append(family)
                break
    dark = rng.random() < 0.5
    colour = tuple(int(v) for v in rng.uniform(0, 60, 3)) if dark else other_colour(rng, 0.0)
    width = float(rng.uniform(0.8, 2.2))
    outline = (colour, width) if "outline" in families else None
    return Variety(tuple(families), outline)


def value_noise(rng: np.random.Generator, size: int, octaves: int, first: int = 2) -> np.ndarray:
    """Multi-octave value noise in [0, 1], (size, size): random grids of 2**first, 2**(first+1)
    ... cells, smoothly upsampled and summed with halving weights."""
    total, weight, norm = np.zeros((size, size)), 1.0, 0.0
    for octave in range(octaves):
        cells = 2 ** (first + octave)
        grid = Image.fromarray(rng.random((cells + 1, cells + 1)).astype(np.float32), mode="F")
        total += weight * np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC))
        norm, weight = norm + weight, weight * 0.5
    total /= norm
    return (total - total.min()) / max(float(np.ptp(total)), 1e-6)


def background(family: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """An RGB uint8 background of a non-classic family."""
    if family == "background-plain":
        return np.broadcast_to(np.array(other_colour(rng, 0.1), np.uint8), (size, size, 3)).copy()
    if family == "background-noise":
        return _noise_background(rng, size)
    if family == "background-photo":
        return _photo_background(rng, size)
    raise ValueError(f"no background family {family!r}")


def _noise_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Coloured multi-octave value noise: each channel's noise on a ramp between two colours."""
    c0, c1 = (np.array(other_colour(rng, 0.1), np.float64) for _ in range(2))
    first = int(rng.integers(1, 4))
    octaves = int(rng.integers(2, 6))
    t = value_noise(rng, size, octaves, first)
    tint = value_noise(rng, size, 2, first)[..., None] * rng.uniform(-40, 40, 3)
    image = c0 + t[..., None] * (c1 - c0) + tint
    return np.clip(image, 0, 255).astype(np.uint8)


def _photo_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Large blurred colour regions, a few shapes with soft edges, and a fine grain."""
    image = Image.new("RGB", (size, size), other_colour(rng, 0.1))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(4, 9)):
        centre = rng.uniform(-0.2, 1.2, 2) * size
        random_shape(draw, rng, centre, size * rng.uniform(0.25, 0.7), other_colour(rng, 0.1))
    image = image.filter(ImageFilter.GaussianBlur(size * rng.uniform(0.04, 0.12)))
    for _ in range(rng.integers(1, 4)):
        layer = Image.new("L", (size, size), 0)
        centre = rng.uniform(0.0, 1.0, 2) * size
        random_shape(ImageDraw.Draw(layer), rng, centre, size * rng.uniform(0.1, 0.35), 255)
        layer = layer.filter(ImageFilter.GaussianBlur(size * rng.uniform(0.005, 0.02)))
        image = Image.composite(Image.new("RGB", (size, size), other_colour(rng)), image, layer)
    grain = 1.0 + (value_noise(rng, size, 2, 4) - 0.5) * rng.uniform(0.05, 0.25)
    return np.clip(np.asarray(image) * grain[..., None], 0, 255).astype(np.uint8)


def skin_texture(family: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A brightness multiplier (size, size) for skin: fine pores or soft blotches."""
    if family == "texture-pores":
        fine = rng.normal(0.0, rng.uniform(0.02, 0.05), (size, size))
        pores = (rng.random((size, size)) < rng.uniform(0.02, 0.06)) * rng.uniform(0.08, 0.18)
        return 1.0 + fine - pores
    if family == "texture-blotches":
        blotches = value_noise(rng, size, 2, int(rng.integers(2, 4))) - 0.5
        return 1.0 + blotches * rng.uniform(0.15, 0.35)
    raise ValueError(f"no texture family {family!r}")


@dataclass(frozen=True)
class Paint:
    """How the scene shades its layers: the classic look (`Paint()`) or an image's variety."""

    variety: Variety | None = None
    texture: np.ndarray | None = None

    @property
    def flat(self) -> bool:
        return self.variety is not None and self.variety.has("flat-shading")

    def shade(self, light: Callable | None, skin: bool = False) -> Callable | None:
        """The light function to paint with: none when flat, times the texture on skin."""
        if self.flat:
            light = None
        if not skin or self.texture is None:
            return light
        texture = self.texture
        if light is None:
            return lambda xs, ys: texture[ys, xs]
        return lambda xs, ys: light(xs, ys) * texture[ys, xs]

    def outline(self, size: int) -> tuple[tuple[int, int, int], int] | None:
        if self.variety is None or self.variety.outline is None:
            return None
        colour, width = self.variety.outline
        return colour, max(1, math.floor(width * size / 128.0 + 0.5))
