"""The hand's keypoint layout: RHD order, a skeleton whose bones stay on one finger, and
COCO-WholeBody's hand sigmas reordered from its base-to-tip fingers to our tip-to-base ones."""

import pytest

from handray.core.hand_keypoints import BONE_FINGERS, FINGERS, KEYPOINT_NAMES, OKS_SIGMAS, SKELETON
from handray.data import hands

# As published (COCO-WholeBody evaluation/myeval_righthand.py, MMPose coco_wholebody_hand.py):
# root, then thumb1..4, forefinger1..4, middle_finger1..4, ring_finger1..4, pinky_finger1..4,
# each finger from its base (1) to its tip (4).
WHOLEBODY_HAND_SIGMAS = (
    0.029,
    *(0.022, 0.035, 0.037, 0.047),
    *(0.026, 0.025, 0.024, 0.035),
    *(0.018, 0.024, 0.022, 0.026),
    *(0.017, 0.021, 0.021, 0.032),
    *(0.020, 0.019, 0.022, 0.031),
)


def test_sigmas_follow_our_keypoint_order():
    assert len(OKS_SIGMAS) == len(KEYPOINT_NAMES) == 21
    sigma = dict(zip(KEYPOINT_NAMES, OKS_SIGMAS, strict=True))
    assert KEYPOINT_NAMES[0] == "wrist" and sigma["wrist"] == 0.029
    tips = {"thumb": 0.047, "index": 0.035, "middle": 0.026, "ring": 0.032, "little": 0.031}
    assert {f: sigma[f"{f}_tip"] for f in FINGERS} == tips
    bases = {"thumb_cmc": 0.022, "index_mcp": 0.026, "middle_mcp": 0.018, "ring_mcp": 0.017}
    assert {name: sigma[name] for name in bases} == bases
    for f, finger in enumerate(FINGERS):
        ours = [sigma[name] for name in KEYPOINT_NAMES if name.startswith(f"{finger}_")]
        assert ours == list(WHOLEBODY_HAND_SIGMAS[1 + 4 * f : 5 + 4 * f])[::-1], finger


@pytest.mark.parametrize("bone", range(20))
def test_each_bone_joins_the_wrist_or_joints_of_its_finger(bone):
    a, b = (KEYPOINT_NAMES[i - 1] for i in SKELETON[bone])
    finger = BONE_FINGERS[bone]
    assert b.startswith(f"{finger}_") and (a == "wrist" or a.startswith(f"{finger}_"))


def test_hands_keeps_the_layout_importable():
    assert hands.KEYPOINT_NAMES is KEYPOINT_NAMES and hands.SKELETON is SKELETON
    (category,) = hands.hand_categories("hand")
    assert category["keypoints"] == list(KEYPOINT_NAMES) and len(category["skeleton"]) == 20
