import numpy as np

from handray.config import load_config
from handray.model.anchors import generate_anchors, level_anchors, pyramid_feature_shapes
from handray.model.maskrcnn import MaskRCNN


def reference_anchors(scales, ratios, rows, cols, stride):
    """Plain loops: for each position (row-major), each scale, each ratio: a box centred on
    the position."""
    boxes = []
    for r in range(rows):
        for c in range(cols):
            for scale in scales:
                for ratio in ratios:
                    h, w = scale / np.sqrt(ratio), scale * np.sqrt(ratio)
                    cy, cx = r * stride, c * stride
                    boxes.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
    return np.array(boxes)


def test_level_anchors_match_a_plain_loop():
    ratios = (0.5, 1.0, 2.0)
    got = level_anchors(32, ratios, (3, 5), 8)
    np.testing.assert_allclose(got, reference_anchors([32], ratios, 3, 5, 8), atol=1e-9)
    heights, widths = got[:, 2] - got[:, 0], got[:, 3] - got[:, 1]
    np.testing.assert_allclose(widths / heights, np.tile(ratios, 15))
    np.testing.assert_allclose(np.sqrt(heights * widths), 32)


def test_level_anchors_with_several_sizes_match_a_plain_loop():
    ratios, scales = (0.5, 1.0, 2.0), [16, 16 * 2**0.5]
    got = level_anchors(scales, ratios, (2, 3), 4)
    np.testing.assert_allclose(got, reference_anchors(scales, ratios, 2, 3, 4), atol=1e-9)


def test_pyramid_anchors_are_normalised_and_ordered_by_level():
    config = load_config("tiny")
    model = config.model
    size = config.data.image_size
    anchors = generate_anchors(
        size,
        model.rpn_anchor_scales,
        model.rpn_anchor_ratios,
        model.backbone_strides,
        octaves=model.rpn_anchor_octaves,
    )
    shapes = pyramid_feature_shapes(size, model.backbone_strides)
    assert shapes == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    per_place = len(model.rpn_anchor_ratios) * len(model.rpn_anchor_octaves)
    counts = [h * w * per_place for h, w in shapes]
    assert anchors.shape == (sum(counts), 4) and anchors.dtype == np.float32
    start = 0
    for scale, count in zip(model.rpn_anchor_scales, counts, strict=True):
        level = anchors[start : start + count] * size
        sides = np.sqrt((level[:, 2] - level[:, 0]) * (level[:, 3] - level[:, 1]))
        expected = np.repeat([scale * o for o in model.rpn_anchor_octaves], 3)
        np.testing.assert_allclose(sides, np.tile(expected, count // per_place), rtol=1e-5)
        start += count


def test_model_anchor_count_equals_rpn_output_count():
    config = load_config("tiny")
    model = MaskRCNN(config.model, config.data.image_size, jit_compile=False)
    size = config.data.image_size
    pyramid = model.features(np.zeros((1, size, size, 3), np.float32))
    total = sum(model.rpn(p)[0].shape[1] for p in pyramid)
    assert total == model.anchors.shape[0]
