"""Geometry of a procedural hand: a sampled pose walked into joints and placed in an image.

The canonical shape is a right hand seen from the palm: image axes (y down), wrist at the origin,
fingers up (-y), thumb towards +x, in units of hand length (wrist to middle tip). Its mirror image
is a left hand seen from the palm, and equally a right hand seen from the back: the silhouette
alone never tells the side, so `place` takes the mirroring and the caller owns the side and view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def chaikin(points: np.ndarray, rounds: int = 2) -> np.ndarray:
    """Round a closed polygon's corners by corner cutting."""
    for _ in range(rounds):
        following = np.roll(points, -1, axis=0)
        points = np.stack([0.75 * points + 0.25 * following, 0.25 * points + 0.75 * following], 1)
        points = points.reshape(-1, 2)
    return points


def rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """Points (..., 2) turned by `angle` radians about the origin."""
    c, s = math.cos(angle), math.sin(angle)
    return np.asarray(points, np.float64) @ np.array([[c, s], [-s, c]])


def ellipse(centre: np.ndarray, rx: float, ry: float, angle: float, n: int = 32) -> np.ndarray:
    """Polygon of a rotated ellipse (PIL only draws axis-aligned ones)."""
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return centre + rotate(np.stack([rx * np.cos(t), ry * np.sin(t)], 1), angle)


# Finger order is RHD's: thumb, index, middle, ring, little.
# fmt: off
PALM = chaikin(np.array([
    [-0.15, 0.0], [0.14, 0.0], [0.20, -0.14], [0.21, -0.30], [0.19, -0.44], [0.09, -0.48],
    [-0.02, -0.49], [-0.12, -0.46], [-0.19, -0.40], [-0.19, -0.20],
]))
# fmt: on
PALM_CENTRE = np.array([0.0, -0.25])
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


@dataclass(frozen=True)
class Pose:
    curl: np.ndarray  # (5,) 0 straight .. 1 fully flexed
    angle: np.ndarray  # (5,) base direction of each finger, degrees
    bend: np.ndarray  # (5, 3) sideways bend at each joint, degrees
    length: np.ndarray  # (5,) per-finger length factor
    palm_width: float


@dataclass(frozen=True)
class Shape:
    """A placed hand: joints in image pixels plus the transform that put it there."""

    palm: np.ndarray  # (N, 2) polygon, image pixels
    joints: np.ndarray  # (5, 4, 2) base, j1, j2, tip per finger
    radii: np.ndarray  # (5, 4) half widths at those joints
    flex: np.ndarray  # (5, 3) accumulated flexion of each segment, degrees
    wrist: np.ndarray  # (2,)
    up: np.ndarray  # (2,) unit vector from the wrist towards the fingers
    thumb_side: np.ndarray  # (2,) unit vector across the hand towards the thumb
    length: float
    centre: np.ndarray  # (2,) where the palm centre lies
    angle: float  # radians
    flip: float  # -1.0 when mirrored
    palm_width: float

    def map(self, points: np.ndarray) -> np.ndarray:
        """Canonical points (..., 2) on the palm into image pixels, as the palm was placed."""
        canonical = np.asarray(points, np.float64) * [self.palm_width, 1.0] - PALM_CENTRE
        return rotate(canonical * [self.flip, 1.0], self.angle) * self.length + self.centre


def sample_pose(rng: np.random.Generator) -> Pose:
    """Open hands, fists, pointing and anything between, so the model sees every silhouette."""
    kind = rng.integers(len(_CURLS))
    curl = rng.uniform(*_CURLS[kind], 5)
    if kind == 3:  # pointing: index straight, thumb anywhere
        curl[:2] = rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.15)
    angle = _ANGLES + rng.uniform(-3.0, 14.0) * _SPREAD + rng.normal(0.0, 2.5, 5)
    angle[0] = rng.uniform(25.0, 75.0)
    return Pose(
        curl=curl,
        angle=angle,
        bend=rng.normal(0.0, 4.0, (5, 3)),
        length=rng.uniform(0.93, 1.07, 5),
        palm_width=float(rng.uniform(0.9, 1.1)),
    )


def _chains(pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Canonical joint positions (5, 4, 2) of the pose, each finger walked from base to tip,
    and the accumulated flexion (5, 3) of each segment."""
    out, flexes = np.zeros((5, 4, 2)), np.zeros((5, 3))
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
            out[k, j + 1], flexes[k, j] = point, flex
    return out, flexes


def place(pose: Pose, mirrored: bool, centre: np.ndarray, length: float, angle: float) -> Shape:
    """The pose in image pixels: mirrored if asked, scaled, turned `angle` degrees, palm at
    `centre`. Mirror a left hand seen from the palm or a right hand seen from the back."""
    flip, angle = -1.0 if mirrored else 1.0, math.radians(angle)

    def to_image(points: np.ndarray) -> np.ndarray:
        return rotate((points - PALM_CENTRE) * [flip, 1.0], angle) * length + centre

    joints, flex = _chains(pose)
    return Shape(
        palm=to_image(PALM * [pose.palm_width, 1.0]),
        joints=to_image(joints),
        radii=0.5 * length * _WIDTHS[:, None] * _TAPER[None, :],
        flex=flex,
        wrist=to_image(np.zeros(2)),
        up=rotate(np.array([0.0, -1.0]), angle),
        thumb_side=rotate(np.array([flip, 0.0]), angle),
        length=length,
        centre=np.asarray(centre, np.float64),
        angle=angle,
        flip=flip,
        palm_width=pose.palm_width,
    )


def keypoints(shape: Shape) -> np.ndarray:
    """The 21 keypoints in RHD order: wrist, then each finger from tip to base."""
    return np.concatenate([shape.wrist[None], shape.joints[:, ::-1].reshape(-1, 2)])
