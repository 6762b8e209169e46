"""What a synthetic scene samples for each hand: place, side, view, pose, colours, arm, body.

Each hand is seen from the palm or the back (annotation key "view"); the back view mirrors the
silhouette, so pixels decide the side only through the cues of `hand_paint`. A forearm leaves the
wrist and may lead to a torso (background) where photos would have one. Geometry lives in
`hand_shape`; the scene paints the plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from handray.data.canvas import light_gradient, other_colour
from handray.data.hand_paint import skin_tone
from handray.data.hand_shape import Shape, chaikin, place, rotate, sample_pose

HAND_COUNT_P = (0.15, 0.35, 0.32, 0.18)  # chance of 0, 1, 2, 3 hands in an image
BACK_CHANCE = 0.5  # share of hands seen from the back; the others show the palm
BODY_CHANCE = 0.6  # share of arms that lead to a torso
GLOVE_CHANCE = 0.05  # share of hands in a glove of any colour instead of skin


@dataclass(frozen=True)
class Arm:
    """A forearm from the wrist to the elbow, bare up to `cut`, sleeved beyond if `sleeve`."""

    start: np.ndarray
    cut: np.ndarray
    end: np.ndarray
    radii: tuple[float, float, float]  # at start, cut and end
    sleeve: tuple[int, int, int] | None


@dataclass(frozen=True)
class HandPlan:
    """Everything sampled about one hand before any of it is drawn."""

    shape: Shape
    is_left: bool
    view: str
    colour: np.ndarray  # skin, or a glove's colour
    skin: np.ndarray  # the arm's skin
    light: Callable
    arm: Arm
    body: np.ndarray | None  # torso polygon at the arm's end
    clothes: tuple[int, int, int]


def mirrored(is_left: bool, view: str) -> bool:
    """A left palm and a right back both show the canonical right palm's mirror image."""
    return is_left != (view == "back")


def plan_hand(rng: np.random.Generator, size: int, centres: list[np.ndarray]) -> HandPlan:
    """Sample one hand: size, place, side, view, pose, colours, arm and maybe a body."""
    length = size * math.exp(rng.uniform(math.log(0.15), math.log(0.55)))
    centre = _hand_centre(rng, size, length, centres)
    centres.append(centre)
    is_left = bool(rng.random() < 0.5)
    view = "back" if rng.random() < BACK_CHANCE else "palm"
    shape = place(sample_pose(rng), mirrored(is_left, view), centre, length, rng.uniform(0, 360))
    skin = skin_tone(rng)
    colour = rng.uniform(0.0, 255.0, 3) if rng.random() < GLOVE_CHANCE else skin
    light = light_gradient(rng, centre, length)
    arm = _plan_arm(rng, shape)
    body = _plan_body(rng, shape, arm) if rng.random() < BODY_CHANCE else None
    clothes = arm.sleeve or other_colour(rng)
    return HandPlan(shape, is_left, view, colour, skin, light, arm, body, clothes)


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


def _plan_arm(rng: np.random.Generator, shape: Shape) -> Arm:
    """A forearm leaving the wrist, bare or in a sleeve, 0.6 to 2.5 hand lengths long."""
    down = -rotate(shape.up, math.radians(rng.uniform(-25.0, 25.0)))
    r0 = 0.15 * shape.length
    r1 = r0 * rng.uniform(1.05, 1.3)
    reach = shape.length * rng.uniform(0.6, 2.5)
    sleeve = rng.uniform(0.1, 0.9) * reach if rng.random() < 0.5 else None
    start, end = shape.wrist + shape.up * 0.08 * shape.length, shape.wrist + down * reach
    if sleeve is None:
        return Arm(start, end, end, (r0, r1, r1), None)
    r_cut = r0 + (r1 - r0) * sleeve / reach
    return Arm(start, shape.wrist + down * sleeve, end, (r0, r_cut, r1), other_colour(rng))


def _plan_body(rng: np.random.Generator, shape: Shape, arm: Arm) -> np.ndarray:
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
