"""Weight files by layer name: matterport's Keras-2 layout, our checkpoints, ImageNet, COCO.

The Keras-2 files here are written by the tests with h5py, group by group as the old Keras did,
so the reader is checked against the layout itself rather than against `save_weights`.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import string
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import handray
from handray.config import load_config
from handray.core.errors import HandrayError
from handray.inference.checkpoints import load_trained_model
from handray.inference.predictor import Predictor
from handray.inference.thresholds import Thresholds
from handray.model import weights
from handray.model.heads.keypoint import KEYPOINT_LAYER_PREFIX
from handray.model.maskrcnn import build_model
from handray.model.weights import (
    CLASS_LAYERS,
    coco_weights_path,
    imagenet_weights_path,
    load_imagenet_weights,
    load_weights,
    save_weights,
)

# Connection refused at once: downloads fail fast and nothing is fetched, online or not.
UNREACHABLE = "http://127.0.0.1:9/"


# ----- helpers ------------------------------------------------------------------------------


def tiny_model(seed: int | None = None, **overrides):
    """A tiny model; with a seed, every variable (biases and BN statistics too) is random, and
    each role gets its own range so a swapped role would show."""
    model = build_model(load_config("tiny", overrides), jit_compile=False)
    if seed is not None:
        randomise(model.leaf_layers(), seed)
    return model


def randomise(layers, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for layer in layers:
        for v in layer.weights:
            shape = tuple(v.shape)
            if v.name in ("gamma", "moving_variance"):
                value = rng.uniform(0.5, 1.5, shape)
            elif v.name == "kernel":
                value = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-1])), shape)
            else:
                value = rng.normal(0.0, 0.1, shape)
            v.assign(value.astype(np.float32))


def by_layer(model) -> dict[str, dict[str, np.ndarray]]:
    """{layer: {role: value}} for every weighted leaf layer."""
    return {
        layer.name: {v.name: v.numpy() for v in layer.weights}
        for layer in model.leaf_layers()
        if layer.weights
    }


def assert_same(actual: dict, expected: dict, names) -> None:
    for name in names:
        assert actual[name].keys() == expected[name].keys(), name
        for role in expected[name]:
            np.testing.assert_array_equal(actual[name][role], expected[name][role], err_msg=name)


def matterport_groups(model, extra: bool = False) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """The model's weights grouped as matterport's Keras-2 `save_weights` wrote them: one group
    per top-level layer (weightless ones too), the RPN as one nested `rpn_model` group, heads as
    TimeDistributed groups - one with an inner layer's generated name - and BN roles of one
    layer in reverse order."""
    values = by_layer(model)
    rpn_names = [layer.name for layer in model.rpn.layers if layer.weights]
    rpn_layers = {layer.name for layer in model.rpn.layers}
    groups = []
    for layer in model.leaf_layers():
        name = layer.name
        if name in rpn_layers:
            continue
        roles = list(values.get(name, {}))
        if name == "mrcnn_class_bn1":
            roles.reverse()
        prefix = "conv2d_3" if name == "mrcnn_mask_conv1" else name
        groups.append((name, [(f"{prefix}/{role}:0", values[name][role]) for role in roles]))
        if name == "fpn_p5":  # where matterport's graph reaches the RPN
            groups.append(
                (
                    "rpn_model",
                    [(f"{n}/{r}:0", v) for n in rpn_names for r, v in values[n].items()],
                )
            )
    if extra:
        groups.append(("mrcnn_old_extra", [("mrcnn_old_extra/kernel:0", np.ones((3, 2)))]))
    return groups


def write_keras2(path: Path, groups, full_model: bool = False) -> Path:
    """A Keras-2-layout weight file; `full_model` nests it under `model_weights` as
    `model.save` did."""
    with h5py.File(path, "w") as f:
        root = f
        if full_model:
            f.attrs["model_config"] = b'{"class_name": "Model"}'
            root = f.create_group("model_weights")
        root.attrs["layer_names"] = np.array([name.encode() for name, _ in groups])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.0.8"
        for name, items in groups:
            group = root.create_group(name)
            group.attrs["weight_names"] = np.array([w.encode() for w, _ in items], dtype="S")
            for weight_name, value in items:
                group.create_dataset(weight_name, data=value)
    return path


@pytest.fixture(scope="module")
def source():
    return tiny_model(seed=1)


@pytest.fixture(scope="module")
def matterport_file(source, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("matterport") / "mask_rcnn_hand.h5"
    return write_keras2(path, matterport_groups(source, extra=True))


# ----- 1. the old architecture --------------------------------------------------------------


def matterport_r101_shapes(num_classes: int) -> dict[str, list[tuple[int, ...]]]:
    """Every weighted layer of matterport's ResNet-101 Mask R-CNN with its weight shapes."""
    expected: dict[str, list[tuple[int, ...]]] = {}

    def conv(name: str, kernel: int, channels_in: int, channels_out: int) -> None:
        expected[name] = [(kernel, kernel, channels_in, channels_out), (channels_out,)]

    def bn(name: str, channels: int) -> None:
        expected[name] = [(channels,)] * 4  # gamma, beta, moving mean, moving variance

    conv("conv1", 7, 3, 64)
    bn("bn_conv1", 64)
    channels = 64
    stages = zip(
        (2, 3, 4, 5),
        (3, 4, 23, 3),
        ((64, 64, 256), (128, 128, 512), (256, 256, 1024), (512, 512, 2048)),
        strict=True,
    )
    for stage, blocks, (f1, f2, f3) in stages:
        for index in range(blocks):
            block = f"{stage}{string.ascii_lowercase[index]}"
            conv(f"res{block}_branch2a", 1, channels, f1)
            bn(f"bn{block}_branch2a", f1)
            conv(f"res{block}_branch2b", 3, f1, f2)
            bn(f"bn{block}_branch2b", f2)
            conv(f"res{block}_branch2c", 1, f2, f3)
            bn(f"bn{block}_branch2c", f3)
            if index == 0:
                conv(f"res{block}_branch1", 1, channels, f3)
                bn(f"bn{block}_branch1", f3)
            channels = f3
    for level, width in ((5, 2048), (4, 1024), (3, 512), (2, 256)):
        conv(f"fpn_c{level}p{level}", 1, width, 256)
    for level in (2, 3, 4, 5):
        conv(f"fpn_p{level}", 3, 256, 256)
    conv("rpn_conv_shared", 3, 256, 512)
    conv("rpn_class_raw", 1, 512, 6)
    conv("rpn_bbox_pred", 1, 512, 12)
    conv("mrcnn_class_conv1", 7, 256, 1024)
    bn("mrcnn_class_bn1", 1024)
    conv("mrcnn_class_conv2", 1, 1024, 1024)
    bn("mrcnn_class_bn2", 1024)
    expected["mrcnn_class_logits"] = [(1024, num_classes), (num_classes,)]
    expected["mrcnn_bbox_fc"] = [(1024, 4 * num_classes), (4 * num_classes,)]
    for index in (1, 2, 3, 4):
        conv(f"mrcnn_mask_conv{index}", 3, 256, 256)
        bn(f"mrcnn_mask_bn{index}", 256)
    conv("mrcnn_mask_deconv", 2, 256, 256)
    conv("mrcnn_mask", 1, 256, num_classes)
    return expected


