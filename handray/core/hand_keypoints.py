"""The hand's 21 keypoints: names in RHD order, the skeleton, each bone's finger and the OKS
sigmas. A base module, so pictures (`visualize`) and evaluation share one layout with the data."""

from __future__ import annotations

# RHD order: wrist, then each finger from its tip towards the palm.
FINGERS = ("thumb", "index", "middle", "ring", "little")
_JOINTS = {"thumb": ("tip", "ip", "mcp", "cmc")}
KEYPOINT_NAMES: tuple[str, ...] = (
    "wrist",
    *(
        f"{finger}_{joint}"
        for finger in FINGERS
        for joint in _JOINTS.get(finger, ("tip", "dip", "pip", "mcp"))
    ),
)
# 1-based keypoint index pairs, as COCO stores skeletons: wrist to each finger base, then along it.
SKELETON: tuple[tuple[int, int], ...] = tuple(
    pair
    for f in range(len(FINGERS))
    for pair in (
        (1, 5 + 4 * f),
        (5 + 4 * f, 4 + 4 * f),
        (4 + 4 * f, 3 + 4 * f),
        (3 + 4 * f, 2 + 4 * f),
    )
)
# The finger (a name in FINGERS) each SKELETON bone belongs to: pictures give each its colour.
BONE_FINGERS: tuple[str, ...] = tuple(finger for finger in FINGERS for _ in range(4))

# COCO-WholeBody's hand keypoint sigmas (Jin et al., "Whole-Body Human Pose Estimation in the
# Wild", ECCV 2020): jin-s13/COCO-WholeBody evaluation/myeval_righthand.py, and MMPose's
# configs/_base_/datasets/coco_wholebody_hand.py. WholeBody lists the wrist ("root"), then each
# finger thumb, forefinger, middle, ring, pinky from its BASE to its TIP (thumb1..thumb4, ...).
_WHOLEBODY_WRIST_SIGMA = 0.029
_WHOLEBODY_FINGER_SIGMAS = (
    (0.022, 0.035, 0.037, 0.047),
    (0.026, 0.025, 0.024, 0.035),
    (0.018, 0.024, 0.022, 0.026),
    (0.017, 0.021, 0.021, 0.032),
    (0.020, 0.019, 0.022, 0.031),
)
# Per keypoint in KEYPOINT_NAMES order: each finger reversed to run tip to base as ours do.
OKS_SIGMAS: tuple[float, ...] = (
    _WHOLEBODY_WRIST_SIGMA,
    *(sigma for finger in _WHOLEBODY_FINGER_SIGMAS for sigma in reversed(finger)),
)
