"""Box and mask heads: output shapes for every preset, softmax and sigmoid outputs, and the
layer names and kernel shapes that weight files load by."""

from __future__ import annotations

import numpy as np
import pytest

from handray.config import PRESETS, load_config
from handray.model.heads.box import build_box_head
from handray.model.heads.mask import build_mask_head
from handray.model.norm import Norm

ROIS = 3


def features(pool: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(ROIS, pool, pool, channels)).astype("float32")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_box_head_shapes_and_class_probabilities(preset):
    model = load_config(preset).model
    classes = model.num_classes
    head = build_box_head(
        model.pool_size, model.fpn_channels, model.fc_layers_size, classes, Norm()
    )
    logits, probs, deltas = (t.numpy() for t in head(features(model.pool_size, model.fpn_channels)))
    assert logits.shape == probs.shape == (ROIS, classes)
    assert deltas.shape == (ROIS, classes, 4)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, exp / exp.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_mask_head_doubles_the_pool_and_gives_one_probability_map_per_class(preset):
    model = load_config(preset).model
    head = build_mask_head(
        model.mask_pool_size,
        model.fpn_channels,
        model.mask_head_channels,
        model.num_classes,
        Norm(),
    )
    masks = head(features(model.mask_pool_size, model.fpn_channels)).numpy()
    assert masks.shape == (ROIS, *model.mask_shape, model.num_classes)
    assert tuple(model.mask_shape) == (2 * model.mask_pool_size,) * 2
    assert ((masks > 0.0) & (masks < 1.0)).all()


def kernel_shapes(head) -> dict[str, tuple[int, ...]]:
    """Kernel shape of each weighted layer but the norm layers, by name."""
    return {
        layer.name: tuple(layer.kernel.shape)
        for layer in head.layers
        if layer.weights and "_bn" not in layer.name
    }


def test_box_head_layers_follow_the_weight_files():
    head = build_box_head(7, 16, 32, 3, Norm())
    kernels = kernel_shapes(head)
    assert kernels == {
        "mrcnn_class_conv1": (7, 7, 16, 32),  # the first "fully connected" layer
        "mrcnn_class_conv2": (1, 1, 32, 32),
        "mrcnn_class_logits": (32, 3),
        "mrcnn_bbox_fc": (32, 3 * 4),
    }
    assert {"mrcnn_class_bn1", "mrcnn_class_bn2", "mrcnn_class", "mrcnn_bbox"} <= {
        layer.name for layer in head.layers
    }


def test_mask_head_layers_follow_the_weight_files():
    head = build_mask_head(14, 16, 8, 3, Norm())
    kernels = kernel_shapes(head)
    assert kernels == {
        "mrcnn_mask_conv1": (3, 3, 16, 8),
        "mrcnn_mask_conv2": (3, 3, 8, 8),
        "mrcnn_mask_conv3": (3, 3, 8, 8),
        "mrcnn_mask_conv4": (3, 3, 8, 8),
        "mrcnn_mask_deconv": (2, 2, 8, 8),
        "mrcnn_mask": (1, 1, 8, 3),
    }
    assert {f"mrcnn_mask_bn{i}" for i in range(1, 5)} <= {layer.name for layer in head.layers}


def test_group_norm_heads_give_the_same_shapes():
    norm = Norm(kind="group")
    box = build_box_head(7, 16, 32, 3, norm)
    mask = build_mask_head(14, 16, 8, 3, norm)
    assert [tuple(t.shape) for t in box(features(7, 16))] == [(ROIS, 3), (ROIS, 3), (ROIS, 3, 4)]
    assert tuple(mask(features(14, 16)).shape) == (ROIS, 28, 28, 3)