@pytest.mark.slow  # a full-size model
def test_hand_r101_layer_names_and_shapes_equal_the_old_architecture():
    config = load_config("hand-r101")
    model = build_model(config, jit_compile=False)
    layers = [layer for layer in model.leaf_layers() if layer.weights]
    every = {layer.name: [tuple(v.shape) for v in layer.weights] for layer in layers}
    assert len(every) == len(layers), "weighted layer names repeat"
    # The old architecture, plus the keypoint head under names of its own.
    actual = {n: s for n, s in every.items() if not n.startswith(KEYPOINT_LAYER_PREFIX)}
    assert actual == matterport_r101_shapes(config.model.num_classes)
    assert len(every) - len(actual) == config.model.keypoint_head_convs + 1
    count = sum(int(np.prod(shape)) for shapes in actual.values() for shape in shapes)
    print(f"hand-r101: {len(actual)} weighted layers, {count:,} parameters")
    # The same list for COCO's 81 classes adds up to the old model's printed summary.
    coco = matterport_r101_shapes(81)
    assert sum(int(np.prod(s)) for shapes in coco.values() for s in shapes) == 64_158_584


# ----- 2. matterport's Keras-2 layout -------------------------------------------------------


def test_matterport_layout_loads_by_name_with_nested_rpn_and_time_distributed(
    source, matterport_file
):
    target = tiny_model()
    report = load_weights(target, matterport_file)
    expected = by_layer(source)
    assert sorted(report.loaded) == sorted(expected)
    assert report.missing == []
    assert_same(by_layer(target), expected, expected)
    for name in ("rpn_conv_shared", "mrcnn_mask_conv1", "mrcnn_class_bn1"):
        for v in target.get_layer(name).weights:
            np.testing.assert_array_equal(v.numpy(), expected[name][v.name])


def test_a_file_from_before_the_keypoint_head_loads_with_the_head_missing(
    tmp_path, caplog, monkeypatch
):
    """Old weights (here: a model built without the head) load by name into a model with it;
    only the head is missing. For inference, `load_trained_model` sees that in the file's layer
    names and builds the model once, without the head, instead of reporting keypoints an
    untrained head made up."""
    old = tiny_model(seed=3, **{"model.num_keypoints": 0})
    save_weights(old, tmp_path / "old.h5")
    new = tiny_model()
    head = [n for n in by_layer(new) if n.startswith(KEYPOINT_LAYER_PREFIX)]
    assert head  # tiny's head: a 1x1 reduction, two convs, the heatmap logits
    report = load_weights(new, tmp_path / "old.h5")
    assert sorted(report.missing) == sorted(head) and report.skipped == []
    assert sorted(report.loaded) == sorted(by_layer(old))
    builds = []

    def build(*args, **kwargs):
        builds.append(args)
        return build_model(*args, **kwargs)

    monkeypatch.setattr("handray.model.build_model", build)
    with caplog.at_level(logging.WARNING):
        model, config, _ = load_trained_model(tmp_path / "old.h5", "tiny", jit_compile=False)
    assert len(builds) == 1
    assert [h.output for h in model.roi_heads] == ["side_score", "masks"]
    assert config.model.num_keypoints == 0
    assert "has no KeypointHead layers" in caplog.text
    assert_same(by_layer(model), by_layer(old), by_layer(old))
    predictor = Predictor(model, Thresholds.from_config(config))
    (detection,) = predictor.detect([np.zeros((40, 50, 3), np.uint8)], min_score=0.0)
    assert detection.keypoints is None and "keypoints" not in detection.extras


def test_unknown_file_layer_is_skipped_with_reason(matterport_file):
    report = load_weights(tiny_model(), matterport_file)
    assert report.skipped == ["mrcnn_old_extra"]
    assert "not a layer of this model" in report.reasons["mrcnn_old_extra"]
    assert "mrcnn_old_extra" in str(report)


def test_other_class_count_skips_the_three_class_layers_with_one_log_line_each(tmp_path, caplog):
    four = tiny_model(
        seed=2,
        **{"model.num_classes": 4, "model.class_names": ["a", "b", "c"], "model.side_head": False},
    )
    path = write_keras2(tmp_path / "four.h5", matterport_groups(four))
    target = tiny_model(seed=3, **{"model.side_head": False})
    before = by_layer(target)
    caplog.set_level(logging.INFO, logger="handray.model.weights")
    report = load_weights(target, path)
    assert sorted(report.skipped) == sorted(CLASS_LAYERS)
    assert report.missing == []
    for name in CLASS_LAYERS:
        assert "class count" in report.reasons[name]
        lines = [r for r in caplog.records if re.search(rf"\b{name}\b", r.getMessage())]
        assert len(lines) == 1, (name, [r.getMessage() for r in caplog.records])
    after, loaded = by_layer(target), [n for n in before if n not in CLASS_LAYERS]
    assert_same(after, by_layer(four), loaded)
    assert_same(after, before, CLASS_LAYERS)


@pytest.mark.parametrize(
    ("layer", "role", "shape", "model_shape"),
    [
        ("mrcnn_mask_deconv", "kernel", (2, 2, 64, 32), (2, 2, 64, 64)),
        # A class layer whose shape differs in more than the class axis is an error too.
        ("mrcnn_class_logits", "kernel", (128, 3), (256, 3)),
    ],
)
def test_shape_mismatch_raises_naming_it_and_leaves_the_model_unchanged(
    source, tmp_path, layer, role, shape, model_shape
):
    groups = matterport_groups(source)
    for name, items in groups:
        if name == layer:
            items[:] = [
                (w, np.zeros(shape, np.float32) if w.endswith(f"/{role}:0") else v)
                for w, v in items
            ]
    path = write_keras2(tmp_path / "bad.h5", groups)
    target = tiny_model(seed=4)
    before = by_layer(target)
    with pytest.raises(HandrayError) as caught:
        load_weights(target, path)
    message = str(caught.value)
    for part in (layer, f"{layer}/{role}:0", str(shape), str(model_shape)):
        assert part in message
    assert_same(by_layer(target), before, before)


def test_exclude_by_regular_expression(source, matterport_file):
    target = tiny_model(seed=5)
    before = by_layer(target)
    report = load_weights(target, matterport_file, exclude=["mrcnn_.*"])
    heads = [n for n in before if n.startswith("mrcnn_")]
    assert heads and sorted(report.skipped) == sorted([*heads, "mrcnn_old_extra"])
    assert all("excluded" in report.reasons[n] for n in report.skipped)
    assert sorted(report.loaded) == sorted(n for n in before if n not in heads)
    after = by_layer(target)
    assert_same(after, before, heads)
    assert_same(after, by_layer(source), report.loaded)


def test_full_model_layout_loads(source, tmp_path):
    path = write_keras2(tmp_path / "full.h5", matterport_groups(source), full_model=True)
    target = tiny_model()
    report = load_weights(target, path)
    assert report.skipped == [] and report.missing == []
    assert_same(by_layer(target), by_layer(source), report.loaded)


@pytest.mark.slow  # over five seconds
def test_layers_the_file_lacks_are_missing_and_kept(source, tmp_path):
    groups = [g for g in matterport_groups(source) if not g[0].startswith(("rpn", "mrcnn"))]
    path = write_keras2(tmp_path / "backbone.h5", groups)
    target = tiny_model(seed=6)
    before = by_layer(target)
    report = load_weights(target, path)
    expected_missing = [n for n in before if n.startswith(("rpn", "mrcnn"))]
    assert report.missing == expected_missing
    assert_same(by_layer(target), before, expected_missing)
    assert_same(by_layer(target), by_layer(source), report.loaded)


# ----- 3. our own checkpoints ---------------------------------------------------------------


def test_save_weights_writes_the_keras2_layout(source, tmp_path):
    path = tmp_path / "ckpt.h5"
    save_weights(source, path)
    with h5py.File(path, "r") as f:
        names = [n.decode() for n in f.attrs["layer_names"]]
        assert names == list(by_layer(source))
        assert f.attrs["handray_version"] == handray.__version__
        assert f.attrs["keras_version"] == keras.__version__
        conv1 = [n.decode() for n in f["conv1"].attrs["weight_names"]]
        assert conv1 == ["conv1/kernel:0", "conv1/bias:0"]
        np.testing.assert_array_equal(
            f["bn_conv1"]["bn_conv1/moving_variance:0"][()],
            source.get_layer("bn_conv1").moving_variance.numpy(),
        )


@pytest.mark.slow  # over five seconds
def test_save_load_round_trip_gives_identical_weights_and_predictions(tmp_path):
    overrides = {"model.detection_min_confidence": 0.0}
    saved, fresh = tiny_model(seed=8, **overrides), tiny_model(seed=7, **overrides)
    # Pixels near the mean keep the random network's activations small and its scores varied.
    noise = np.random.default_rng(0).normal(0.0, 1.0, (1, 128, 128, 3))
    images = (np.array(load_config("tiny").model.mean_pixel) + noise).astype(np.float32)
    windows = np.array([[0, 0, 128, 128]], np.int32)
    expected = saved.predict_padded(images, windows, 0.0)
    assert np.asarray(expected["valid"]).all(), "too few detections for a meaningful comparison"
    assert np.unique(np.asarray(expected["scores"])).size > 1
    before = fresh.predict_padded(images, windows, 0.0)
    assert not np.array_equal(np.asarray(before["boxes"]), np.asarray(expected["boxes"]))

    folder = tmp_path / "checkpoints"
    save_weights(saved, folder / "weights.h5")
    report = load_weights(fresh, folder / "weights.h5")
    assert report.skipped == [] and report.missing == []
    assert_same(by_layer(fresh), by_layer(saved), by_layer(saved))
    actual = fresh.predict_padded(images, windows, 0.0)
    for key in expected:
        np.testing.assert_array_equal(np.asarray(actual[key]), np.asarray(expected[key]), key)

    umask = os.umask(0)
    os.umask(umask)
    assert os.listdir(folder) == ["weights.h5"]
    assert stat.S_IMODE(os.stat(folder / "weights.h5").st_mode) == 0o666 & ~umask


# ----- 4. ImageNet (Keras Applications) -----------------------------------------------------


def keras_applications_name(name: str) -> str | None:
    """matterport's name for a Keras Applications ResNet layer, written out for this test."""
    if name == "conv1_conv":
        return "conv1"
    if name == "conv1_bn":
        return "bn_conv1"
    parts = name.split("_")  # conv{S}_block{B}_{i}_{conv|bn}
    if len(parts) != 4 or parts[3] not in ("conv", "bn"):
        return None
    stage, block, index = parts[0][4:], int(parts[1][5:]), parts[2]
    branch = {"0": "1", "1": "2a", "2": "2b", "3": "2c"}[index]
    letter = string.ascii_lowercase[block - 1]
    return f"{'res' if parts[3] == 'conv' else 'bn'}{stage}{letter}_branch{branch}"


def with_our_conventions(layer):
    """Clone function: 'same' max-pool instead of pad + valid pool, BN epsilon 1e-3."""
    if layer.name == "pool1_pad":
        return keras.layers.ZeroPadding2D(0, name="pool1_pad")
    if layer.name == "pool1_pool":
        return keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_pool")
    config = layer.get_config()
    if isinstance(layer, keras.layers.BatchNormalization):
        config["epsilon"] = 1e-3
    return layer.__class__.from_config(config)


@pytest.mark.slow  # a full-size ResNet-50
def test_keras_applications_resnet50_weights_give_the_same_c5(tmp_path):
    app = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    randomise(app.layers, seed=9)
    groups = [
        (layer.name, [(f"{layer.name}/{v.name}:0", v.numpy()) for v in layer.weights])
        for layer in app.layers
    ]
    path = write_keras2(tmp_path / weights.IMAGENET_FILES["resnet50"], groups)
    model = build_model(load_config("hand-r50", {"data.image_size": 64}), jit_compile=False)
    report = load_imagenet_weights(model, path)

    mapped = {keras_applications_name(layer.name): layer for layer in app.layers if layer.weights}
    assert None not in mapped and len(mapped) == 106  # 53 convolutions, 53 batch norms
    assert sorted(report.loaded) == sorted(mapped) and report.skipped == []
    assert not [n for n in report.missing if n.startswith(("res", "bn", "conv1"))]
    for name, theirs in mapped.items():
        ours = {v.name: v.numpy() for v in model.get_layer(name).weights}
        assert ours.keys() == {v.name for v in theirs.weights}, name
        for v in theirs.weights:
            np.testing.assert_array_equal(ours[v.name], v.numpy(), err_msg=name)

    clone = keras.models.clone_model(app, clone_function=with_our_conventions)
    clone.set_weights(app.get_weights())
    images = np.random.default_rng(10).normal(0, 50, (2, 64, 64, 3)).astype(np.float32)
    ours_c5 = keras.Model(model.features.input, model.features.get_layer("res5c_out").output)
    theirs_c5 = keras.Model(clone.input, clone.get_layer("conv5_block3_out").output)
    expected = np.asarray(theirs_c5(images, training=False))
    actual = np.asarray(ours_c5(images, training=False))
    assert expected.shape == (2, 2, 2, 2048) and np.abs(expected).max() > 0
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


# ----- 5. downloads -------------------------------------------------------------------------


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(weights, "IMAGENET_BASE_URL", UNREACHABLE)
    monkeypatch.setattr(weights, "COCO_WEIGHTS_URL", UNREACHABLE + "mask_rcnn_coco.h5")
    return home


def test_imagenet_download_failure_says_what_and_where_to_place_it(offline_cache):
    name = weights.IMAGENET_FILES["resnet50"]
    with pytest.raises(HandrayError) as caught:
        imagenet_weights_path("resnet50")
    message = str(caught.value)
    assert name in message and UNREACHABLE + name in message
    assert str(offline_cache / "models" / name) in message
    assert not (offline_cache / "models" / name).exists()


def test_coco_download_failure_says_where_to_place_it(offline_cache):
    with pytest.raises(HandrayError) as caught:
        coco_weights_path()
    assert str(offline_cache / "models" / "mask_rcnn_coco.h5") in str(caught.value)


def test_tiny_backbone_has_no_imagenet_weights():
    with pytest.raises(HandrayError, match="tiny"):
        imagenet_weights_path("tiny")


def test_cached_files_are_returned_without_download(offline_cache, tmp_path):
    name = weights.IMAGENET_FILES["resnet101"]
    (offline_cache / "models").mkdir(parents=True)
    (offline_cache / "models" / name).write_bytes(b"cached")
    assert imagenet_weights_path("resnet101") == offline_cache / "models" / name
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "models").mkdir(parents=True)
    (elsewhere / "models" / "mask_rcnn_coco.h5").write_bytes(b"cached")
    assert coco_weights_path(cache_dir=elsewhere) == elsewhere / "models" / "mask_rcnn_coco.h5"


def test_default_urls_point_at_the_published_files():
    assert weights.IMAGENET_BASE_URL + weights.IMAGENET_FILES["resnet50"] == (
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )
    assert weights.COCO_WEIGHTS_URL.endswith("/v2.0/mask_rcnn_coco.h5")


# ----- 6. files that are not weight files ---------------------------------------------------


def test_missing_file(source, tmp_path):
    with pytest.raises(HandrayError, match="does not exist"):
        load_weights(source, tmp_path / "nope.h5")


def test_file_that_is_not_hdf5(source, tmp_path):
    text = tmp_path / "weights.h5"
    text.write_text("not weights")
    with pytest.raises(HandrayError, match="not HDF5"):
        load_weights(source, text)
    archive = tmp_path / "model.keras"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(HandrayError, match=r"Keras 3 \.keras archive"):
        load_weights(source, archive)


def test_hdf5_without_layer_names(source, tmp_path):
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(HandrayError, match="no `layer_names`"):
        load_weights(source, path)


def test_keras3_weights_file_is_rejected_clearly(source, tmp_path):
    small = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path / "small.weights.h5"
    small.save_weights(path)
    with pytest.raises(HandrayError, match="Keras 3 weights file"):
        load_weights(source, path)
